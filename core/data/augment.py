"""Batched, on-device augmentations that make the two views of self-supervised objectives.

Every op draws per-sample random parameters as tensors from one generator, so a batch
is augmented in a handful of kernels (no per-sample Python) and a seeded generator
gives the same views again, which bit-exact resume relies on.
"""

from __future__ import annotations

import torch

from embedmix.core.spec import AugmentSpec


def _uniform(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=like.device, dtype=like.dtype) * (hi - lo) + lo


def shift(x: torch.Tensor, max_frac: float, g: torch.Generator, dim: int) -> torch.Tensor:
    """Translate each sample along `dim` by up to max_frac of its length, filling with zeros."""
    n = x.shape[dim]
    k = int(max_frac * n)
    if k == 0:
        return x
    offsets = torch.randint(-k, k + 1, (x.shape[0],), generator=g, device=x.device)
    src = torch.arange(n, device=x.device)[None, :] - offsets[:, None]  # (B, n)
    valid = (src >= 0) & (src < n)
    view = [x.shape[0]] + [1] * (x.dim() - 1)
    view[dim] = n
    src = src.clamp(0, n - 1).view(view).expand_as(x)
    return torch.gather(x, dim, src) * valid.view(view).to(x.dtype)


def augment(x: torch.Tensor, spec: AugmentSpec, g: torch.Generator) -> torch.Tensor:
    """One random view of a batch of preprocessed inputs (B, ...); images are (B, C, H, W)."""
    b = x.shape[0]
    per_sample = (b,) + (1,) * (x.dim() - 1)
    if spec.scale_range > 0:
        x = x * _uniform(g, per_sample, 1 - spec.scale_range, 1 + spec.scale_range, x)
    if spec.max_shift > 0 and x.dim() >= 2:
        x = shift(x, spec.max_shift, g, dim=x.dim() - 1)
        if x.dim() == 4:
            x = shift(x, spec.max_shift, g, dim=2)
    if spec.flip and x.dim() == 4:
        flip = torch.rand(per_sample, generator=g, device=x.device) < 0.5
        x = torch.where(flip, x.flip(-1), x)
    if spec.mask_fraction > 0:
        keep = torch.rand(x.shape, generator=g, device=x.device) >= spec.mask_fraction
        x = x * keep.to(x.dtype)
    if spec.noise_std > 0:
        x = x + spec.noise_std * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    return x
