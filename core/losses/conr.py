"""ConR (Keramati et al., ICLR 2024; BorealisAI/ConR): a contrastive regulariser for imbalanced regression.

The loss is the regression head's MSE plus `beta` times the regulariser, over two
views of each sample stacked as 2B rows. For anchor i, with labels y, the head's
(detached) predictions p and z_ij = cos_ij / temperature:

* positives: j != i with |y_i - y_j| <= window (the other view of i is one);
* negatives: |y_i - y_j| > window but |p_i - p_j| <= window, i.e. samples the
  model places in i's neighbourhood although their label is not; each is pushed
  with weight S_ij = exp(eta |y_i - y_j|), harder the farther its label;
* loss_i = (1/|P_i|) sum_p -log(e^{z_ip} / (sum_p' e^{z_ip'} + sum_n S_in e^{z_in})),
  0 for an anchor without a negative (its neighbourhood agrees with the labels);
* the regulariser is the mean of loss_i over all 2B anchors.

Differences from the official code are in docs/methods.md (ConR).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .heads import MSELoss
from .infonce import safe_divide
from .pairs import weighted_logsumexp


def conr_regulariser(embeddings: Tensor, labels: Tensor, preds: Tensor, *, window: float, temperature: float,
                     eta: float) -> Tensor:
    """The ConR term of (N, d) embeddings with labels (N,) and detached predictions (N,), in the labels' units."""
    unit = F.normalize(embeddings, dim=1)
    logits = unit @ unit.T / temperature
    label_dist = (labels[:, None] - labels[None, :]).abs().to(logits.dtype)
    close = label_dist <= window
    pos = close & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    neg = ~close & ((preds[:, None] - preds[None, :]).abs() <= window)
    # log(sum_p e^{z_ip} + sum_n S_in e^{z_in}) with S_in = e^{eta |dy|}: one weighted log-sum-exp
    log_denominator = weighted_logsumexp(logits + torch.where(neg, eta * label_dist, 0.0), (pos | neg).to(logits.dtype))
    pos_count = pos.sum(dim=1).to(logits.dtype)
    mean_pos_logit = safe_divide(torch.where(pos, logits, 0.0).sum(dim=1), pos_count)
    active = (pos_count > 0) & neg.any(dim=1)
    return torch.where(active, log_denominator - mean_pos_logit, 0.0).mean()


class ConRLoss(MSELoss):
    """The MSE head (standardised targets) plus beta * ConR on the two views' embeddings.

    `loss(embeddings, targets)` with the views stacked, [view a; view b] (2B rows)
    and their targets [y; y]; the window, eta and the pairs' label distances are
    in the target's own units, as the head's predictions (`predict`).
    """

    def __init__(self, embedding_dim: int, window: float, beta: float, temperature: float, eta: float,
                 num_classes: int | None = None) -> None:
        super().__init__(embedding_dim, num_classes)
        self.window, self.beta, self.temperature, self.eta = window, beta, temperature, eta

    def forward(self, embeddings: Tensor, target: Tensor) -> Tensor:
        regression = super().forward(embeddings, target)
        with torch.no_grad():
            preds = self.predict(embeddings)
        term = conr_regulariser(embeddings, target, preds, window=self.window, temperature=self.temperature, eta=self.eta)
        return regression + self.beta * term
