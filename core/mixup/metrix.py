"""Metrix (Venkataramanan et al., "It Takes Two to Tango", ICLR 2022; billpsomas/metrix).

Total loss = clean loss + w * mixed loss, w = `spec.mixup.weight`. One
lambda ~ Beta(alpha, alpha) per step, alpha = `spec.mixup.alpha`. The paper's
values, alpha 2 and w 0.4, are the catalog's defaults, written into every
resolved spec that leaves them out.

Mixed points. For every sample u of the batch that has a sample of another class,
one such negative v is drawn uniformly (from the run's generator) and
m_u = lam * u + (1 - lam) * v is formed at the chosen level:

* input: mix the preprocessed inputs, encode them (a second forward);
* feature (default): mix the backbone's last-stage output, before the
  parameter-free pooling block when the encoder has one (conv1d, conv2d,
  resnet18) and after the last hidden layer otherwise (mlp); see
  `core.mixup.mixing.feature_start`. The clean batch goes through the stage once,
  its feature is both finished clean and mixed;
* embedding: mix the training outputs (the projection if the run has one).

Which (anchor, mixed) pairs count (`mix`):

* "pos_neg": m_u mixes a positive u with a negative v of every anchor a of u's
  class (a != u): the pairs (a, m_u) for all such a. This is the reference's
  triple set (a, p, n) restricted to one sampled negative per positive p, which
  keeps the cost O(B x B) instead of O(B^3).
* "anchor_neg": m_u mixes the anchor itself with its negative: the pair (u, m_u).
* "alternate": each step one of the two, a fair coin drawn from the step's
  generator before lambda (the official billpsomas/metrix train.py draws
  `random.randint(0, 1)` per step, 0 = pos-neg, 1 = anchor-neg, for the
  contrastive loss at every level; its multi-similarity code mixes pos-neg only,
  and its embedding-level contrastive code weights anchor-neg steps 0.3 instead
  of 0.4, which is not reproduced: both kinds use `spec.mixup.weight`).

Relative to its anchor a mixed point has label lambda, and the pair contributes
lambda * rho+(s) + (1 - lambda) * rho-(s):

* contrastive: lam * mean_nz relu(d - m_pos) + (1 - lam) * mean_nz relu(m_neg - d)
  over the active pairs, with the user's margins (the paper uses m_neg = 0.5; set
  objective.params.neg_margin). The two terms are evaluated separately (weights
  pos = [active], neg = 0 and the reverse) and then weighted: passing
  PairWeights(pos = lam, neg = 1 - lam) to our contrastive loss would cancel lambda
  in its mean-over-non-zero reducer, whereas the reference multiplies each term
  by lambda before PML's AvgNonZeroReducer, i.e. scales the mean.
* multi_similarity: PairWeights(pos = lam [active], neg = (1 - lam) [active]) on
  the mixed references: the weights sit inside the two log-sum-exps. The MS miner
  is not applied to mixed pairs (every mixed column is both a positive and a
  negative of its anchor, so for 0 < lam < 1 it would keep them all, and at
  lam = 1 it would drop them all).
* proxy_anchor: the proxies are the anchors; m_u gets the soft target
  lam onehot(y_u) + (1 - lam) onehot(y_v), weights inside the proxy sums.

So with lam = 1 (m_u = u) the mixed term of contrastive / MS is exactly the
clean positive term over the same pairs, and for proxy anchor it is the clean
loss; with w = 0 the total is the clean loss exactly.

Utilization (`extra_metrics`): mean over test points of the Euclidean distance
(unit embeddings) to the nearest training embedding, clean or mixed. Mixed
training embeddings: for each training point u (at most 50,000, a fixed-seed
sample) one different-class partner v and one lambda ~ Beta(alpha, alpha), drawn
from a generator seeded with `train.seed`, mixed at the run's level with the
exported encoder (eval mode; for the embedding level the encoder's embeddings,
not the projection). At most 10,000 test points (fixed-seed sample); computed in
chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embedmix.core.losses import ContrastiveLoss, MultiSimilarityLoss, PairWeights, ProxyAnchorLoss
from embedmix.core.mixup.base import Batch, MixingMethod
from embedmix.core.mixup.mixing import (feature_start, forward_chunks, hidden_chunks, mix, nearest_distance, negative_partners,
                               randint, sample_beta, views_of)
from embedmix.core.models import Encoder, TrainingNet
from embedmix.core.spec import JobSpec

MAX_TRAIN = 50_000
MAX_TEST = 10_000


class Metrix(MixingMethod):
    def __init__(self, spec: JobSpec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        if not isinstance(base_loss, (ContrastiveLoss, MultiSimilarityLoss, ProxyAnchorLoss)):
            raise ValueError(f"mixup.method: 'metrix' works with contrastive, multi_similarity or proxy_anchor, "
                             f"not objective.loss {spec.objective.loss!r}")
        self.mix_kind = spec.mixup.params["mix"]
        self.level = spec.mixup.level
        self.alpha = spec.mixup.alpha
        self.weight = spec.mixup.weight
        self.views = spec.objective.views
        if isinstance(base_loss, MultiSimilarityLoss):
            # the same loss without its miner, for the mixed pairs (the miner sees them as all-informative or none)
            self._mixed_ms = MultiSimilarityLoss(base_loss.alpha, base_loss.beta, base_loss.base, base_loss.miner_epsilon, False)

    # -- mixed points ------------------------------------------------------------
    def encode(self, net: TrainingNet, x: Tensor, u: Tensor, v: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        """(clean outputs of all rows, mixed outputs of the pairs (u, v)) at the method's level."""
        if self.level == "input":
            clean = forward_chunks(net, x, 0, self.views)
            mixed = net(mix(x[u], x[v], lam)) if len(u) else clean[:0]
        elif self.level == "feature":
            start = feature_start(net.encoder)
            h = hidden_chunks(net.encoder, x, start, self.views)
            clean = forward_chunks(net, h, start, self.views)
            mixed = net(mix(h[u], h[v], lam), start) if len(u) else clean[:0]
        else:
            clean = forward_chunks(net, x, 0, self.views)
            mixed = mix(clean[u], clean[v], lam)
        return clean, mixed

    def step_kind(self, gen: torch.Generator) -> str:
        """The step's pairs: the spec's kind, or for "alternate" a fair coin from `gen` (the official 50/50)."""
        if self.mix_kind != "alternate":
            return self.mix_kind
        return ("pos_neg", "anchor_neg")[randint(2, gen)]

    def _kind(self, kind: str | None) -> str:
        """`kind` when given; otherwise the spec's fixed kind (an alternating run must say which step it replays)."""
        kind = kind or self.mix_kind
        if kind == "alternate":
            raise ValueError("mixup.params.mix 'alternate' picks a kind per step; pass kind='pos_neg' or 'anchor_neg'")
        return kind

    def active_pairs(self, labels: Tensor, u: Tensor, kind: str | None = None) -> Tensor:
        """(B, M) 0/1: which clean anchor a is paired with mixed point m (built from u_m)."""
        rows = torch.arange(len(labels), device=labels.device).reshape(-1, 1)
        if self._kind(kind) == "anchor_neg":
            return (rows == u.reshape(1, -1)).float()
        same = labels.reshape(-1, 1) == labels[u].reshape(1, -1)
        return (same & (rows != u.reshape(1, -1))).float()

    def mixed_term(self, clean: Tensor, labels: Tensor, mixed: Tensor, u: Tensor, v: Tensor, lam: Tensor,
                   kind: str | None = None) -> Tensor:
        """The generalised loss of the mixed pairs: lambda on the positive term, 1 - lambda on the negative term."""
        if len(u) == 0:
            return clean.sum() * 0.0
        lam = lam.to(clean.dtype)
        if isinstance(self.base_loss, ProxyAnchorLoss):
            onehot = F.one_hot(labels.long(), self.base_loss.num_classes).to(mixed.dtype)
            return self.base_loss(mixed, mix(onehot[u], onehot[v], lam))
        active = self.active_pairs(labels, u, kind).to(clean.dtype)
        zero = torch.zeros_like(active)
        if isinstance(self.base_loss, ContrastiveLoss):
            pos = self.base_loss(clean, weights=PairWeights(active, zero), ref=mixed)
            neg = self.base_loss(clean, weights=PairWeights(zero, active), ref=mixed)
            return lam * pos + (1 - lam) * neg
        return self._mixed_ms(clean, weights=PairWeights(lam * active, (1 - lam) * active), ref=mixed)

    def loss_parts(self, net: TrainingNet, x: Tensor, labels: Tensor, lam: Tensor, u: Tensor, v: Tensor,
                   kind: str | None = None) -> tuple[Tensor, Tensor]:
        """(clean loss, mixed term) for given lambda, pairs and kind: replayable, so tests can set lambda = 1."""
        clean, mixed = self.encode(net, x, u, v, lam)
        return self.base_loss(clean, labels), self.mixed_term(clean, labels, mixed, u, v, lam, kind)

    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        x = views_of(batch, self.views)
        labels = batch.y.repeat(self.views) if self.views > 1 else batch.y
        kind = self.step_kind(batch.gen)
        lam = sample_beta(self.alpha, self.alpha, (), batch.gen).to(x.device)
        u, v = negative_partners(labels, batch.gen)
        clean, mixed = self.loss_parts(net, x, labels, lam, u, v, kind)
        return clean + self.weight * mixed

    # -- utilization -------------------------------------------------------------
    def extra_metrics(self, encoder: Encoder, data, device: torch.device) -> dict[str, float]:
        if data.y_train is None or len(data.x_test) == 0 or len(data.x_train) == 0:
            return {}
        return {"utilization": utilization(encoder, data.x_train, data.y_train, data.x_test, level=self.level,
                                           alpha=self.alpha, seed=self.spec.train.seed, device=device)}


