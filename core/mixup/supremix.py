"""SupReMix (Wu et al., "Mixup Your Own Pairs", 2023): supervised contrastive pre-training for regression.

Two views of each sample are encoded (view by view, like the loop) and
L2-normalised: f (N = 2B rows) with targets y (y repeated for the second view).
At the embedding level, from detached embeddings, every anchor i gets:

* mix-neg (anchor-inclusive hard negatives): for every k with y_k != y_i,
  z_ik = a_ik f_i + (1 - a_ik) f_k with a_ik ~ Beta(neg_beta_a, neg_beta_b)
  (default Beta(2, 8): mostly the negative, pulled towards the anchor); its label
  is a y_i + (1 - a) y_k. This is the reference's condition (i, i, k) with
  t_i != t_k, one mixture per (anchor, negative), a drawn per mixture.
* mix-pos (anchor-exclusive hard positives): for every j with
  y_i - window < y_j < y_i (strict, as the reference's `< n`) and k with
  y_i < y_k < y_i + window, z_ijk = a f_j + (1 - a) f_k with
  a = (y_k - y_i) / (y_k - y_j), so the label a y_j + (1 - a) y_k is exactly y_i.
  `params.pos_pairs`: "paired" (default) draws one k uniformly per (i, j), which
  keeps the cost O(N x N); "all" takes every (j, k), as the authors' code
  enumerates them (its `mixing_func`), at O(sum_i |below_i| |above_i|) memory.
  Anchors with no target above them within the window get no mix-pos.

Mixtures are not renormalised (as in the reference, whose logits are dot products
with the convex combination of unit vectors), and they are detached: only the
anchor receives gradient through a mixed pair. The logits are read off the
similarity matrix f @ f.detach().T, so no mixture is materialised.

The loss is SupCon over real and mixed references, temperature `params.temperature`
(0.3; the objective's own `temperature` is not used):

    L_i = log sum_{a in A_i} w_ia e^{s_ia / tau} - (1/|P_i|) sum_{p in P_i} s_ip / tau,

A_i = every real sample but i, i's mix-negs and i's mix-poss; P_i = the real
samples with exactly i's target (always i's other view) and i's mix-poss;
w_ia = |y_i - y_a| + 1 with y_a the reference's (or mixture's) label, in target
units (distance magnifying, the reference's 'L1_inv'; 1 for every positive).
Averaged over anchors with a positive (as our SupCon: anchors whose term is 0 do
not count). The authors' code (SupConLoss_v2 with base_temperature = temperature,
so no tau / base_tau factor) shifts the mixtures' logits by their own row maximum,
separately from the real logits' shift, over a padded row whose padding is -1
vectors; that shift does not cancel, and it is not reproduced here: the loss is
the paper's formula, one shift per row. `spec.mixup.alpha` and `.weight` are not
used. Without mixtures and with w = 1 the loss is exactly `SupConLoss` on the
classes "same target".

`params.mixed_pairs` false is the un-mixed baseline the paper compares against
(the authors' `--contrastive_method supcon` with the same L1_inv weights): the
same positives (same target), the same weighted denominator over the real
samples, the same temperature and views, no mix-neg and no mix-pos, and no
mixing draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedmix.core.losses.pairs import weighted_logsumexp
from embedmix.core.mixup.base import Batch, MixingMethod
from embedmix.core.mixup.mixing import (forward_chunks, sample_beta, uniform,
                               views_of)
from embedmix.core.models import TrainingNet
from embedmix.core.spec import JobSpec


POS_PAIRS = ("paired", "all")


@dataclass
class PosTriples:
    """Mix-pos as triples (anchor i, j, k), sorted by anchor; coef = (y_k - y_i) / (y_k - y_j), the weight of f_j."""

    anchor: Tensor
    j: Tensor
    k: Tensor
    coef: Tensor

    def to(self, device: torch.device) -> PosTriples:
        return PosTriples(self.anchor.to(device), self.j.to(device), self.k.to(device), self.coef.to(device))


@dataclass
class Mixtures:
    """Which mixtures each anchor i gets, as (N, N) matrices indexed [anchor i, source column].

    neg_mask[i, k]: mix-neg of i with k exists; neg_coef[i, k] = a (weight of the anchor).
    pos_mask[i, j]: mix-pos of j with pos_partner[i, j] = k exists; pos_coef[i, j] = (y_k - y_i) / (y_k - y_j)
    (weight of j): the "paired" draw, one k per (i, j). With pos_pairs "all" pos_mask is empty and
    `all_pos` holds every (i, j, k). Coefficients are float64; entries outside the masks are meaningless (0).
    """

    neg_mask: Tensor
    neg_coef: Tensor
    pos_mask: Tensor
    pos_partner: Tensor
    pos_coef: Tensor
    all_pos: PosTriples | None = None

    def positives(self) -> PosTriples:
        """Every mix-pos as triples, whichever way they were made."""
        if self.all_pos is not None:
            return self.all_pos
        i, j = self.pos_mask.nonzero(as_tuple=True)
        return PosTriples(i, j, self.pos_partner[i, j], self.pos_coef[i, j])

    def neg_labels(self, y: Tensor) -> Tensor:
        y = y.double()
        return self.neg_coef * y[:, None] + (1 - self.neg_coef) * y[None, :]

    def pos_labels(self, y: Tensor) -> Tensor:
        y = y.double()
        return self.pos_coef * y[None, :] + (1 - self.pos_coef) * y[self.pos_partner]

    @torch.no_grad()
    def embeddings(self, f: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """Anchor i's mixture embeddings (mix-neg rows, mix-pos rows), materialised and detached (for checks)."""
        f = f.detach()
        ks = self.neg_mask[i].nonzero(as_tuple=True)[0]
        a = self.neg_coef[i, ks].to(f.dtype)[:, None]
        neg = a * f[i][None, :] + (1 - a) * f[ks]
        p = self.positives()
        rows = p.anchor == i
        b = p.coef[rows].to(f.dtype)[:, None]
        pos = b * f[p.j[rows]] + (1 - b) * f[p.k[rows]]
        return neg, pos


