"""Shared mixing primitives: lambda draws, partners, mixing at any level, CutMix boxes, soft labels.

Every random draw takes the run's generator (`Batch.gen`) and creates its tensor
on that generator's device, so the same generator state gives the same mixing
twice, on the CPU and on CUDA, and a resumed run continues the sequence
bit-exactly. Nothing here touches the global RNG; `torch.distributions` is not
used because its samplers take no generator.

Beta(a, b) is drawn as Ga / (Ga + Gb) with Ga ~ Gamma(a), Gb ~ Gamma(b) from
`torch._standard_gamma` (which takes a generator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedmix.core.losses import PairWeights
from embedmix.core.models import Encoder, TrainingNet

def sample_beta(a: float, b: float, shape: Sequence[int] | int, gen: torch.Generator,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Beta(a, b) samples of `shape` (`()` for one scalar) from `gen`, on the generator's device.

    Drawn as Ga / (Ga + Gb). For very small a and b both gammas can underflow to
    0; such a draw is read as 0.5 (it happens with probability ~0 for a, b >= 0.05).
    Sampled in float64 so the ratio is exact to float32 rounding, then cast.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    device = gen.device
    ga = torch._standard_gamma(torch.full(shape, float(a), dtype=torch.float64, device=device), generator=gen)
    gb = torch._standard_gamma(torch.full(shape, float(b), dtype=torch.float64, device=device), generator=gen)
    total = ga + gb
    lam = torch.where(total > 0, ga / torch.where(total > 0, total, 1.0), 0.5)
    return lam.to(dtype)


def sample_lambda(alpha: float, n: int, gen: torch.Generator, per_sample: bool = False) -> Tensor:
    """lambda ~ Beta(alpha, alpha): one scalar per batch (shape ()), or one per sample (shape (n,))."""
    return sample_beta(alpha, alpha, (n,) if per_sample else (), gen)


def sample_lambda_float(alpha: float, gen: torch.Generator) -> float:
    """One lambda ~ Beta(alpha, alpha) as a Python float, for losses that take lambda as a number.

    Drawn in float64, so a lambda near 0 or 1 is not rounded onto 0 or 1 by float32.
    """
    return float(sample_beta(alpha, alpha, (), gen, torch.float64))


def uniform(shape: Sequence[int] | int, gen: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    """U[0, 1) samples on the generator's device."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return torch.rand(shape, generator=gen, device=gen.device, dtype=dtype)


def randint(high: int, gen: torch.Generator) -> int:
    """One integer uniform in [0, high) from `gen`."""
    return int(torch.randint(high, (1,), generator=gen, device=gen.device).item())


# ------------------------------------------------------------------ partners


def partners(n: int, gen: torch.Generator, kind: str = "permutation") -> Tensor:
    """Partner index of each of n samples: a random permutation, or the flipped batch (timm: i -> n-1-i).

    With "flip" and odd n the middle sample is its own partner (timm does the same).
    """
    if kind == "permutation":
        return torch.randperm(n, generator=gen, device=gen.device)
    if kind == "flip":
        return torch.arange(n - 1, -1, -1, device=gen.device)
    raise ValueError(f"mixup.params.partner: unknown partner kind {kind!r}; use 'permutation' or 'flip'")


def kernel_probs(y: Tensor, sigma: float, pool: Tensor | None = None) -> Tensor:
    """C-Mixup's sampling matrix: P[i, j] proportional to exp(-|y_i - pool_j|^2 / (2 sigma^2)).

    `pool` holds the candidates' targets (N rows; default: y itself, self included),
    so the matrix is (len(y), N) float64. Rows sum to 1; computed as a softmax of
    the log-kernel, so a tiny sigma cannot underflow a row to all zeros (the row
    then puts its mass on the nearest targets, at least on i itself when the pool
    holds it).
    """
    y = y.reshape(len(y), -1).double()
    ref = y if pool is None else pool.reshape(len(pool), -1).to(device=y.device, dtype=torch.float64)
    logits = -torch.cdist(y, ref).pow(2) / (2.0 * float(sigma) ** 2)
    weights = (logits - logits.amax(dim=1, keepdim=True)).exp()  # not torch.softmax: its float64 CPU kernel is slow
    return weights / weights.sum(dim=1, keepdim=True)


def kernel_partners(y: Tensor, sigma: float, gen: torch.Generator, pool: Tensor | None = None) -> Tensor:
    """One partner j (a row of `pool`, default y) per sample i drawn with P(j | i) = kernel_probs(y, sigma, pool)[i, j]."""
    probs = kernel_probs(y, sigma, pool).to(gen.device)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1).to(y.device)


# Above this many samples, negatives are drawn in O(n) memory (an (n, n) float64 matrix of
# 16,000 training rows, as Metrix's utilization draws them, is 2 GB).
PAIRWISE_NEGATIVES_MAX = 4096