@torch.no_grad()
def _embed(encoder: Encoder, x: Tensor, device: torch.device, chunk: int = 1024) -> Tensor:
    """Unnormalised encoder embeddings (embed_from of the preprocessed input), in chunks."""
    return torch.cat([encoder.embed_from(encoder.preprocess(x[i:i + chunk].to(device)))
                      for i in range(0, len(x), chunk)]).float()


@torch.no_grad()
def _mixed_embeddings(encoder: Encoder, x_u: Tensor, x_v: Tensor, lam: Tensor, level: str, device: torch.device,
                      chunk: int = 1024) -> Tensor:
    out = []
    for i in range(0, len(x_u), chunk):
        a, b = encoder.preprocess(x_u[i:i + chunk].to(device)), encoder.preprocess(x_v[i:i + chunk].to(device))
        w = lam[i:i + chunk].to(device)
        if level == "input":
            out.append(encoder.embed_from(mix(a, b, w)))
        elif level == "feature":
            s = feature_start(encoder)
            out.append(encoder.embed_from(mix(encoder.hidden(a, 0, s), encoder.hidden(b, 0, s), w), s))
        else:
            out.append(mix(encoder.embed_from(a), encoder.embed_from(b), w))
    return torch.cat(out).float() if out else torch.empty(0, encoder.embedding_dim, device=device)


