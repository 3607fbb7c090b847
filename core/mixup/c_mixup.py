"""C-Mixup (Yao et al., NeurIPS 2022; huaxiuyao/C-Mixup) for regression with the `mse` head.

Per batch: for every sample i a partner j is drawn from the batch (i itself
included) with P(j | i) proportional to exp(-|y_i - y_j|^2 / (2 sigma^2)), sigma =
`params.sigma` in the target's own units (the reference's Gaussian KDE sampling
rate, computed in-batch as its `batch_type 1`); one lambda ~ Beta(alpha, alpha),
alpha = `spec.mixup.alpha` (the paper's 2 is the catalog's default);
then

* input (default): x~ = lam x_i + (1 - lam) x_j, encoded;
* manifold: the hidden state after the first block is mixed (the reference's MLP
  mixes after its first block), the rest of the network runs on it;

and the loss is the MSE head on the mixed target lam y_i + (1 - lam) y_j (the head
standardises targets, an affine map, so mixing raw or standardised targets is the
same). lambda = 1 gives exactly the unmixed MSE. The method takes no `spec.mixup.weight`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.losses import MSELoss
from core.mixup.base import Batch, MixingMethod
from core.mixup.mixing import kernel_partners, mix, sample_beta
from core.models import TrainingNet
from core.spec import JobSpec


class CMixup(MixingMethod):
    def __init__(self, spec: JobSpec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        if not isinstance(base_loss, MSELoss):
            raise ValueError(f"mixup.method: 'c_mixup' trains the regression head (objective.loss 'mse'), not {spec.objective.loss!r}")
        self.sigma = float(spec.mixup.params["sigma"])
        self.level = spec.mixup.level
        self.alpha = spec.mixup.alpha
        if spec.objective.views != 1:
            raise ValueError("objective.views: 'c_mixup' mixes one view of each sample; use views = 1")

    def draw(self, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """(partners, lambda) for targets y; the partners first, then one lambda for the batch."""
        partner = kernel_partners(y, self.sigma, gen)
        lam = sample_beta(self.alpha, self.alpha, (), gen).to(y.device)
        return partner, lam

    def mixed_loss(self, net: TrainingNet, x: Tensor, y: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
        if self.level == "input":
            out = net(mix(x, x[partner], lam))
        else:
            h = net.encoder.hidden(x, 0, 1)
            out = net(mix(h, h[partner], lam), 1)
        y = y.float()
        return self.base_loss(out, mix(y, y[partner], lam))

    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        if batch.y is None or not batch.y.is_floating_point():
            raise ValueError("mixup.method: 'c_mixup' mixes regression targets; the batch has none")
        x = batch.view()
        partner, lam = self.draw(batch.y, batch.gen)
        return self.mixed_loss(net, x, batch.y, partner, lam)

