"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of two views the identity.

Each dimension is standardised over the batch, C = Z_A^T Z_B / B, and the loss
is sum_i (1 - C_ii)^2 + lambda_offdiag sum_{i != j} C_ij^2. Unlike the pair
losses the rows are not L2-normalised: the per-dimension standardisation is the
normalisation the method defines. `standardise` says how:

* "biased_eps" (default): (z - mean) / sqrt(biased variance + 1e-5), as
  facebookresearch/barlowtwins does with a BatchNorm1d without affine parameters;
* "unbiased": (z - mean) / unbiased std, no eps, as wgcban/mix-bt's main.py
  (`(out - out.mean(0)) / out.std(0)`). C still divides by B, so its diagonal
  for identical views is (B - 1) / B, not 1: the two differ the more, the
  smaller the batch (on correlated random views, by ~12% at B = 128 and ~50%
  at B = 16).

Memory is O(d^2), independent of the batch.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

BATCHNORM_EPS = 1e-5


def standardise(z: Tensor, kind: str) -> Tensor:
    """Zero mean, unit variance per dimension over the batch: "biased_eps" or "unbiased" (module docstring)."""
    centred = z - z.mean(dim=0)
    if kind == "biased_eps":
        return centred / (centred.pow(2).mean(dim=0) + BATCHNORM_EPS).sqrt()
    if kind == "unbiased":
        return centred / z.std(dim=0)
    raise ValueError(f"barlow_twins: unknown standardise {kind!r}; use 'biased_eps' or 'unbiased'")


class BarlowTwinsLoss(nn.Module):
    """Redundancy reduction between two views; call as `loss(view_a, view_b)`."""

    two_view: ClassVar[bool] = True
    labels: ClassVar[str] = "none"
    name: ClassVar[str] = "barlow_twins"

    def __init__(self, lambda_offdiag: float, standardise: str) -> None:
        super().__init__()
        self.lambda_offdiag = lambda_offdiag
        self.standardise = standardise

    def forward(self, view_a: Tensor, view_b: Tensor) -> Tensor:
        if not view_b.is_floating_point() or view_a.shape != view_b.shape or view_a.ndim != 2:
            raise ValueError(
                f"barlow_twins takes two float views of equal shape (B, d), got {tuple(view_a.shape)} "
                f"and {tuple(view_b.shape)} {view_b.dtype}"
            )
        corr = standardise(view_a, self.standardise).T @ standardise(view_b, self.standardise) / view_a.shape[0]
        diagonal = corr.diagonal()
        on_diag = (1.0 - diagonal).pow(2).sum()
        off_diag = (corr - torch.diag(diagonal)).pow(2).sum()
        return on_diag + self.lambda_offdiag * off_diag
