"""Mixed Barlow Twins (Bandara et al. 2023; wgcban/mix-bt).

Two augmented views A and B of the batch give the Barlow Twins loss as usual.
A mixed view x_M = lam x_A + (1 - lam) x_B[perm] (lam ~ Beta(alpha, alpha) once
per batch, alpha 1 = U(0, 1) as mix-bt; perm a random permutation, both from the
run's generator) goes through the same net in its own forward pass, and the
cross-correlation of the mixed embedding with each view must be the same mixture
of the views' cross-correlations:

    reg = ||C(M, A) - (lam C(A, A) + (1 - lam) C(B', A))||_F^2
        + ||C(M, B) - (lam C(A, B) + (1 - lam) C(B', B))||_F^2,

C(X, Y) = Z_X^T Z_Y / n on embeddings standardised per dimension over the batch
(the barlow_twins loss's own standardisation, its `objective.params.standardise`:
"biased_eps" by default, "unbiased" is mix-bt's main.py; standardising B[perm]
equals permuting standardised B). Nothing is detached (as mix-bt). The total is

    barlow_twins(Z_A, Z_B) + weight * l_reg * l_BT * reg,

l_BT the barlow_twins loss's lambda_offdiag, weight spec.mixup.weight (1 by
default). With lam = 1 the mixed view is x_A exactly and reg is exactly 0; with
weight 0 or l_reg 0 no mixing is drawn or computed, so the run is the plain
Barlow Twins run.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from embedmix.core.losses.barlow_twins import standardise
from embedmix.core.mixup.base import Batch, MixingMethod
from embedmix.core.mixup.mixing import mix, partners, sample_lambda_float
from embedmix.core.models import TrainingNet


def cross_correlation(za: Tensor, zb: Tensor) -> Tensor:
    """C(A, B) = Z_A^T Z_B / n of already standardised embeddings."""
    return za.T @ zb / za.shape[0]


def mixed_barlow_regulariser(z_a: Tensor, z_b: Tensor, z_m: Tensor, perm: Tensor, lam: float,
                             standardisation: str = "biased_eps") -> Tensor:
    """The mix-bt regulariser (without the l_reg * l_BT factor) from raw embeddings of A, B and the mixed view,
    standardised as the barlow_twins loss's `standardise` says."""
    a, b, m = (standardise(z, standardisation) for z in (z_a, z_b, z_m))
    b_perm = b[perm]
    target_a = lam * cross_correlation(a, a) + (1.0 - lam) * cross_correlation(b_perm, a)
    target_b = lam * cross_correlation(a, b) + (1.0 - lam) * cross_correlation(b_perm, b)
    return (cross_correlation(m, a) - target_a).pow(2).sum() + (cross_correlation(m, b) - target_b).pow(2).sum()


class MixedBarlowTwins(MixingMethod):
    def __init__(self, spec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        if not hasattr(base_loss, "lambda_offdiag"):
            raise ValueError(f"mixed_barlow_twins needs the barlow_twins loss; got {type(base_loss).__name__}")
        self.l_reg = float(spec.mixup.params["l_reg"])
        self.alpha = float(spec.mixup.alpha)
        self.weight = float(spec.mixup.weight)

    def draw(self, gen: torch.Generator, n: int) -> tuple[float, Tensor]:
        """lambda then the permutation, in that order, from the run's generator."""
        lam = sample_lambda_float(self.alpha, gen)
        return lam, partners(n, gen)

    def loss_given(self, net: TrainingNet, x_a: Tensor, x_b: Tensor, lam: float, perm: Tensor) -> tuple[Tensor, Tensor]:
        """(base loss, regulariser) for given views, lambda and permutation."""
        z_a, z_b = net(x_a).float(), net(x_b).float()
        base = self.base_loss(z_a, z_b)
        z_m = net(mix(x_a, x_b[perm], lam)).float()
        return base, mixed_barlow_regulariser(z_a, z_b, z_m, perm, lam, self.base_loss.standardise)

    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        x_a, x_b = batch.view(), batch.view()
        scale = self.weight * self.l_reg * self.base_loss.lambda_offdiag
        if scale == 0:
            return self.base_loss(net(x_a).float(), net(x_b).float())
        lam, perm = self.draw(batch.gen, len(x_a))
        base, reg = self.loss_given(net, x_a, x_b, lam, perm)
        return base + scale * reg

