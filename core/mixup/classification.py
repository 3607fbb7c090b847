"""Mixing methods for classification runs: Decoupled Mixup, RankMixup, MixOE.

The objective loss is `cross_entropy`: a linear head on the training net's output
(`base_loss.logits`), trained and checkpointed with the run. Every method reports
the head's test `accuracy` and `ece` (15 bins); MixOE adds out-of-distribution
`auroc` and `tnr_at_95_tpr` of max-softmax scores.

Decoupled Mixup (Liu et al. 2023; Westlake-AI/openmixup `soft_mix_cross_entropy`)
    x~ = lam x + (1 - lam) x[perm] at the input or after a random block
    (manifold), lam ~ Beta(alpha, alpha) per batch. Per sample mixing classes
    a != b:
        L = soft-CE(lam e_a + (1 - lam) e_b) + weight * (eta_a CE_a + eta_b CE_b),
    CE_a = -log softmax over all classes except b, at a (the other mixed class is
    removed from the softmax), CE_b likewise. eta_a = eta lam, eta_b = eta (1 - lam)
    (METHODS.md; openmixup's lam_scale 'pow' with index 1). Modes as openmixup's
    ClsMixupHead with thr 0.5: "both" keeps both terms, "less" only the term of
    the class with lam_i < 0.5 (lam = 0.5: class b), "more" only the other one.
    Same-class pairs and lam within 1e-3 of 0 or 1 are not mixed samples
    (openmixup's `mask_one`): they get the soft-CE alone, which is then plain CE.
    `params.reduction` says how the per-sample losses are averaged:
      "all_rows" (default): the mean over the batch. This is what openmixup's
        shipped path computes: ClsMixupHead.loss passes avg_factor = batch size
        to `soft_mix_cross_entropy`, which divides the mixed rows' sum and the
        other rows' sum each by it and adds them;
      "openmixup": the mean over the mixed rows plus the mean over the other rows,
        which is what `soft_mix_cross_entropy` (openmixup/models/losses/
        cross_entropy_loss.py) computes when called without avg_factor. A group
        with no rows adds 0.
    eta = 0 (or weight = 0) with "all_rows" is plain mixup cross-entropy.
    Two quirks of `soft_mix_cross_entropy` are not reproduced: it reads the mixed
    lambdas from the first mixed row in class order and pairs eta_weight with
    them, so where that row's class a has the larger index the two eta weights
    swap for the whole batch; and at lam = 0.5 exactly it drops the regulariser.

RankMixup (Noh et al. 2023; cvlab-yonsei/RankMixup)
    CE on the raw batch (no mixed-label CE) plus weight (default 0.1) times:
    MRL: relu(max logit(mixed) - max logit(raw) + margin) per sample, with one
      mixed copy (the reference's num_mixup = 1 for MRL), averaged as
      `params.mrl_rows` says:
        "zero" (default): the mean over the batch with the pairs of the same class
          (target one-hot) contributing 0;
        "rescale": the mean over the batch of every sample's term, same-class
          pairs included, times the share of pairs that are mixed; this is what
          calibrate/losses/rankmixup.py's RankMixup_MRL computes, its (B,) mask
          times (B, 1) terms broadcasting to a (B, B) matrix whose mean factors so.
    M-NDCG: n_mixed mixed copies, each its own lam and permutation, in one
      forward pass. Per sample the raw input has relevance 1 and rank 1, the
      copies follow sorted by relevance max(lam, 1 - lam) (1 for same-class
      pairs); gains are max softmax confidences, DCG = sum gain / log2(rank + 1),
      IDCG the same with the relevances, NDCG = DCG / IDCG, or IDCG / DCG when
      DCG > IDCG (the reference); loss mean(1 - NDCG).

MixOE (Zhang et al. 2023; zjysteven/MixOE)
    CE on the batch plus weight (default 5) times soft-CE of a mixture of each
    input with an outlier, target lam onehot + (1 - lam) uniform, lam ~ Beta(alpha,
    alpha). "mixup" mixes whole inputs; "cutmix" pastes an outlier box (images) or
    segment (sequences, vectors) into the input and recomputes lam from the area
    kept, as MixOE does. Outliers (`params.outliers`), in the preprocessed input
    space:
      "noise": Gaussian noise with the per-feature (per element) mean and standard
        deviation of the inputs they are made from (the training batch; the test
        set at evaluation);
      "shuffled": inputs of the batch in a random order, each with its features
        (all elements of the sample) randomly permuted: the marginal values of
        real data without their structure;
      "holdout": real samples of classes held out of the in-distribution data:
        `params.outlier_classes` = K takes the K largest class ids out of both
        sides of the split (`core.data.split.hold_out_outliers`; the model card's
        split lists them), so the head has the in-distribution classes only, with
        their own ids. Each step draws B rows uniformly, with replacement, from
        the held-out classes' training rows (the official code takes the next
        batch of a shuffled loader over its outlier set, WebVision, whose classes
        are not the test's OOD classes; here the OOD test classes are the same
        classes' test rows). Outliers are not augmented.
    Evaluation: the test set is in-distribution; out-of-distribution are, for
    "holdout", the held-out classes' test rows, otherwise outliers made the same
    way from the test inputs with a generator seeded by train.seed. AUROC of
    max-softmax (in-distribution positive) and the TNR on outliers at the
    threshold where 95% of the test set is accepted (ROC point with TPR >= 0.95).
    With weight 0 a "holdout" run trains plain cross-entropy on the same
    in-distribution rows and is scored on the same OOD rows: the baseline.

weight = 0 computes neither mixing nor its forward pass and draws nothing, so a
RankMixup or MixOE run with weight 0 trains exactly as plain cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor, nn

from embedmix.core.data.dataset import Outliers
from embedmix.core.mixup.base import Batch, MixingMethod
from embedmix.core.mixup.mixing import cutmix_region, mix, partners, paste, sample_lambda_float
from embedmix.core.models import Encoder, TrainingNet

ECE_BINS = 15
MIXED_EPS = 1e-3


# --------------------------------------------------------------------------- metrics
def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins (lo, hi] of |bin| / n * |accuracy - mean confidence|."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(torch.float64)
    conf = conf.to(torch.float64)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=conf.device)
    bins = torch.bucketize(conf, edges[1:-1])  # bin i holds edges[i] < conf <= edges[i + 1]
    total = torch.zeros((), dtype=torch.float64, device=conf.device)
    for i in range(n_bins):
        inside = bins == i
        count = int(inside.sum())
        if count:
            total += count / len(conf) * (correct[inside].mean() - conf[inside].mean()).abs()
    return float(total)


def confidence_gap(probs: Tensor, labels: Tensor) -> float:
    """Mean max-softmax confidence minus accuracy: > 0 over-confident, < 0 under-confident (what ECE's bins hide)."""
    conf, pred = probs.max(dim=1)
    return float(conf.double().mean() - (pred == labels).double().mean())


def ood_scores(in_scores: Tensor, out_scores: Tensor) -> dict[str, float]:
    """AUROC and TNR at 95% TPR of scores where in-distribution is the positive class."""
    y = torch.cat([torch.ones(len(in_scores)), torch.zeros(len(out_scores))]).numpy()
    s = torch.cat([in_scores, out_scores]).double().cpu().numpy()
    fpr, tpr, _ = roc_curve(y, s)
    at = int((tpr >= 0.95).argmax())  # the first ROC point accepting >= 95% of in-distribution
    return {"auroc": float(roc_auc_score(y, s)), "tnr_at_95_tpr": float(1.0 - fpr[at])}


# --------------------------------------------------------------------------- losses
def decoupled_mixup_loss(logits: Tensor, y_a: Tensor, y_b: Tensor, lam: float, *, eta: float, mode: str,
                         weight: float = 1.0, reduction: str = "all_rows") -> Tensor:
    """Mixup soft-CE plus the decoupled regulariser, averaged as `reduction` says (see the module docstring)."""
    c = logits.shape[1]
    logp = F.log_softmax(logits, dim=1)
    target = mix(F.one_hot(y_a, c).to(logits.dtype), F.one_hot(y_b, c).to(logits.dtype), lam)
    loss = -(target * logp).sum(dim=1)
    mixed = (y_a != y_b) & (MIXED_EPS < lam < 1 - MIXED_EPS)
    if eta == 0 or weight == 0:
        return reduce_rows(loss, mixed, reduction)
    z_a = logits.gather(1, y_a[:, None]).squeeze(1)
    z_b = logits.gather(1, y_b[:, None]).squeeze(1)
    ce_a = torch.logsumexp(logits.scatter(1, y_b[:, None], float("-inf")), dim=1) - z_a  # b left out
    ce_b = torch.logsumexp(logits.scatter(1, y_a[:, None], float("-inf")), dim=1) - z_b  # a left out
    if mode == "both":
        eta_a, eta_b = eta * lam, eta * (1 - lam)
    elif (mode == "less") == (lam < 0.5):
        eta_a, eta_b = eta * lam, 0.0
    else:
        eta_a, eta_b = 0.0, eta * (1 - lam)
    reg = torch.where(mixed, eta_a * ce_a + eta_b * ce_b, 0.0)
    return reduce_rows(loss + weight * reg, mixed, reduction)


def reduce_rows(per_row: Tensor, mixed: Tensor, reduction: str) -> Tensor:
    """Decoupled Mixup's reduction: "all_rows", the mean; "openmixup", mean over mixed rows + mean over the rest."""
    if reduction == "all_rows":
        return per_row.mean()
    if reduction == "openmixup":
        total = per_row.new_zeros(())
        for rows in (mixed, ~mixed):
            if rows.any():
                total = total + per_row[rows].mean()
        return total
    raise ValueError(f"decoupled_mixup: unknown reduction {reduction!r}; use 'all_rows' or 'openmixup'")


def mrl_term(raw_logits: Tensor, mixed_logits: Tensor, mixed: Tensor, margin: float, rows: str = "zero") -> Tensor:
    """RankMixup MRL: relu(max logit(mixed) - max logit(raw) + margin) per row, averaged as `rows` says:
    "zero", 0 where the pair is not mixed; "rescale", every row's term times the share of mixed pairs."""
    terms = F.relu(mixed_logits.max(dim=1).values - raw_logits.max(dim=1).values + margin)
    if rows == "zero":
        return torch.where(mixed, terms, 0.0).mean()
    if rows == "rescale":
        return terms.mean() * mixed.to(terms.dtype).mean()
    raise ValueError(f"rankmixup: unknown mrl_rows {rows!r}; use 'zero' or 'rescale'")


def mndcg_term(raw_logits: Tensor, mixed_logits: Tensor, relevance: Tensor) -> Tensor:
    """RankMixup M-NDCG: mean(1 - NDCG); mixed_logits (n, B, C), relevance (B, n)."""
    conf_raw = F.softmax(raw_logits, dim=1).max(dim=1).values  # (B,)
    conf_mix = F.softmax(mixed_logits, dim=2).max(dim=2).values.T  # (B, n)
    order = torch.argsort(relevance, dim=1, descending=True, stable=True)
    gains = torch.cat([conf_raw[:, None], conf_mix.gather(1, order)], dim=1)
    ideal = torch.cat([torch.ones_like(conf_raw)[:, None], relevance.gather(1, order).to(gains.dtype)], dim=1)
    discount = torch.log2(torch.arange(2, gains.shape[1] + 2, device=gains.device, dtype=gains.dtype))
    dcg, idcg = (gains / discount).sum(dim=1), (ideal / discount).sum(dim=1)
    ndcg = torch.where(idcg > dcg, dcg / idcg, idcg / dcg)
    return (1.0 - ndcg).mean()


@torch.no_grad()
def preprocessed(encoder: Encoder, x: Tensor, device: torch.device, chunk: int = 1024) -> Tensor:
    """Raw rows through the encoder's preprocessing, on `device`, in chunks."""
    return torch.cat([encoder.preprocess(x[i:i + chunk].to(device)) for i in range(0, len(x), chunk)])


def make_outliers(x: Tensor, kind: str, gen: torch.Generator) -> Tensor:
    """Outliers shaped like `x` (preprocessed inputs): "noise" or "shuffled" (see the module docstring)."""
    if kind == "noise":
        mean = x.mean(dim=0, keepdim=True)
        std = x.std(dim=0, keepdim=True) if len(x) > 1 else torch.ones_like(mean)
        return mean + std * torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)
    if kind == "shuffled":
        rows = x[partners(len(x), gen).to(x.device)].flatten(1)
        perm = torch.rand(rows.shape, generator=gen, device=gen.device).argsort(dim=1).to(x.device)
        return rows.gather(1, perm).view_as(x)
    raise ValueError(f"unknown outlier kind {kind!r}; use 'noise' or 'shuffled'")


