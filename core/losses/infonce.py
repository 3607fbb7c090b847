"""Softmax-over-similarities losses: SupCon, NT-Xent (InfoNCE) and DEXML's decoupled softmax.

All three score anchor i against reference j by z_ij = cos_ij / temperature and
differ in which references sit in the denominator and how the per-pair terms
are averaged:

* supcon: every other reference (positives and negatives) is in the
  denominator; per anchor the mean over its positives, then PML's
  AvgNonZeroReducer over anchors.
* ntxent: each positive competes only with the anchor's negatives (other
  positives leave the denominator); mean over all positive pairs, as PML's
  NTXentLoss.
* decoupled_softmax: the same per-pair term, averaged per anchor over its
  positives and then over anchors with a positive (DEXML).

The per-pair term -log(e^{z_ip} / (e^{z_ip} + sum_n e^{z_in})) is computed as
softplus(LSE_i - z_ip) with LSE_i one logsumexp per anchor over its negatives,
so memory is O(B x N); PML's NTXentLoss builds a (positive pairs x negative
pairs) matrix instead.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .pairs import PairLoss, PairWeights, cosine_matrix, weighted_logsumexp


def decoupled_pair_terms(logits: Tensor, weights: PairWeights) -> Tensor:
    """(B, N) matrix of -log(e^{z_ij} / (e^{z_ij} + sum_n w_in e^{z_in})): reference j against i's negatives only."""
    neg_lse = weighted_logsumexp(logits, weights.neg)
    return F.softplus(neg_lse[:, None] - logits)


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator where the denominator is positive, 0 elsewhere, without NaN gradients."""
    present = denominator > 0
    return torch.where(present, numerator / torch.where(present, denominator, 1.0), 0.0)


class SoftmaxPairLoss(PairLoss):
    """Base of the three: the loss is a sum over anchors divided by a count over anchors.

    `pair_sums` returns that (sum, count) pair. Both add up over row blocks of
    anchors (with all references in every block), which is what lets the cached
    loss (`core.losses.grad_cache`) compute a batch of 16,384 in O(block x N)
    memory and still give exactly the gradient of the whole batch.
    """

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    @abstractmethod
    def pair_sums(self, anchors: Tensor, refs: Tensor, weights: PairWeights) -> tuple[Tensor, Tensor]:
        """(sum of the anchors' terms, how many terms the mean is over) for these anchors."""

    def pair_loss(self, anchors: Tensor, refs: Tensor, weights: PairWeights) -> Tensor:
        total, count = self.pair_sums(anchors, refs, weights)
        return safe_divide(total, count)


class SupConLoss(SoftmaxPairLoss):
    """Supervised contrastive loss (Khosla et al. 2020), PML's SupConLoss on hard labels.

    loss_i = -(1/sum_p w_ip) sum_p w_ip log(e^{z_ip} / sum_a (w_ia^+ + w_ia^-) e^{z_ia}),
    averaged over the anchors whose loss is non-zero. As in PML a batch with no
    negative pair at all has loss 0 (there is nothing to contrast with).
    """

    name = "supcon"

    def pair_sums(self, anchors: Tensor, refs: Tensor, weights: PairWeights) -> tuple[Tensor, Tensor]:
        logits = cosine_matrix(anchors, refs) / self.temperature
        log_denominator = weighted_logsumexp(logits, weights.pos + weights.neg)
        pos_total = weights.pos.sum(dim=1)
        mean_pos_logit = (weights.pos * logits).sum(dim=1) / pos_total.clamp_min(torch.finfo(logits.dtype).tiny)
        per_anchor = torch.where(pos_total > 0, log_denominator - mean_pos_logit, 0.0)
        # With hard labels a block of anchors has a negative exactly when the whole batch has one.
        active = (per_anchor > 0) & bool((weights.neg > 0).any())
        return torch.where(active, per_anchor, 0.0).sum(), active.sum()


class NTXentLoss(SoftmaxPairLoss):
    """NT-Xent / InfoNCE (SimCLR). Two views, or labels with every same-class sample a positive.

    `loss(view_a, view_b)`: the positive of each of the 2B rows is its other
    view, the other 2B - 2 rows are its negatives (PML's NTXentLoss with labels
    arange(B) twice). `loss(embeddings, labels)`: the supervised multi-positive
    form, where other positives leave each positive's denominator. The loss is
    the (weighted) mean of the per-pair terms over all positive pairs.
    """

    name = "ntxent"
    two_view: ClassVar[bool] = True
    labels: ClassVar[str] = "optional"

    def pair_sums(self, anchors: Tensor, refs: Tensor, weights: PairWeights) -> tuple[Tensor, Tensor]:
        logits = cosine_matrix(anchors, refs) / self.temperature
        terms = decoupled_pair_terms(logits, weights)
        return (weights.pos * terms).sum(), weights.pos.sum()


class DecoupledSoftmaxLoss(SoftmaxPairLoss):
    """DEXML's decoupled softmax (Gupta et al. 2024): other positives leave each positive's denominator.

    loss_i = -(1/|P_i|) sum_p log(e^{z_ip} / (e^{z_ip} + sum_{n not in P_i} e^{z_in})),
    averaged over the anchors that have a positive. With one positive per anchor
    this is exactly SupCon / InfoNCE.
    """

    name = "decoupled_softmax"

    def pair_sums(self, anchors: Tensor, refs: Tensor, weights: PairWeights) -> tuple[Tensor, Tensor]:
        logits = cosine_matrix(anchors, refs) / self.temperature
        terms = decoupled_pair_terms(logits, weights)
        pos_total = weights.pos.sum(dim=1)
        per_anchor = safe_divide((weights.pos * terms).sum(dim=1), pos_total)
        return per_anchor.sum(), (pos_total > 0).sum()