@torch.no_grad()
def utilization(encoder: Encoder, x_train: Tensor, y_train: Tensor, x_test: Tensor, *, level: str, alpha: float,
                seed: int, device: torch.device, max_train: int = MAX_TRAIN, max_test: int = MAX_TEST) -> float:
    """Metrix's utilization: mean distance from test embeddings to the nearest clean-or-mixed training embedding.

    Lower means the (mixed) training embeddings cover the test embeddings better.
    Deterministic for a given seed (its own CPU generator; the run's RNGs are untouched).
    """
    gen = torch.Generator().manual_seed(int(seed) + 7_777)
    if len(x_train) > max_train:
        keep = torch.randperm(len(x_train), generator=gen)[:max_train]
        x_train, y_train = x_train[keep], y_train[keep]
    if len(x_test) > max_test:
        x_test = x_test[torch.randperm(len(x_test), generator=gen)[:max_test]]
    u, v = negative_partners(y_train, gen)
    lam = sample_beta(alpha, alpha, (len(u),), gen)
    was_training = encoder.training
    encoder.eval()
    try:
        refs = [F.normalize(_embed(encoder, x_train, device), dim=1)]
        if len(u):
            refs.append(F.normalize(_mixed_embeddings(encoder, x_train[u], x_train[v], lam, level, device), dim=1))
        queries = F.normalize(_embed(encoder, x_test, device), dim=1)
    finally:
        encoder.train(was_training)
    return float(nearest_distance(queries, torch.cat(refs)).mean())