def all_positives(y64: Tensor, lower: Tensor, upper: Tensor) -> PosTriples:
    """Every (i, j, k) with j in lower[i] and k in upper[i], sorted by anchor, without an (N, N, N) tensor."""
    li, lj = lower.nonzero(as_tuple=True)
    uk = upper.nonzero(as_tuple=True)[1]
    up_count = upper.sum(dim=1)
    up_start = up_count.cumsum(0) - up_count
    reps = up_count[li]  # each (i, j) pairs with every k above i
    anchor, j = li.repeat_interleave(reps), lj.repeat_interleave(reps)
    first = (reps.cumsum(0) - reps).repeat_interleave(reps)
    k = uk[up_start[anchor] + torch.arange(len(anchor), device=y64.device) - first]
    return PosTriples(anchor, j, k, (y64[k] - y64[anchor]) / (y64[k] - y64[j]))


def draw_mixtures(y: Tensor, window: float, beta_a: float, beta_b: float, gen: torch.Generator,
                  pos_pairs: str = "paired") -> Mixtures:
    """The mix-neg and mix-pos of every anchor of targets y (N,), from `gen` (Beta draws first, then the k draws).

    pos_pairs "all" draws no k: every (j, k) pair is a mix-pos.
    """
    if pos_pairs not in POS_PAIRS:
        raise ValueError(f"mixup.params.pos_pairs: {pos_pairs!r}; use one of {list(POS_PAIRS)}")
    n = len(y)
    y64 = y.double().to(gen.device)
    dy = y64[None, :] - y64[:, None]  # dy[i, j] = y_j - y_i
    neg_mask = dy != 0
    neg_coef = sample_beta(beta_a, beta_b, (n, n), gen, dtype=torch.float64)
    lower = (dy < 0) & (dy > -window)
    upper = (dy > 0) & (dy < window)
    dev = y.device
    if pos_pairs == "all":
        empty = torch.zeros_like(neg_mask, device=dev)
        return Mixtures(neg_mask.to(dev), neg_coef.to(dev), empty, empty.long(), empty.double(),
                        all_positives(y64, lower, upper).to(dev))
    count = upper.sum(dim=1)
    pos_mask = lower & (count > 0)[:, None]
    rank = (uniform((n, n), gen, torch.float64) * count[:, None]).floor().long()
    rank = torch.minimum(rank, (count - 1).clamp_min(0)[:, None])
    cumulative = upper.long().cumsum(dim=1).contiguous()
    k = torch.searchsorted(cumulative, (rank + 1).contiguous()).clamp_max(n - 1)
    y_k = y64[k]
    coef = (y_k - y64[:, None]) / torch.where(pos_mask, y_k - y64[None, :], 1.0)
    pos_coef = torch.where(pos_mask, coef, 0.0)
    k = torch.where(pos_mask, k, 0)
    return Mixtures(neg_mask.to(dev), neg_coef.to(dev), pos_mask.to(dev), k.to(dev), pos_coef.to(dev))


