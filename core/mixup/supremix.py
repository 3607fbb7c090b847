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
  y_i - window < y_j < y_i (strict, as the reference's `< n`), one k drawn
  uniformly among y_i < y_k < y_i + window, and
  z_ij = a f_j + (1 - a) f_k with a = (y_k - y_i) / (y_k - y_j), so the label
  a y_j + (1 - a) y_k is exactly y_i. The reference enumerates every such (j, k);
  drawing one k per (i, j) keeps the cost O(N x N) (the reference's is O(N^3)
  memory). Anchors with no target above them within the window get no mix-pos.

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
not count). Differences from the reference: the mean over positives divides by
|P_i| (not |P_i| + 1) and there is no tau / base_tau factor. `spec.mixup.alpha`
and `.weight` are not used. Without mixtures and with w = 1 the loss is exactly
`SupConLoss` on the classes "same target".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.losses.pairs import weighted_logsumexp
from core.mixup.base import Batch, MixingMethod
from core.mixup.mixing import (forward_chunks, sample_beta, uniform,
                               views_of)
from core.models import TrainingNet
from core.spec import JobSpec


@dataclass
class Mixtures:
    """Which mixtures each anchor i gets, as (N, N) matrices indexed [anchor i, source column].

    neg_mask[i, k]: mix-neg of i with k exists; neg_coef[i, k] = a (weight of the anchor).
    pos_mask[i, j]: mix-pos of j with pos_partner[i, j] = k exists; pos_coef[i, j] = (y_k - y_i) / (y_k - y_j)
    (weight of j). Coefficients are float64; entries outside the masks are meaningless (0).
    """

    neg_mask: Tensor
    neg_coef: Tensor
    pos_mask: Tensor
    pos_partner: Tensor
    pos_coef: Tensor

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
        js = self.pos_mask[i].nonzero(as_tuple=True)[0]
        b = self.pos_coef[i, js].to(f.dtype)[:, None]
        pos = b * f[js] + (1 - b) * f[self.pos_partner[i, js]]
        return neg, pos


def draw_mixtures(y: Tensor, window: float, beta_a: float, beta_b: float, gen: torch.Generator) -> Mixtures:
    """The mix-neg and mix-pos of every anchor of targets y (N,), from `gen` (Beta draws first, then the k draws)."""
    n = len(y)
    y64 = y.double().to(gen.device)
    dy = y64[None, :] - y64[:, None]  # dy[i, j] = y_j - y_i
    neg_mask = dy != 0
    neg_coef = sample_beta(beta_a, beta_b, (n, n), gen, dtype=torch.float64)
    lower = (dy < 0) & (dy > -window)
    upper = (dy > 0) & (dy < window)
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
    dev = y.device
    return Mixtures(neg_mask.to(dev), neg_coef.to(dev), pos_mask.to(dev), k.to(dev), pos_coef.to(dev))


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
        b = mixtures.pos_coef.to(f.dtype)
        logits.append((b * sd + (1 - b) * sd.gather(1, mixtures.pos_partner)) / temperature)
        weights.append(mixtures.pos_mask.double())  # label = y_i exactly: |y_i - y_i| + 1 = 1
        positives.append(mixtures.pos_mask)
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
        if spec.objective.views != 2:
            raise ValueError("objective.views: 'supremix' contrasts two views of each sample; use views = 2")

    def loss_of(self, f: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        """The loss of unit embeddings f (N, d) with targets y (N,), mixtures drawn from gen."""
        return supremix_loss(f, y, draw_mixtures(y, self.window, self.beta_a, self.beta_b, gen), self.temperature)

    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        if batch.y is None or not batch.y.is_floating_point():
            raise ValueError("mixup.method: 'supremix' contrasts regression targets; the batch has none")
        x = views_of(batch, 2)
        f = F.normalize(forward_chunks(net, x, 0, 2).float(), dim=1)
        return self.loss_of(f, batch.y.repeat(2), batch.gen)

