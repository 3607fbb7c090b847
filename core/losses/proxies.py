"""Losses with one learned vector per class: proxy anchor, normalized softmax, ArcFace.

Each module owns its (num_classes, embedding_dim) `weight` (the proxies or the
classifier rows), so the training loop must add `loss.parameters()` to its
optimizer. Both sides are L2-normalised: the losses only see cosines.

Call forms: `loss(embeddings, labels)` with integer labels (B,), or
`loss(embeddings, soft_targets)` with float (B, C) rows summing to 1 (mixed
labels). Hard labels are read as one-hot rows, so a one-hot soft target
gives exactly the hard-label value. Soft targets are read as a mixture: the
loss is the target-weighted combination of the per-class losses (for
proxy anchor the weights sit inside its sums, Metrix's generalisation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pairs import weighted_logsumexp


def check_target(target: Tensor, batch: int, num_classes: int, name: str) -> None:
    """Integer labels (B,) or float soft targets (B, C); anything else is a ValueError naming the loss."""
    expected = (batch, num_classes) if target.is_floating_point() else (batch,)
    if target.shape != expected:
        kind = "soft targets" if target.is_floating_point() else "labels"
        raise ValueError(f"{name}: {kind} are {tuple(target.shape)}, expected {expected}")


def dense_targets(target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(B, C) target weights: one-hot rows for integer labels, soft targets as given."""
    if target.is_floating_point():
        return target.to(dtype)
    return F.one_hot(target.long(), num_classes).to(dtype)


def target_entries(target: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """The non-zero targets as (rows, classes, weights): one per row for labels, the support for soft targets."""
    if target.is_floating_point():
        rows, cols = target.nonzero(as_tuple=True)
        return rows, cols, target[rows, cols].to(dtype)
    rows = torch.arange(target.shape[0], device=target.device)
    return rows, target.long(), torch.ones(target.shape[0], dtype=dtype, device=target.device)


def class_cosines(embeddings: Tensor, weight: Tensor, scale: float = 1.0) -> Tensor:
    """scale * cos(x_i, w_c) (B, C) of raw embeddings (B, d) and class vectors (C, d).

    The embeddings' norms can be divided out before the product, over (B, d),
    or after it, over (B, C); the smaller side is cheaper, and more so in the
    backward, where the division's is several passes and the row scaling's one
    multiply and one reduction. With few classes (C <= d) that is the product:
    normalized_softmax's forward + backward at B = 4096, C = 100, d = 128 is
    about 1.25x faster so, but would be 2x slower at C = 10,000. `scale`
    rides on the (B,) inverse norms or the (C, d) unit weights, never on a
    (B, C) pass of its own. Both floor the norm at F.normalize's 1e-12, so a
    zero embedding gives cosines 0.
    """
    unit_weight = F.normalize(weight, dim=1)
    if weight.shape[0] > embeddings.shape[1]:
        return F.normalize(embeddings, dim=1) @ (unit_weight * scale).T
    inverse_norm = torch.linalg.vector_norm(embeddings, dim=1, keepdim=True).clamp_min(1e-12).reciprocal()
    return (embeddings @ unit_weight.T) * (inverse_norm * scale)


class ClassWeightLoss(nn.Module, ABC):
    """Base: holds the per-class weight, checks the target, hands cosines (B, C) and the target to `class_loss`.

    The cosines come multiplied by `cosine_scale` (1 unless a subclass says
    otherwise): a loss that scales them anyway (normalized softmax's
    1 / temperature) gets that for free inside `class_cosines`.
    """

    two_view: ClassVar[bool] = False
    labels: ClassVar[str] = "class"
    name: ClassVar[str] = "class-weight loss"

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)

    def forward(self, embeddings: Tensor, target: Tensor) -> Tensor:
        check_target(target, embeddings.shape[0], self.num_classes, self.name)
        cos = class_cosines(embeddings, self.weight.to(embeddings.dtype), self.cosine_scale)
        return self.class_loss(cos, target)

    @property
    def cosine_scale(self) -> float:
        """The factor on the cosines `class_loss` gets."""
        return 1.0

    @abstractmethod
    def class_loss(self, cos: Tensor, target: Tensor) -> Tensor:
        """The loss from the (B, C) cosines (times `cosine_scale`) to the class vectors and labels or soft targets."""


