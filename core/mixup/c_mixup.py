"""C-Mixup (Yao et al., NeurIPS 2022; huaxiuyao/C-Mixup) for regression with the `mse` head.

Per batch: for every sample i a partner j is drawn with P(j | i) proportional to
exp(-|y_i - y_j|^2 / (2 sigma^2)), sigma = `params.sigma` in the target's own units
(the reference's Gaussian KDE sampling rate), from the pool `params.partner_pool`
names:

* "train_set" (default, the reference's default): every training row, the batch's
  own rows included, as its `get_mixup_sample_rate` (src/algorithm.py) normalises
  the kernel over all of `y_train` and `np.random.choice` draws a training row.
  The trainer hands the method the training targets and a way to fetch rows
  once, at setup (`use_train_set`); fetched partners are preprocessed like the
  batch but not augmented. Each step builds a few (B, N) float64 matrices for
  the kernel, 8 B N bytes each: 26 MB for B = 32 and N = 100,000;
* "batch": the batch's rows (the reference's `batch_type 1`).

One lambda ~ Beta(alpha, alpha) per batch, alpha = `spec.mixup.alpha` (the
paper's 2 is the catalog's default); then

* input (default): x~ = lam x_i + (1 - lam) x_j, encoded;
* manifold: the hidden state after the first block is mixed (the reference's MLP
  mixes after its first block), the rest of the network runs on it. Partners
  from the training set go through the first block in their own forward pass, as
  the reference runs it on the batch and on the partners separately; partners
  from the batch take their rows of the batch's hidden state;

and the loss is the MSE head on the mixed target lam y_i + (1 - lam) y_j (the head
standardises targets, an affine map, so mixing raw or standardised targets is the
same). lambda = 1 gives exactly the unmixed MSE. The method takes no `spec.mixup.weight`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from embedmix.core.losses import MSELoss
from embedmix.core.mixup.base import Batch, MixingMethod
from embedmix.core.mixup.mixing import kernel_partners, mix, sample_beta
from embedmix.core.models import TrainingNet
from embedmix.core.spec import JobSpec


class CMixup(MixingMethod):
    def __init__(self, spec: JobSpec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        if not isinstance(base_loss, MSELoss):
            raise ValueError(f"mixup.method: 'c_mixup' trains the regression head (objective.loss 'mse'), not {spec.objective.loss!r}")
        self.sigma = float(spec.mixup.params["sigma"])
        self.partner_pool = str(spec.mixup.params["partner_pool"])
        self.level = spec.mixup.level
        self.alpha = spec.mixup.alpha
        if spec.objective.views != 1:
            raise ValueError("objective.views: 'c_mixup' mixes one view of each sample; use views = 1")
        # the training set ("train_set"): its targets and a fetch of raw input rows by index, both where the data lives
        self.pool_y: Tensor | None = None
        self.fetch: Callable[[Tensor], Tensor] | None = None

    def use_train_set(self, y: Tensor, fetch: Callable[[Tensor], Tensor]) -> None:
        """The training targets (N,) and `fetch(idx)`: raw inputs of training rows `idx` on the training device."""
        self.pool_y, self.fetch = y, fetch

    def _pool_targets(self, y: Tensor) -> Tensor | None:
        """The targets partners are drawn from: None for the batch itself, else the training set's."""
        if self.partner_pool == "batch":
            return None
        if self.pool_y is None:
            raise RuntimeError("c_mixup: partner_pool 'train_set' draws partners from the training set; "
                               "call use_train_set first (the trainer does), or use partner_pool 'batch'")
        return self.pool_y

    def draw(self, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """(partners, lambda) for targets y; the partners first (rows of the pool), then one lambda for the batch."""
        partner = kernel_partners(y, self.sigma, gen, self._pool_targets(y))
        lam = sample_beta(self.alpha, self.alpha, (), gen).to(y.device)
        return partner, lam

    def partners_of(self, net: TrainingNet, x: Tensor, y: Tensor, partner: Tensor) -> tuple[Tensor, Tensor]:
        """The partners' preprocessed inputs and targets: gathered from the batch, or fetched from the training set."""
        pool_y = self._pool_targets(y)
        if pool_y is None:
            return x[partner], y[partner]
        rows = partner.to(pool_y.device)
        return net.encoder.preprocess(self.fetch(rows)), pool_y[rows].to(y.device)

    def mixed_loss(self, net: TrainingNet, x: Tensor, y: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
        """The loss for drawn partners (indices into the pool) and lambda."""
        x_j, y_j = self.partners_of(net, x, y, partner)
        if self.level == "input":
            out = net(mix(x, x_j, lam))
        else:
            h = net.encoder.hidden(x, 0, 1)
            h_j = h[partner] if self.partner_pool == "batch" else net.encoder.hidden(x_j, 0, 1)
            out = net(mix(h, h_j, lam), 1)
        return self.base_loss(out, mix(y, y_j, lam))

    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        if batch.y is None or not batch.y.is_floating_point():
            raise ValueError("mixup.method: 'c_mixup' mixes regression targets; the batch has none")
        x = batch.view()
        partner, lam = self.draw(batch.y, batch.gen)
        return self.mixed_loss(net, x, batch.y, partner, lam)
