"""Distance-margin losses: contrastive and triplet, on Euclidean distances of unit vectors.

Both follow PML (ContrastiveLoss, TripletMarginLoss with LpDistance on
normalised embeddings, AvgNonZeroReducer) on hard labels. With fractional
weights a pair (or triplet) counts with its weight both in the sum and in the
"non-zero" count, which reduces to PML's mean over non-zero terms for 0/1
weights.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .pairs import PairLoss, PairWeights, euclidean_matrix

TripletKind = Literal["all", "batch_hard", "semi_hard"]
TRIPLET_KINDS: tuple[str, ...] = ("all", "batch_hard", "semi_hard")


def weighted_mean_nonzero(losses: Tensor, weight: Tensor) -> Tensor:
    """sum(w * l) / sum(w * [l > 0]) for losses l >= 0: PML's AvgNonZeroReducer when w is 0/1, 0 when nothing is active.

    Written as two dot products over the flattened matrices: no (B, N)
    temporaries besides the 0/1 indicator, which matters at large B.
    """
    weight, losses = weight.reshape(-1), losses.reshape(-1)
    count = torch.dot(weight, losses.detach().sign())
    return torch.dot(weight, losses) / count.clamp_min(torch.finfo(count.dtype).tiny)


class _ContrastiveMeans(torch.autograd.Function):
    """The two hinge means of ContrastiveLoss from the distances, forward and backward written out.

    At large B the cost of this loss is fresh (B, N) matrices more than arithmetic:
    at B = 4096 each is 64 MB, and the page faults of touching it cost more
    than a pass over it. Through autograd the two hinges, their indicators for
    the counts, and the backward of each dot product, relu and subtraction are
    one fresh matrix apiece (nine in all). Here the forward builds both hinges in
    one scratch matrix, which ends up holding the negatives' indicator
    [d < neg_margin] and is kept for the backward; the backward rebuilds the
    positives' indicator [d > pos_margin] in its one output matrix. The value
    and gradient are those of `weighted_mean_nonzero` on the two hinges (relu'
    is 0 at the kink, the counts are constant); the weights get no gradient.
    """

    @staticmethod
    def forward(ctx, dist: Tensor, pos: Tensor, neg: Tensor, pos_margin: float,  # type: ignore[override]
                neg_margin: float) -> Tensor:
        scratch = torch.sub(dist, pos_margin).relu_()
        pos_sum, pos_count = _sum_and_count_(scratch, pos)
        torch.sub(dist, neg_margin, out=scratch).neg_().relu_()
        neg_sum, neg_count = _sum_and_count_(scratch, neg)
        ctx.save_for_backward(dist, pos, neg, scratch, pos_count, neg_count)
        ctx.pos_margin = pos_margin
        return pos_sum / pos_count + neg_sum / neg_count

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        dist, pos, neg, neg_active, pos_count, neg_count = ctx.saved_tensors
        out = torch.gt(dist, ctx.pos_margin, out=torch.empty_like(dist)).mul_(pos).mul_(grad / pos_count)
        return out.addcmul_(neg_active, neg, value=-(grad / neg_count)), None, None, None, None


def _sum_and_count_(hinge: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """sum(w * h) and sum(w * [h > 0]) (floored at the smallest normal) of a hinge h >= 0.

    `hinge` is left holding its indicator [h > 0]: it is scratch, and reusing it
    saves a (B, N) matrix.
    """
    weight = weight.reshape(-1)
    total = torch.dot(weight, hinge.reshape(-1))
    count = torch.dot(weight, hinge.sign_().reshape(-1))
    return total, count.clamp_min(torch.finfo(count.dtype).tiny)


class ContrastiveLoss(PairLoss):
    """relu(d - pos_margin) over positives plus relu(neg_margin - d) over negatives.

    The two terms are averaged separately over their non-zero pairs and then
    added, as PML's MultipleReducers of two AvgNonZeroReducers do: the many easy
    negatives must not dilute the few positives.
    """

    name = "contrastive"

    def __init__(self, pos_margin: float, neg_margin: float) -> None:
        super().__init__()
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin

    def pair_loss(self, anchors: Tensor, refs: Tensor, weights: PairWeights) -> Tensor:
        if weights.pos.requires_grad or weights.neg.requires_grad:
            raise ValueError("contrastive: pair weights are data and get no gradient; detach them")
        dist = euclidean_matrix(anchors, refs)
        return _ContrastiveMeans.apply(dist, weights.pos, weights.neg, self.pos_margin, self.neg_margin)


def triplet_window_sums(dist: Tensor, neg_weight: Tensor, low: Tensor | None, high: Tensor) -> tuple[Tensor, Tensor]:
    """For every (anchor i, reference j): sum of w_n and of w_n * d_in over negatives n with low_ij < d_in < high_ij.

    This is what makes "all triplets" O(B x N log N) time and O(B x N) memory
    instead of PML's O(B x N^2) index lists: sort each anchor's negatives by
    distance once, take prefix sums, and read every window off with (at most
    two) `searchsorted` lookups. `low=None` means no lower bound. The prefix sums are
    float64 so that window differences keep their precision at large N; the
    distance sum stays differentiable through sort and gather.
    """
    key = dist.detach().masked_fill(neg_weight <= 0, float("inf"))
    sorted_key, order = key.sort(dim=1)
    sorted_weight = neg_weight.gather(1, order).double()
    sorted_dist = dist.gather(1, order).double()
    zeros = sorted_weight.new_zeros(dist.shape[0], 1)
    weight_prefix = torch.cat([zeros, sorted_weight.cumsum(1)], dim=1)
    dist_prefix = torch.cat([zeros, (sorted_weight * sorted_dist).cumsum(1)], dim=1)
    upper = torch.searchsorted(sorted_key, high.detach().contiguous(), right=False)
    if low is None:
        return weight_prefix.gather(1, upper), dist_prefix.gather(1, upper)
    lower = torch.searchsorted(sorted_key, low.detach().contiguous(), right=True)
    upper = torch.maximum(upper, lower)
    return (
        weight_prefix.gather(1, upper) - weight_prefix.gather(1, lower),
        dist_prefix.gather(1, upper) - dist_prefix.gather(1, lower),
    )


class TripletLoss(PairLoss):
    """relu(d_ap - d_an + margin) averaged over the non-zero triplets.

    `triplets` chooses the triplets, each as PML does it:
    * "all": every (anchor, positive, negative) of the batch, as
      TripletMarginLoss(triplets_per_anchor="all"). A triplet weighs
      pos[a, p] * neg[a, n]; a reference that is both a positive and a
      negative (a mixed one) is never paired with itself. Computed by sorting,
      not by enumerating triplets, so it has no B^3 limit.
    * "semi_hard": the triplets with d_ap < d_an <= d_ap + margin, as PML's
      TripletMarginMiner(type_of_triplets="semihard") with the same margin
      feeding TripletMarginLoss: all semi-hard negatives of every pair, not
      FaceNet's one per pair.
    * "batch_hard": per anchor its farthest positive and nearest negative, as
      PML's BatchHardMiner; anchors lacking either are skipped.
    """

    name = "triplet"

    def __init__(self, margin: float, triplets: TripletKind) -> None:
        super().__init__()
        if triplets not in TRIPLET_KINDS:
            raise ValueError(f"triplet: triplets={triplets!r}, expected one of {TRIPLET_KINDS}")
        self.margin = margin
        self.triplets = triplets

    def pair_loss(self, anchors: Tensor, refs: Tensor, weights: PairWeights) -> Tensor:
        dist = euclidean_matrix(anchors, refs)
        if self.triplets == "batch_hard":
            return self._batch_hard(dist, weights)
        return self._windowed(dist, weights)

    def _windowed(self, dist: Tensor, weights: PairWeights) -> Tensor:
        semi_hard = self.triplets == "semi_hard"
        neg_count, neg_dist_sum = triplet_window_sums(dist, weights.neg, dist if semi_hard else None, dist + self.margin)
        pos = weights.pos.double()
        total = (pos * ((dist.double() + self.margin) * neg_count - neg_dist_sum)).sum()
        count = (pos * neg_count).sum()
        if not semi_hard and self.margin > 0:
            # a mixed reference j (pos and neg weight) would form the triplet (a, j, j),
            # whose loss is the constant margin: take it out of the sum and the count
            overlap = torch.dot(pos.reshape(-1), weights.neg.double().reshape(-1))
            total, count = total - self.margin * overlap, count - overlap
        return (total / count.clamp_min(torch.finfo(count.dtype).tiny)).to(dist.dtype)

    def _batch_hard(self, dist: Tensor, weights: PairWeights) -> Tensor:
        hardest_pos, pos_idx = dist.masked_fill(weights.pos <= 0, float("-inf")).max(dim=1)
        hardest_neg, neg_idx = dist.masked_fill(weights.neg <= 0, float("inf")).min(dim=1)
        violation = F.relu(hardest_pos - hardest_neg + self.margin)
        weight = weights.pos.gather(1, pos_idx[:, None]) * weights.neg.gather(1, neg_idx[:, None])
        weight = weight.squeeze(1) * (torch.isfinite(hardest_pos) & torch.isfinite(hardest_neg))
        return weighted_mean_nonzero(violation, weight)