class ProxyAnchorLoss(ClassWeightLoss):
    """Proxy anchor loss (Kim et al. 2020), PML's ProxyAnchorLoss.

    For each proxy c: log(1 + sum_i t_ic e^{-alpha (s_ic - margin)}) averaged over
    the proxies that have a positive, plus log(1 + sum_i (1 - t_ic)
    e^{alpha (s_ic + margin)}) averaged over all proxies. The sums run over the
    batch (dim 0): each proxy is the anchor.
    """

    name = "proxy_anchor"

    def __init__(self, num_classes: int, embedding_dim: int, margin: float, alpha: float) -> None:
        super().__init__(num_classes, embedding_dim)
        self.margin = margin
        self.alpha = alpha

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def class_loss(self, cos: Tensor, target: Tensor) -> Tensor:
        targets = dense_targets(target, self.num_classes, cos.dtype)
        pos = weighted_logsumexp(-self.alpha * (cos - self.margin), targets, dim=0, add_one=True)
        neg = weighted_logsumexp(self.alpha * (cos + self.margin), 1.0 - targets, dim=0, add_one=True)
        with_pos = (targets.sum(dim=0) > 0).sum().clamp_min(1)
        return pos.sum() / with_pos + neg.sum() / self.num_classes


class NormalizedSoftmaxLoss(ClassWeightLoss):
    """Cross-entropy over cos(x, w_c) / temperature, unit-norm class weights, no bias (PML's NormalizedSoftmaxLoss)."""

    name = "normalized_softmax"

    def __init__(self, num_classes: int, embedding_dim: int, temperature: float) -> None:
        super().__init__(num_classes, embedding_dim)
        self.temperature = temperature

    @property
    def cosine_scale(self) -> float:
        """The logits are cos / temperature."""
        return 1.0 / self.temperature

    def class_loss(self, cos: Tensor, target: Tensor) -> Tensor:
        # cos arrives as the logits; cross_entropy takes class indices or class probabilities: -sum_c t_c log softmax_c
        return F.cross_entropy(cos, target.to(cos.dtype) if target.is_floating_point() else target)


def logsumexp_without(logits: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """log(sum_{k != c} e^{z_ik}) for each entry (i, c) = (rows, cols): the competitors of class c.

    Shifted by the row maximum, the competitors of c sum to total - e_c, which
    is exact for every class but the row's largest (its share is at most 1/2);
    the largest's competitors are summed directly with it zeroed out. The
    floor at the smallest normal number keeps log finite (and its gradient
    zero) when every competitor underflows.
    """
    top = logits.argmax(dim=1, keepdim=True)
    shift = logits.gather(1, top).detach()
    exp = torch.exp(logits - shift)
    total = exp.sum(dim=1)
    without_top = exp.scatter(1, top, 0.0).sum(dim=1)
    others = torch.where(cols == top[rows, 0], without_top[rows], total[rows] - exp[rows, cols])
    return shift[rows, 0] + others.clamp_min(torch.finfo(logits.dtype).tiny).log()


class ArcFaceLoss(ClassWeightLoss):
    """ArcFace (Deng et al. 2019), PML's ArcFaceLoss: margin added to the target angle, then scaled softmax.

    The target logit becomes cos(theta + m), or cos(theta) - m sin(m) beyond
    theta = pi - m where cos(theta + m) would stop decreasing. With soft
    targets the loss is sum_c t_c CE_c, CE_c being the cross-entropy with the
    margin on class c only (the mixture of the two hard-label losses for
    mixup). Only the non-zero targets are evaluated: B entries for hard labels,
    at most 2B for mixup, never a (B, C, C) tensor.
    """

    name = "arcface"

    def __init__(self, num_classes: int, embedding_dim: int, margin: float, scale: float) -> None:
        super().__init__(num_classes, embedding_dim)
        self.margin = margin
        self.scale = scale

    def margin_cos(self, cos: Tensor) -> Tensor:
        """cos(theta + m) = cos m cos - sin m sin(theta); `margin` is in degrees.

        theta <= pi - m is cos >= -cos m. The floor under sin^2 keeps the slope
        finite at cos = +-1, where acos (and PML) would give an infinite one.
        """
        m = math.radians(self.margin)
        cos = cos.clamp(-1.0, 1.0)
        sin = torch.addcmul(torch.ones_like(cos), cos, cos, value=-1.0).clamp_min(torch.finfo(cos.dtype).tiny).sqrt()
        return torch.where(cos >= -math.cos(m), torch.add(cos * math.cos(m), sin, alpha=-math.sin(m)), cos - m * math.sin(m))

    def class_loss(self, cos: Tensor, target: Tensor) -> Tensor:
        rows, cols, weights = target_entries(target, cos.dtype)
        competitors = logsumexp_without(self.scale * cos, rows, cols)
        per_entry = F.softplus(competitors - self.scale * self.margin_cos(cos[rows, cols]))
        return torch.dot(weights, per_entry) / cos.shape[0]
