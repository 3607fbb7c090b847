"""Pair weights and the batch matrices every pair-based loss is written over.

A pair-based loss sees three things: anchors (B, d), references (N, d) and two
(B, N) weight matrices saying how much reference j counts as a positive and as a
negative of anchor i. Hard labels give 0/1 weights, mixed (soft) labels give
fractional ones, and memory-queue or synthetic negatives are extra reference
columns with neg = 1, pos = 0. Because every loss in this package consumes only
these matrices, all of those sources enter the same code, and memory stays
O(B x N) with N = B + Q.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class PairWeights:
    """Weight of reference j as a positive (`pos[i, j]`) and a negative (`neg[i, j]`) of anchor i.

    Both are float (B, N). A pair with both weights zero takes no part in the loss
    (this is how self-pairs are excluded). Hard labels give pos + neg = 1 off the
    diagonal; a mixed reference of label weight lambda gives pos = lambda,
    neg = 1 - lambda.
    """

    pos: Tensor
    neg: Tensor

    def __post_init__(self) -> None:
        if self.pos.ndim != 2 or self.pos.shape != self.neg.shape:
            raise ValueError(
                f"PairWeights.pos and .neg must be equal (B, N) matrices, got {tuple(self.pos.shape)} "
                f"and {tuple(self.neg.shape)}"
            )

    @property
    def shape(self) -> torch.Size:
        return self.pos.shape

    @classmethod
    def from_labels(cls, labels: Tensor, ref_labels: Tensor | None = None) -> PairWeights:
        """0/1 weights from integer labels.

        With `ref_labels=None` the references are the batch itself and the
        self-pairs (the diagonal) get weight 0 in both matrices, as PML does.
        With `ref_labels` given no pair is treated as a self-pair; for
        references that are the batch followed by a queue, build the two blocks
        separately and join them with `PairWeights.cat`.
        """
        same = labels.reshape(-1, 1) == (labels if ref_labels is None else ref_labels).reshape(1, -1)
        pos = same.float()
        neg = 1.0 - pos
        if ref_labels is None:
            pos.fill_diagonal_(0.0)
        return cls(pos, neg)

    @classmethod
    def cat(cls, *parts: PairWeights) -> PairWeights:
        """Join weight blocks along the reference axis (e.g. batch block, then queue block)."""
        return cls(torch.cat([p.pos for p in parts], dim=1), torch.cat([p.neg for p in parts], dim=1))

    def like(self, reference: Tensor) -> PairWeights:
        """The same weights in the dtype and device of `reference` (the similarity matrix)."""
        return PairWeights(
            self.pos.to(device=reference.device, dtype=reference.dtype),
            self.neg.to(device=reference.device, dtype=reference.dtype),
        )


def cosine_matrix(anchors: Tensor, refs: Tensor) -> Tensor:
    """Cosine similarity (B, N) of already L2-normalised rows."""
    return anchors @ refs.T


class _DistanceFromSquared(torch.autograd.Function):
    """sqrt of a squared distance, 0 below `tolerance`, with gradient 0 wherever the result is 0.

    2 - 2 cos of two identical unit vectors is rounding noise of either sign,
    not 0, so a duplicate sample would get a random tiny distance (and, for
    contrastive, randomly count as a non-zero positive term). Squared distances
    under the rounding level of the dot product are therefore snapped to 0.
    At 0 sqrt has an infinite slope, which even a zero pair weight would turn
    into NaN (0 * inf); the gradient there is 0, as torch.cdist (PML's
    distance) gives. One function instead of clamp + sqrt + `where`s also
    saves (B, N) passes, most of the cost of the distance losses at large B;
    the forward works in place on `squared` (the caller's scratch), since a
    fresh (B, N) matrix costs more in page faults than the pass over it.
    """

    @staticmethod
    def forward(ctx, squared: Tensor, tolerance: float) -> Tensor:  # type: ignore[override]
        root = F.threshold_(squared, tolerance, 0.0).sqrt_()  # x <= tolerance -> 0; NaN stays NaN
        ctx.mark_dirty(squared)
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (root,) = ctx.saved_tensors
        return (grad / root).mul_(0.5).masked_fill_(root == 0, 0.0), None


def euclidean_matrix(anchors: Tensor, refs: Tensor) -> Tensor:
    """Euclidean distance (B, N) of already L2-normalised rows, as PML's LpDistance.

    ||a - r||^2 = 2 - 2 cos for unit vectors, computed by one fused addmm; the
    rounding level of a d-term dot product is taken as d * eps.
    """
    two = anchors.new_tensor(2.0)
    tolerance = anchors.shape[1] * torch.finfo(anchors.dtype).eps
    return _DistanceFromSquared.apply(torch.addmm(two, anchors, refs.T, alpha=-2.0), tolerance)


def weighted_logsumexp(x: Tensor, weight: Tensor, dim: int = 1, add_one: bool = False) -> Tensor:
    """log(sum_j w_j exp(x_j)) along `dim`, or log(1 + sum_j ...) with `add_one`.

    Only entries with w > 0 take part. The shift is the largest participating
    entry, so a large excluded entry can neither overflow nor flush the others to
    zero. A slice with no participating entry gives -inf (0 with `add_one`) and
    zero gradient, never NaN.
    """
    inactive = weight <= 0
    shift = x.detach().masked_fill(inactive, float("-inf")).amax(dim=dim, keepdim=True)
    if add_one:
        shift = shift.clamp_min(0.0)
    shift = torch.where(torch.isfinite(shift), shift, 0.0)
    total = (torch.exp((x - shift).masked_fill_(inactive, float("-inf"))) * weight).sum(dim=dim)
    shift = shift.squeeze(dim)
    if add_one:
        return shift + torch.log(total + torch.exp(-shift))
    present = total > 0
    return torch.where(present, shift + torch.log(torch.where(present, total, 1.0)), float("-inf"))


def pair_inputs(
    embeddings: Tensor,
    target: Tensor | None,
    weights: PairWeights | None,
    ref: Tensor | None,
    *,
    name: str,
    two_view: bool,
) -> tuple[Tensor, Tensor, PairWeights]:
    """Turn any of the three call forms into (anchors, references, weights), all normalised.

    * `(embeddings, labels)`: integer labels, references = the batch.
    * `(view_a, view_b)`: two float views; row i of one view is the only positive
      of row i of the other, every other row is a negative.
    * `(embeddings, weights=PairWeights, ref=None | (N, d))`.
    """
    if weights is not None:
        if target is not None:
            raise ValueError(f"{name}: pass either labels/second view or weights=, not both")
        refs = embeddings if ref is None else ref
        if weights.shape != (embeddings.shape[0], refs.shape[0]):
            raise ValueError(
                f"{name}: weights are {tuple(weights.shape)} but anchors x references is "
                f"{embeddings.shape[0]} x {refs.shape[0]}"
            )
        anchors = F.normalize(embeddings, dim=1)
        return anchors, (anchors if ref is None else F.normalize(ref, dim=1)), weights
    if ref is not None:
        raise ValueError(f"{name}: ref= needs weights= (build them with PairWeights.from_labels and .cat)")
    if target is None:
        raise ValueError(f"{name}: needs labels, a second view, or weights=")
    if target.is_floating_point():
        if not two_view:
            raise ValueError(f"{name} takes integer labels, not a second view")
        if target.shape != embeddings.shape:
            raise ValueError(f"{name}: the two views differ in shape, {tuple(embeddings.shape)} vs {tuple(target.shape)}")
        batch = embeddings.shape[0]
        labels = torch.arange(batch, device=embeddings.device).repeat(2)
        embeddings = torch.cat([embeddings, target])
    else:
        labels = target
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"{name}: labels are {tuple(labels.shape)}, expected ({embeddings.shape[0]},)")
    anchors = F.normalize(embeddings, dim=1)
    return anchors, anchors, PairWeights.from_labels(labels.to(embeddings.device))


class PairLoss(nn.Module, ABC):
    """Base of the pair-based losses: one forward for all call forms, one `pair_loss` per loss.

    Subclasses implement `pair_loss(anchors, refs, weights)` over normalised
    anchors (B, d), normalised references (N, d) and weights already in the
    anchors' dtype; the labels and two-view forms are only ways of building
    those weights, so they give exactly the value of the weights form.
    """

    two_view: ClassVar[bool] = False
    labels: ClassVar[str] = "class"
    name: ClassVar[str] = "pair loss"

    def forward(
        self,
        embeddings: Tensor,
        target: Tensor | None = None,
        *,
        weights: PairWeights | None = None,
        ref: Tensor | None = None,
    ) -> Tensor:
        anchors, refs, pair_weights = pair_inputs(
            embeddings, target, weights, ref, name=self.name, two_view=self.two_view
        )
        return self.pair_loss(anchors, refs, pair_weights.like(anchors))

    @abstractmethod
    def pair_loss(self, anchors: Tensor, refs: Tensor, weights: PairWeights) -> Tensor:
        """The loss from anchors (B, d), references (N, d) and their (B, N) pair weights."""
