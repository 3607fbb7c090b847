"""Small mixing primitives used by moco.py, barlow.py and classification.py.

These duplicate what `core.mixup.mixing` provides (Beta sampling from a generator,
partners, input mixing, CutMix); they live here so that these methods did not
have to wait for that module, and can be replaced by it function by function.
Every random draw comes from the generator passed in, so the same generator
state gives the same mixing.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from scipy.special import betaincinv
from torch import Tensor

from core import catalog
from core.spec import JobSpec


def setting(spec: JobSpec, name: str) -> Any:
    """`spec.mixup.<name>` (alpha, weight, level): the value given, else the method's catalog default, else the field's.

    The catalog's `extra["defaults"]` (e.g. RankMixup weight 0.1, MixOE weight 5)
    override the generic MixupSpec defaults only when the spec leaves the field out;
    a missing level means the method's first level.
    """
    mix = spec.mixup
    assert mix is not None
    if name in mix.model_fields_set and getattr(mix, name) is not None:
        return getattr(mix, name)
    entry = catalog.MIXUPS[mix.method]
    defaults = entry.extra.get("defaults", {})
    if name in defaults:
        return defaults[name]
    if name == "level" and mix.level is None:
        return entry.extra.get("levels", [None])[0]
    return getattr(mix, name)


def method_params(spec: JobSpec) -> dict[str, Any]:
    """The method's own parameters: catalog defaults overridden by `spec.mixup.params`."""
    assert spec.mixup is not None
    return {**catalog.MIXUPS[spec.mixup.method].defaults(), **spec.mixup.params}


def uniform(gen: torch.Generator, shape: tuple[int, ...] = (), lo: float = 0.0, hi: float = 1.0,
            dtype: torch.dtype = torch.float32) -> Tensor:
    """U(lo, hi) on the generator's device."""
    return torch.rand(shape, generator=gen, device=gen.device, dtype=dtype) * (hi - lo) + lo


def sample_beta(gen: torch.Generator, a: float, b: float | None = None) -> float:
    """One draw of Beta(a, b) (b defaults to a) from `gen`, by the inverse CDF of one uniform.

    Beta(1, 1) returns the uniform itself, so U(0, 1) methods (Mixed Barlow Twins)
    and the default alpha = 1 need no special function.
    """
    b = a if b is None else b
    u = float(torch.rand((), generator=gen, device=gen.device, dtype=torch.float64).item())
    if a == 1.0 and b == 1.0:
        return u
    return float(betaincinv(a, b, u))


def partners(gen: torch.Generator, n: int) -> Tensor:
    """A random permutation of the batch: sample i is mixed with sample perm[i]."""
    return torch.randperm(n, generator=gen, device=gen.device)


def mix(x: Tensor, other: Tensor, lam: float | Tensor) -> Tensor:
    """lam * x + (1 - lam) * other; lam = 1 returns x exactly."""
    if isinstance(lam, Tensor) and lam.dim() == 1:
        lam = lam.view((-1,) + (1,) * (x.dim() - 1))
    return lam * x + (1 - lam) * other


def one_hot(y: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.nn.functional.one_hot(y, num_classes).to(dtype)


def spatial_dims(x: Tensor) -> list[int]:
    """The axes CutMix cuts along: (H, W) of images (B, C, H, W), the last axis otherwise."""
    return [x.dim() - 2, x.dim() - 1] if x.dim() == 4 else [x.dim() - 1]


def cutmix(x: Tensor, other: Tensor, lam: float, gen: torch.Generator) -> tuple[Tensor, float]:
    """Paste a box of `other` into `x`; returns the mixture and lambda recomputed from the area kept.

    Images: a box of side sqrt(1 - lam) of each side, centred uniformly and clipped
    (the CutMix paper's rand_bbox). Sequences and vectors: a segment of length
    (1 - lam) of the last axis. The kept fraction of x is the returned lambda.
    """
    dims = spatial_dims(x)
    ratio = math.sqrt(1.0 - lam) if len(dims) == 2 else 1.0 - lam
    out = x.clone()
    index: list[slice] = [slice(None)] * x.dim()
    area, total = 1, 1
    for d in dims:
        size = x.shape[d]
        cut = int(size * ratio)
        centre = int(torch.randint(size, (), generator=gen, device=gen.device).item())
        lo, hi = min(max(centre - cut // 2, 0), size), min(max(centre + cut // 2, 0), size)
        index[d] = slice(lo, hi)
        area *= hi - lo
        total *= size
    out[tuple(index)] = other[tuple(index)]
    return out, 1.0 - area / total