def negative_partners(labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """For every sample u that has a different-class sample in the batch, one such v drawn uniformly.

    Returns (u, v), two index vectors of equal length; samples of a class that
    fills the whole batch are left out (they have no negative). A batch draws
    from its (n, n) matrix of different-class pairs; more than
    `PAIRWISE_NEGATIVES_MAX` samples draw the same distribution in O(n) memory.
    """
    if len(labels) > PAIRWISE_NEGATIVES_MAX:
        return _negative_partners_by_class(labels, gen)
    different = (labels.reshape(-1, 1) != labels.reshape(1, -1)).to(gen.device)
    has = different.any(dim=1)
    u = has.nonzero(as_tuple=True)[0]
    if len(u) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=labels.device)
        return empty, empty
    v = torch.multinomial(different[u].double(), 1, generator=gen).squeeze(1)
    return u.to(labels.device), v.to(labels.device)


def _negative_partners_by_class(labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """`negative_partners` without the pairwise matrix: rows sorted by class, u's class a contiguous block
    [start, start + count) of that order; r uniform over the n - count other rows is the r-th row outside it."""
    order = torch.argsort(labels, stable=True)
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    own_count, own_start = counts[inverse], starts[inverse]
    others = len(labels) - own_count
    u = (others > 0).nonzero(as_tuple=True)[0]
    r = (uniform(len(u), gen, torch.float64).to(labels.device) * others[u]).floor().long()
    r = torch.minimum(r, others[u] - 1)
    position = torch.where(r < own_start[u], r, r + own_count[u])
    return u, order[position]


# ------------------------------------------------------------------ mixing tensors


def _per_row(lam: Tensor | float, like: Tensor) -> Tensor | float:
    """A scalar lambda as is; a per-sample (B,) lambda shaped to broadcast over `like`'s trailing dims."""
    if isinstance(lam, Tensor):
        lam = lam.to(device=like.device, dtype=like.dtype)
        if lam.ndim == 1:
            return lam.reshape((-1,) + (1,) * (like.ndim - 1))
    return lam


def mix(a: Tensor, b: Tensor, lam: Tensor | float) -> Tensor:
    """lam * a + (1 - lam) * b, with lam a scalar or one value per row.

    Written as two products (not lerp) so lam = 1 returns `a` bit for bit.
    """
    w = _per_row(lam, a)
    return w * a + (1 - w) * b


def cut_span(size: int, ratio: float, gen: torch.Generator) -> tuple[int, int]:
    """[lo, hi) of length int(size * ratio) around a centre uniform in [0, size), clipped: one axis of timm's rand_bbox."""
    cut = int(size * ratio)
    centre = randint(size, gen)
    return min(max(centre - cut // 2, 0), size), min(max(centre + cut // 2, 0), size)


def cutmix_box(height: int, width: int, lam: Tensor | float, gen: torch.Generator) -> tuple[int, int, int, int]:
    """CutMix box (y0, y1, x0, x1) of side sqrt(1 - lam) around a uniform centre, clipped (timm's rand_bbox)."""
    ratio = math.sqrt(1.0 - float(lam))
    return cut_span(height, ratio, gen) + cut_span(width, ratio, gen)


def cutmix_region(x: Tensor, lam: Tensor | float, gen: torch.Generator) -> tuple[int, ...]:
    """Where CutMix cuts a batch x: a box (y0, y1, x0, x1) of images (B, C, H, W), else a segment (lo, hi) of the last axis.

    A segment of a sequence or vector is (1 - lam) of its length, so both cut
    away the share 1 - lam before clipping; `paste` takes either.
    """
    if x.ndim == 4:
        return cutmix_box(x.shape[-2], x.shape[-1], lam, gen)
    return cut_span(x.shape[-1], 1.0 - float(lam), gen)


def paste(x: Tensor, source: Tensor, region: Sequence[int]) -> tuple[Tensor, float]:
    """x with `region` taken from `source` (same shape); returns it and lambda = the share of x kept.

    `region` is (lo, hi) per cut axis, the last len(region) / 2 axes of x (a
    `cutmix_region`). The share is exact: the pasted area over the whole.
    """
    spans = [slice(lo, hi) for lo, hi in zip(region[::2], region[1::2])]
    index = (..., *spans)
    out = x.clone()
    out[index] = source[index]
    area = math.prod(s.stop - s.start for s in spans)
    return out, 1.0 - area / math.prod(x.shape[-len(spans):])


def apply_cutmix(x: Tensor, partner: Tensor, box: tuple[int, int, int, int]) -> tuple[Tensor, Tensor]:
    """Paste the box from the partners into x (B, C, H, W); returns the mixed batch and lambda = 1 - box area share."""
    out, lam = paste(x, x[partner], box)
    return out, torch.tensor(lam, device=x.device)


# ------------------------------------------------------------------ mixed labels


def soft_pair_weights(labels: Tensor, partner: Tensor, lam: Tensor | float,
                      ref_labels: Tensor | None = None, exclude_self: bool = True) -> PairWeights:
    """Pair weights of mixed anchors against clean references.

    Anchor i is lam_i * sample i + (1 - lam_i) * sample partner[i]; reference j is
    the clean sample j (labels `ref_labels`, default `labels`). Then

        pos[i, j] = lam_i * [y_i == y_j] + (1 - lam_i) * [y_partner(i) == y_j],
        neg[i, j] = 1 - pos[i, j],

    and with `exclude_self` the pair (i, i) of an anchor with its own clean source
    gets weight 0 in both (the diagonal, as the unmixed loss excludes self-pairs),
    so lam = 1 gives exactly PairWeights.from_labels(labels).
    """
    ref = labels if ref_labels is None else ref_labels
    same_a = (labels.reshape(-1, 1) == ref.reshape(1, -1)).float()
    same_b = (labels[partner].reshape(-1, 1) == ref.reshape(1, -1)).float()
    w = _per_row(lam, same_a)
    pos = w * same_a + (1 - w) * same_b
    neg = 1.0 - pos
    if exclude_self:
        pos = pos.fill_diagonal_(0.0)
        neg = neg.fill_diagonal_(0.0)
    return PairWeights(pos, neg)


def soft_targets(labels: Tensor, partner: Tensor, lam: Tensor | float, num_classes: int) -> Tensor:
    """lam * onehot(y_i) + (1 - lam) * onehot(y_partner(i)), float (B, C) rows summing to 1."""
    onehot = F.one_hot(labels.long(), num_classes).float()
    return mix(onehot, onehot[partner], lam)


# ------------------------------------------------------------------ the network, level by level


def feature_start(encoder: Encoder) -> int:
    """Index of the first block after Metrix's "feature": the backbone's last stage.

    Metrix mixes the output of the last convolutional stage, before the
    (parameter-free) global pooling and the embedding layer. For our Encoder that
    is the state before the last block when that block has no parameters (the
    pooling / flatten block of conv1d, conv2d and resnet18), and the output of all
    blocks when the last block has parameters (mlp: its last hidden layer, before
    the linear embedding). Run `encoder.hidden(h, 0, s)` to get the feature and
    `net(feature, s)` to finish the forward.
    """
    n = len(encoder.blocks)
    last = encoder.blocks[n - 1] if n else None
    if last is not None and not any(True for _ in last.parameters()):
        return n - 1
    return n


def forward_chunks(net: TrainingNet | nn.Module, h: Tensor, start: int, chunks: int) -> Tensor:
    """`net(h, start)` run on `chunks` equal slices of h (one per view), so batch norm sees each view alone, as the loop does."""
    if chunks == 1:
        return net(h, start)
    return torch.cat([net(part, start) for part in h.chunk(chunks)])


def hidden_chunks(encoder: Encoder, h: Tensor, stop: int, chunks: int) -> Tensor:
    """`encoder.hidden(h, 0, stop)` per view slice (see `forward_chunks`)."""
    if chunks == 1:
        return encoder.hidden(h, 0, stop)
    return torch.cat([encoder.hidden(part, 0, stop) for part in h.chunk(chunks)])


def views_of(batch, views: int) -> Tensor:
    """The batch's views concatenated (views x B rows), each drawn by `batch.view()` as the loop draws them."""
    return torch.cat([batch.view() for _ in range(views)]) if views > 1 else batch.view()


@dataclass
class Mix:
    """One batch's mixing decision (useful to replay a mix in tests): lambda, partner, and level details."""

    lam: Tensor
    partner: Tensor
    start: int | None = None  # manifold: mix the state before block `start`
    box: tuple[int, int, int, int] | None = None  # cutmix


@torch.no_grad()
def nearest_distance(queries: Tensor, refs: Tensor, chunk: int = 1024) -> Tensor:
    """Euclidean distance from each (unit) query to its nearest (unit) reference, in chunks of both."""
    best = torch.full((len(queries),), -2.0, device=queries.device)
    for lo in range(0, len(queries), chunk):
        q = queries[lo:lo + chunk]
        top = torch.full((len(q),), -2.0, device=queries.device)
        for rlo in range(0, len(refs), 8 * chunk):
            top = torch.maximum(top, (q @ refs[rlo:rlo + 8 * chunk].T).amax(dim=1))
        best[lo:lo + chunk] = top
    return (2.0 - 2.0 * best).clamp_min(0.0).sqrt()
