"""Input, manifold, embedding mixup and CutMix, with any pair or class-weight loss.

One lambda ~ Beta(alpha, alpha) per batch (`per_sample`: one per sample) and a
partner per sample (`partner`: a random permutation, or the flipped batch as in
timm). Sample i of the batch becomes lam * i + (1 - lam) * partner(i):

* input: the preprocessed inputs are mixed, then encoded;
* manifold: the hidden state after block b (`block`, or one drawn uniformly per
  step among all blocks when -1) is mixed, the rest of the network runs on it;
* embedding: the training outputs (what the loss sees: the projection if the run
  has one) are mixed;
* cutmix (images (C, H, W) only): a box of side sqrt(1 - lam) is pasted from the
  partner, and lambda becomes 1 - the box's share of the image.

The loss on the mixed batch:

* pair losses (contrastive, triplet, multi_similarity, supcon, ntxent,
  decoupled_softmax): the mixed samples are the anchors and the clean batch
  (same network, same views, with gradient) is the references:
  `base_loss(mixed, weights=W, ref=clean)` with
  W.pos[i, j] = lam_i [y_i == y_j] + (1 - lam_i) [y_partner(i) == y_j],
  W.neg = 1 - W.pos, and the pair (i, i) (an anchor and its own clean source)
  excluded, as the unmixed loss excludes self-pairs;
* class-weight losses (proxy_anchor, normalized_softmax, arcface,
  cross_entropy): `base_loss(mixed, lam onehot(y_i) + (1 - lam) onehot(y_partner(i)))`,
  the mixed batch alone (no clean forward).

Labels: class labels; with two views both views form one batch of 2B rows with
labels (y, y), as the loop does for label losses, except for a two-view loss
(ntxent) with views = 2, where the loop contrasts instances: the labels are
then the instance ids (0..B-1 twice), so mixing follows i-mix. The clean batch
is encoded view by view, like the loop, so lambda = 1 gives exactly the loop's
unmixed loss (for class-weight losses up to the rounding of the soft-target
path). The methods take no `spec.mixup.weight` (the mixed loss replaces the clean one).
"""

from __future__ import annotations

from abc import abstractmethod

from typing import ClassVar

import torch
from torch import Tensor, nn

from embedmix.core.losses import ClassWeightLoss, CrossEntropyLoss
from embedmix.core.mixup.base import Batch, MixingMethod
from embedmix.core.mixup.mixing import (Mix, apply_cutmix, cutmix_box, forward_chunks, hidden_chunks, mix, partners, randint,
                               sample_lambda, soft_pair_weights, soft_targets, views_of)
from embedmix.core.models import TrainingNet
from embedmix.core.spec import JobSpec


def is_class_weight_loss(loss: nn.Module) -> bool:
    """Losses that take (embeddings, soft targets (B, C)) instead of pair weights."""
    return isinstance(loss, (ClassWeightLoss, CrossEntropyLoss))