def _pos_block(sd: Tensor, pos: PosTriples, n: int) -> tuple[Tensor, Tensor]:
    """Mix-pos similarities as an (N, W) block and its mask: row i holds anchor i's triples, W the most any anchor has.

    sd[i, c] = f_i . f_c (detached c), so a mixture's similarity is b sd[i, j] + (1 - b) sd[i, k].
    """
    count = torch.bincount(pos.anchor, minlength=n)
    width = int(count.max()) if len(pos.anchor) else 0
    column = torch.arange(len(pos.anchor), device=sd.device) - (count.cumsum(0) - count)[pos.anchor]
    b = pos.coef.to(sd.dtype)
    values = b * sd[pos.anchor, pos.j] + (1 - b) * sd[pos.anchor, pos.k]
    block = sd.new_zeros(n, width).index_put((pos.anchor, column), values)
    mask = torch.zeros(n, width, dtype=torch.bool, device=sd.device)
    mask[pos.anchor, column] = True
    return block, mask


def supremix_loss(f: Tensor, y: Tensor, mixtures: Mixtures | None, temperature: float, magnify: bool = True) -> Tensor:
    """SupCon with mix-neg / mix-pos references and distance-magnified denominators, over unit rows f (N, d).

    A weighted InfoNCE over three (N, N) blocks of logits: real pairs, mix-negs and
    mix-poss; memory O(N x N).
    """
    n = f.shape[0]
    y64 = y.double()
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    dist = (y64[:, None] - y64[None, :]).abs()
    real_logits = f @ f.T / temperature
    real_pos = (dist == 0) & ~eye
    real_w = torch.where(eye, 0.0, dist + 1.0 if magnify else 1.0)
    logits, weights, positives = [real_logits], [real_w], [real_pos]
    if mixtures is not None:
        sd = f @ f.detach().T  # anchors with gradient, mixture sources detached
        self_sim = (f * f.detach()).sum(dim=1, keepdim=True)
        a = mixtures.neg_coef.to(f.dtype)
        logits.append((a * self_sim + (1 - a) * sd) / temperature)
        neg_w = (1 - mixtures.neg_coef) * dist + 1.0 if magnify else torch.ones_like(dist)
        weights.append(torch.where(mixtures.neg_mask, neg_w, 0.0))
        positives.append(torch.zeros_like(real_pos))
        pos_logits, pos_mask = _pos_block(sd, mixtures.positives(), n)
        logits.append(pos_logits / temperature)
        weights.append(pos_mask.double())  # label = y_i exactly: |y_i - y_i| + 1 = 1
        positives.append(pos_mask)
    logits_all = torch.cat(logits, dim=1)
    w_all = torch.cat(weights, dim=1).to(f.dtype)
    p_all = torch.cat(positives, dim=1).to(f.dtype)
    log_denominator = weighted_logsumexp(logits_all, w_all)
    n_pos = p_all.sum(dim=1)
    mean_pos = (p_all * logits_all).sum(dim=1) / n_pos.clamp_min(1.0)
    per_anchor = torch.where(n_pos > 0, log_denominator - mean_pos, 0.0)
    active = per_anchor > 0
    return torch.where(active, per_anchor, 0.0).sum() / active.sum().clamp_min(1)


class SupReMix(MixingMethod):
    def __init__(self, spec: JobSpec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        p = spec.mixup.params
        self.beta_a, self.beta_b = float(p["neg_beta_a"]), float(p["neg_beta_b"])
        self.window = float(p["window"])
        self.temperature = float(p["temperature"])
        self.mixed_pairs = bool(p["mixed_pairs"])
        self.pos_pairs = str(p["pos_pairs"])
        if spec.objective.views != 2:
            raise ValueError("objective.views: 'supremix' contrasts two views of each sample; use views = 2")

    def loss_of(self, f: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        """The loss of unit embeddings f (N, d) with targets y (N,); mixtures drawn from gen unless mixed_pairs is off."""
        if not self.mixed_pairs:
            return supremix_loss(f, y, None, self.temperature)
        mixtures = draw_mixtures(y, self.window, self.beta_a, self.beta_b, gen, self.pos_pairs)
        return supremix_loss(f, y, mixtures, self.temperature)

    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        if batch.y is None or not batch.y.is_floating_point():
            raise ValueError("mixup.method: 'supremix' contrasts regression targets; the batch has none")
        x = views_of(batch, 2)
        f = F.normalize(forward_chunks(net, x, 0, 2).float(), dim=1)
        return self.loss_of(f, batch.y.repeat(2), batch.gen)