# --------------------------------------------------------------------------- methods
class _ClassifierMethod(MixingMethod):
    """Shared parts: the head lives in the cross_entropy loss; accuracy and ECE at evaluation."""

    def __init__(self, spec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        if not hasattr(base_loss, "logits") or num_classes is None:
            raise ValueError(f"{spec.mixup.method} needs the cross_entropy loss on class labels")
        self.params = spec.mixup.params
        self.alpha = float(spec.mixup.alpha)
        self.weight = float(spec.mixup.weight)
        self.level = spec.mixup.level
        self._net: list[TrainingNet] = []  # the training net seen last (not a submodule: not re-registered)

    def _remember(self, net: TrainingNet) -> None:
        if not self._net or self._net[0] is not net:
            self._net[:] = [net]

    def logits(self, net: TrainingNet, x: Tensor, start: int = 0) -> Tensor:
        return self.base_loss.logits(net(x, start).float())

    # -- evaluation ----------------------------------------------------------------
    def _outputs(self, encoder: Encoder, h: Tensor) -> Tensor:
        """Head logits of preprocessed inputs, through the projection head when the run has one."""
        z = encoder.embed_from(h)
        if self._net and self._net[0].encoder is encoder:
            z = self._net[0].project(z)
        elif self.spec.model.projection_dim is not None:
            raise RuntimeError("the classification head reads the projected output; the training net is not known yet")
        return self.base_loss.logits(z.float())

    @torch.no_grad()
    def _probs(self, encoder: Encoder, h: Tensor, chunk: int = 1024) -> Tensor:
        out = [F.softmax(self._outputs(encoder, h[i:i + chunk]), dim=1).cpu() for i in range(0, len(h), chunk)]
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

    @torch.no_grad()
    def _preprocessed_test(self, encoder: Encoder, data, device: torch.device) -> Tensor:
        return preprocessed(encoder, data.x_test, device)

    def extra_metrics(self, encoder: Encoder, data, device: torch.device) -> dict[str, float]:
        if data.y_test is None or len(data.y_test) == 0:
            return {}
        modes = [(m, m.training) for m in [encoder, self.base_loss, *self._net]]
        for m, _ in modes:
            m.eval()
        try:
            h = self._preprocessed_test(encoder, data, device)
            probs = self._probs(encoder, h)
            y = data.y_test.cpu()
            values = {"accuracy": float((probs.argmax(dim=1) == y).double().mean()),
                      "ece": expected_calibration_error(probs, y), "confidence_gap": confidence_gap(probs, y)}
            values |= self._more_metrics(encoder, h, probs, data, device)
        finally:
            for m, was in modes:
                m.train(was)
        return values

    def _more_metrics(self, encoder: Encoder, h: Tensor, probs: Tensor, data, device: torch.device) -> dict[str, float]:
        return {}


class DecoupledMixup(_ClassifierMethod):
    def __init__(self, spec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        self.eta = float(self.params["eta"])
        self.mode = str(self.params["mode"])
        self.reduction = str(self.params["reduction"])

    def draw(self, gen: torch.Generator, n: int, blocks: int) -> tuple[float, Tensor, int]:
        """lambda, partners, and (manifold) the block index to mix before (0 = the input)."""
        lam = sample_lambda_float(self.alpha, gen)
        perm = partners(n, gen)
        start = int(torch.randint(blocks, (), generator=gen, device=gen.device).item()) if self.level == "manifold" else 0
        return lam, perm, start

    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        self._remember(net)
        x = batch.view()
        lam, perm, start = self.draw(batch.gen, len(x), len(net.encoder.blocks))
        perm = perm.to(x.device)
        h = net.encoder.hidden(x, 0, start)
        logits = self.logits(net, mix(h, h[perm], lam), start)
        return decoupled_mixup_loss(logits, batch.y, batch.y[perm], lam, eta=self.eta, mode=self.mode, weight=self.weight,
                                    reduction=self.reduction)


class RankMixup(_ClassifierMethod):
    def __init__(self, spec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        self.mode = str(self.params["mode"])
        self.margin = float(self.params["margin"])
        self.mrl_rows = str(self.params["mrl_rows"])
        self.copies = 1 if self.mode == "mrl" else int(self.params["n_mixed"])

    def draw(self, gen: torch.Generator, n: int) -> list[tuple[float, Tensor]]:
        return [(sample_lambda_float(self.alpha, gen), partners(n, gen)) for _ in range(self.copies)]

    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        self._remember(net)
        x, y = batch.view(), batch.y
        raw = self.logits(net, x)
        ce = F.cross_entropy(raw, y)
        if self.weight == 0:
            return ce
        draws = self.draw(batch.gen, len(x))
        mixed_x = torch.cat([mix(x, x[perm.to(x.device)], lam) for lam, perm in draws])
        mixed = self.logits(net, mixed_x).view(len(draws), len(x), -1)
        same = torch.stack([(y == y[perm.to(y.device)]) | (lam in (0.0, 1.0)) for lam, perm in draws], dim=1)  # (B, n)
        if self.mode == "mrl":
            term = mrl_term(raw, mixed[0], ~same[:, 0], self.margin, self.mrl_rows)
        else:
            rel = torch.tensor([max(lam, 1.0 - lam) for lam, _ in draws], device=raw.device, dtype=raw.dtype)
            relevance = torch.where(same, 1.0, rel.expand(len(x), -1))
            term = mndcg_term(raw, mixed, relevance)
        return ce + self.weight * term


class MixOE(_ClassifierMethod):
    def __init__(self, spec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__(spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)
        self.mix_op = str(self.params["mix"])
        self.outliers = str(self.params["outliers"])
        self._pool: Tensor | None = None

    def use_outliers(self, outliers: Outliers | None, device: torch.device) -> None:
        """Keep the held-out classes' training rows (raw inputs) on `device` as the pool of 'holdout' outliers."""
        if self.outliers != "holdout":
            return
        if outliers is None:
            raise ValueError("mixup.params.outliers: 'holdout' mixes rows of held-out classes, and the data has none; "
                             "load it with core.data.load_dataset from a spec that sets outlier_classes")
        self._pool = outliers.x_train.to(device)

    def outlier_rows(self, x: Tensor, gen: torch.Generator, net: TrainingNet | None) -> Tensor:
        """len(x) preprocessed outliers: made from x, or ('holdout') drawn with replacement from the pool."""
        if self.outliers != "holdout":
            return make_outliers(x, self.outliers, gen)
        if self._pool is None or net is None:
            raise RuntimeError("MixOE 'holdout' draws from its outlier pool: call use_outliers first and pass the net")
        idx = torch.randint(len(self._pool), (len(x),), generator=gen, device=gen.device).to(self._pool.device)
        return net.encoder.preprocess(self._pool[idx].to(x.device))

    def mixed_batch(self, x: Tensor, gen: torch.Generator, net: TrainingNet | None = None) -> tuple[Tensor, float]:
        """(mixture of x with outliers, lambda actually applied); draws lam, then outliers, then the box."""
        lam = sample_lambda_float(self.alpha, gen)
        out = self.outlier_rows(x, gen, net)
        if self.mix_op == "cutmix":
            return paste(x, out, cutmix_region(x, lam, gen))
        return mix(x, out, lam), lam

    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        self._remember(net)
        x, y = batch.view(), batch.y
        ce = F.cross_entropy(self.logits(net, x), y)
        if self.weight == 0:
            return ce
        mixed_x, lam = self.mixed_batch(x, batch.gen, net)
        target = lam * F.one_hot(y, self.num_classes).float() + (1.0 - lam) / self.num_classes
        logp = F.log_softmax(self.logits(net, mixed_x), dim=1)
        return ce + self.weight * -(target * logp).sum(dim=1).mean()

    def _more_metrics(self, encoder: Encoder, h: Tensor, probs: Tensor, data, device: torch.device) -> dict[str, float]:
        if self.outliers == "holdout":
            if data.outliers is None:
                raise ValueError("mixup.params.outliers: 'holdout' is scored on the held-out classes' test rows; "
                                 "the data has none")
            outliers = preprocessed(encoder, data.outliers.x_test, device)
        else:
            gen = torch.Generator().manual_seed(self.spec.train.seed)
            outliers = make_outliers(h.cpu(), self.outliers, gen).to(h.device)
        out_probs = self._probs(encoder, outliers)
        return ood_scores(probs.max(dim=1).values, out_probs.max(dim=1).values)

