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
  positives and then over anchors with a positive (DEXML); or, with
  positives "sampled", the term of one positive per anchor drawn each step.

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

# softplus(x) is returned as x above this: log(1 + e^x) - x = e^-x is then under 5e-18, below float64's
# resolution (torch's default threshold of 20 leaves an error of 2e-9, visible at temperature 0.05).
SOFTPLUS_THRESHOLD = 40.0


def decoupled_pair_terms(logits: Tensor, weights: PairWeights) -> Tensor:
    """(B, N) matrix of -log(e^{z_ij} / (e^{z_ij} + sum_n w_in e^{z_in})): reference j against i's negatives only."""
    neg_lse = weighted_logsumexp(logits, weights.neg)
    return F.softplus(neg_lse[:, None] - logits, threshold=SOFTPLUS_THRESHOLD)


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


def sample_positives(pos: Tensor, gen: torch.Generator) -> Tensor:
    """One positive column per anchor, drawn with probability pos[i, j] / sum_j pos[i, j]; -1 where i has none.

    DEXML's `torch.multinomial(target_vals, 1)` (losses.py, `loss_sample`): uniform
    over the positives of hard labels, by label weight for soft ones. Drawn on the
    generator's device.
    """
    present = pos.sum(dim=1) > 0
    chosen = torch.full((len(pos),), -1, dtype=torch.long, device=pos.device)
    if present.any():
        rows = pos[present].detach().to(device=gen.device, dtype=torch.float64)
        chosen[present] = torch.multinomial(rows, 1, generator=gen).squeeze(1).to(pos.device)
    return chosen


def keep_positive(weights: PairWeights, chosen: Tensor) -> PairWeights:
    """The weights with each anchor's positives replaced by its chosen one (weight 1); negatives unchanged.

    The other positives then neither count as positives nor (with hard labels,
    whose positives have negative weight 0) enter the denominator, as DEXML's
    -100 logits for the positives it did not sample.
    """
    present = chosen >= 0
    pos = torch.zeros_like(weights.pos)
    rows = present.nonzero(as_tuple=True)[0]
    pos[rows, chosen[rows]] = 1.0
    return PairWeights(pos, weights.neg)


class DecoupledSoftmaxLoss(SoftmaxPairLoss):
    """DEXML's decoupled softmax (Gupta et al. 2024): other positives leave each positive's denominator.

    loss_i = -(1/|P_i|) sum_p log(e^{z_ip} / (e^{z_ip} + sum_{n not in P_i} e^{z_in})),
    averaged over the anchors that have a positive. With one positive per anchor
    this is exactly SupCon / InfoNCE.

    `positives` "all" (default) averages over every positive, as above; "sampled"
    keeps one positive per anchor, drawn anew each call (`sample_positives`), as
    nilesh2797/DEXML's shipped configs do (`loss_sample: True`): loss_i is then the
    term of that positive alone. DEXML divides by all queries, every one of which
    has a label; here the mean stays over the anchors that have a positive. The
    draws come from the run's generator (`use_generator`; the trainer hands it
    over), so a run and its resume draw the same positives. With
    `train.grad_cache_chunk` each row block draws its own anchors' positives: the
    same distribution, a different sequence from the uncached run.
    """

    name = "decoupled_softmax"

    def __init__(self, temperature: float, positives: str) -> None:
        super().__init__(temperature)
        if positives not in ("all", "sampled"):
            raise ValueError(f"decoupled_softmax: unknown positives {positives!r}; use 'all' or 'sampled'")
        self.positives = positives
        self.generator: torch.Generator | None = None

    def use_generator(self, gen: torch.Generator) -> None:
        """The generator "sampled" draws positives from: the run's, so the draws replay with the run."""
        self.generator = gen

    def pair_sums(self, anchors: Tensor, refs: Tensor, weights: PairWeights) -> tuple[Tensor, Tensor]:
        if self.positives == "sampled":
            if self.generator is None:
                raise RuntimeError("decoupled_softmax: positives 'sampled' draws from the run's generator; "
                                   "call use_generator(gen) first (the trainers do)")
            weights = keep_positive(weights, sample_positives(weights.pos, self.generator))
        logits = cosine_matrix(anchors, refs) / self.temperature
        terms = decoupled_pair_terms(logits, weights)
        pos_total = weights.pos.sum(dim=1)
        per_anchor = safe_divide((weights.pos * terms).sum(dim=1), pos_total)
        return per_anchor.sum(), (pos_total > 0).sum()