class GenericMixup(MixingMethod):
    """Base of the four label-mixing methods; subclasses fix the level and how a batch is mixed."""

    level: ClassVar[str] = "input"

    def __init__(self, spec: JobSpec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        params = spec.mixup.params
        self.alpha = spec.mixup.alpha
        self.partner_kind = params.get("partner", "permutation")
        self.per_sample = bool(params.get("per_sample", False))
        self.block = int(params.get("block", -1))
        self.views = spec.objective.views
        self.class_loss = is_class_weight_loss(base_loss)
        self.instance = self.views == 2 and bool(getattr(base_loss, "two_view", False)) and not self.class_loss
        if self.class_loss and num_classes is None:
            raise ValueError(f"objective.loss: {spec.objective.loss!r} with mixup needs class labels (num_classes)")

    # -- labels and draws --------------------------------------------------------
    def labels(self, y: Tensor | None, batch_size: int, device: torch.device) -> Tensor:
        """The labels of the (views x B) rows: instance ids for two-view contrast, else the class labels repeated."""
        if self.instance:
            return torch.arange(batch_size, device=device).repeat(self.views)
        if y is None:
            raise ValueError(f"mixup.method: {self.spec.mixup.method!r} mixes class labels; the batch has none")
        return y.repeat(self.views) if self.views > 1 else y

    def draw(self, net: TrainingNet, x: Tensor, gen: torch.Generator) -> Mix:
        """lambda (scalar or per sample) and the partners of the n = x.shape[0] rows."""
        n = x.shape[0]
        lam = sample_lambda(self.alpha, n, gen, self.per_sample)
        return Mix(lam=lam.to(x.device), partner=partners(n, gen, self.partner_kind).to(x.device))

    # -- the loss ----------------------------------------------------------------
    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        x = views_of(batch, self.views)
        labels = self.labels(batch.y, batch.x.shape[0], x.device)
        return self.mixed_loss(net, x, labels, self.draw(net, x, batch.gen))

    @abstractmethod
    def encode(self, net: TrainingNet, x: Tensor, m: Mix, need_clean: bool) -> tuple[Tensor | None, Tensor, Tensor]:
        """(clean outputs or None, mixed outputs, the lambda the labels use)."""

    def mixed_loss(self, net: TrainingNet, x: Tensor, labels: Tensor, m: Mix) -> Tensor:
        """The loss of the batch mixed as `m` says (replayable: tests pass lam = 1 here)."""
        clean, mixed, lam = self.encode(net, x, m, need_clean=not self.class_loss)
        if self.class_loss:
            return self.base_loss(mixed, soft_targets(labels, m.partner, lam, self.num_classes))
        weights = soft_pair_weights(labels, m.partner, lam)
        return self.base_loss(mixed, weights=weights, ref=clean)


class InputMixup(GenericMixup):
    """mixup (Zhang et al. 2018): mix the preprocessed inputs."""

    level = "input"

    def encode(self, net, x, m, need_clean):
        clean = forward_chunks(net, x, 0, self.views) if need_clean else None
        mixed = forward_chunks(net, mix(x, x[m.partner], m.lam), 0, self.views)
        return clean, mixed, m.lam


class ManifoldMixup(GenericMixup):
    """Manifold mixup (Verma et al. 2019): mix the hidden state after block b, b drawn per step when `block` = -1."""

    level = "manifold"

    def draw(self, net, x, gen):
        n_blocks = len(net.encoder.blocks)
        if self.block >= n_blocks:
            raise ValueError(f"mixup.params.block: {self.block} but the encoder has {n_blocks} blocks (0..{n_blocks - 1})")
        block = randint(n_blocks, gen) if self.block < 0 else self.block
        m = super().draw(net, x, gen)
        m.start = block + 1
        return m

    def encode(self, net, x, m, need_clean):
        h = hidden_chunks(net.encoder, x, m.start, self.views)
        clean = forward_chunks(net, h, m.start, self.views) if need_clean else None
        mixed = forward_chunks(net, mix(h, h[m.partner], m.lam), m.start, self.views)
        return clean, mixed, m.lam


class EmbeddingMixup(GenericMixup):
    """Mix the final training outputs (the embeddings the loss sees); gradients reach both sources."""

    level = "embedding"

    def encode(self, net, x, m, need_clean):
        clean = forward_chunks(net, x, 0, self.views)
        return clean, mix(clean, clean[m.partner], m.lam), m.lam


class CutMix(GenericMixup):
    """CutMix (Yun et al. 2019) on images (C, H, W): one box per batch, lambda from the pasted area."""

    level = "input"

    def __init__(self, spec, base_loss, *, num_classes, embedding_dim):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        self.per_sample = False  # one box per batch, so one lambda

    def draw(self, net, x, gen):
        if x.ndim != 4:
            raise ValueError(f"mixup.method: 'cutmix' pastes boxes into images (C, H, W); the inputs are {tuple(x.shape[1:])}")
        m = super().draw(net, x, gen)
        m.box = cutmix_box(x.shape[-2], x.shape[-1], m.lam, gen)
        return m

    def encode(self, net, x, m, need_clean):
        clean = forward_chunks(net, x, 0, self.views) if need_clean else None
        pasted, lam = apply_cutmix(x, m.partner, m.box)
        return clean, forward_chunks(net, pasted, 0, self.views), lam

