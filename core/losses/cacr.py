"""CACR (Zheng et al., NeurIPS 2021; JegZheng/CACR-SSL): contrastive attraction and contrastive repulsion.

On unit embeddings with squared distances d_ij = ||f_i - f_j||^2, each anchor i
has a set of positives P_i and negatives N_i and

* attraction_i = alpha * sum_{p in P_i} pi+_ip d_ip,  pi+ = softmax over P_i of  tau_pos d_ip
  (the farther a positive, the more it is pulled);
* repulsion_i  = -beta * sum_{n in N_i} pi-_in d_in,  pi- = softmax over N_i of -tau_neg d_in
  (the closer a negative, the more it is pushed);
* loss = mean of attraction_i over anchors with a positive + mean of repulsion_i
  over anchors with a negative. The weights are not detached, as in the official code.

Two views (`loss(view_a, view_b)`): P_i is i's other view and N_i the other
view's other samples, as the official code pairs views. With labels
(`loss(embeddings, labels)`): P_i the other rows of i's class, N_i the rows of
other classes. At tau_pos = tau_neg = 0 the weights are uniform and the loss is
the large-temperature limit of InfoNCE (docs/methods.md, CACR).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .infonce import safe_divide
from .pairs import weighted_logsumexp


def masked_softmax(x: Tensor, mask: Tensor) -> Tensor:
    """Row-wise softmax of `x` over the entries where `mask` is set; 0 elsewhere and on empty rows, never NaN."""
    lse = weighted_logsumexp(x, mask.to(x.dtype))
    lse = torch.where(torch.isfinite(lse), lse, 0.0)
    return torch.exp(torch.where(mask, x - lse[:, None], float("-inf")))


def view_masks(batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(positives, negatives) of the 2B stacked rows [a; b]: the other view of the same sample, of the others."""
    same = torch.eye(batch, dtype=torch.bool, device=device)
    zero = torch.zeros_like(same)
    other_view = torch.cat([torch.cat([zero, ~zero], 1), torch.cat([~zero, zero], 1)])
    own = torch.cat([torch.cat([zero, same], 1), torch.cat([same, zero], 1)])
    return own, other_view & ~own


def label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positives, negatives) from class labels: the other rows of the class, the rows of other classes."""
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device), ~same


class CACRLoss(nn.Module):
    """Contrastive attraction and repulsion; `loss(view_a, view_b)` or `loss(embeddings, labels)`."""

    two_view: ClassVar[bool] = True
    labels: ClassVar[str] = "optional"

    def __init__(self, tau_pos: float, tau_neg: float, alpha: float, beta: float) -> None:
        super().__init__()
        self.tau_pos, self.tau_neg, self.alpha, self.beta = tau_pos, tau_neg, alpha, beta

    def forward(self, embeddings: Tensor, other: Tensor) -> Tensor:
        """`other` is the second view (float, same shape) or integer class labels (B,)."""
        if other.is_floating_point():
            if other.shape != embeddings.shape:
                raise ValueError(f"cacr: the views are {tuple(embeddings.shape)} and {tuple(other.shape)}; expected equal shapes")
            rows = torch.cat([embeddings, other])
            pos, neg = view_masks(len(embeddings), embeddings.device)
        else:
            if other.shape != (len(embeddings),):
                raise ValueError(f"cacr: labels are {tuple(other.shape)}, expected ({len(embeddings)},)")
            rows = embeddings
            pos, neg = label_masks(other)
        unit = F.normalize(rows, dim=1)
        sq_dist = 2.0 - 2.0 * unit @ unit.T
        attraction = (masked_softmax(self.tau_pos * sq_dist, pos) * sq_dist).sum(dim=1)
        repulsion = (masked_softmax(-self.tau_neg * sq_dist, neg) * sq_dist).sum(dim=1)
        has_pos, has_neg = pos.any(dim=1), neg.any(dim=1)
        pull = safe_divide(torch.where(has_pos, attraction, 0.0).sum(), has_pos.sum().to(rows.dtype))
        push = safe_divide(torch.where(has_neg, repulsion, 0.0).sum(), has_neg.sum().to(rows.dtype))
        return self.alpha * pull - self.beta * push
