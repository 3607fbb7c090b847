"""Metrics of a trained embedding: retrieval, clustering, probes, geometry, regression.

Every metric takes torch tensors (embeddings (N, d), int64 class labels or float
targets (N,)) and returns plain Python floats, so a worker can store them as they
are. `evaluate` computes the names a job spec asks for (catalog `METRICS`; the
unit tests keep `SUPPORTED` equal to it) and shares work between them.

Retrieval follows pytorch-metric-learning's AccuracyCalculator with
k="max_bin_count" and query set == reference set, which the tests use as the
oracle; PML itself (and faiss) is no runtime dependency. Unlike PML + faiss,
which materialises an N x max_bin_count neighbour table, this code works chunk by
chunk in O(chunk x N) memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    adjusted_mutual_info_score,
    mean_absolute_error,
    mean_squared_error,
    normalized_mutual_info_score,
    r2_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from embedmix.core.catalog import SHOT_REGIONS

Tensor = torch.Tensor

RETRIEVAL = ("precision_at_1", "recall_at_k", "r_precision", "map_at_r")
CLUSTERING = ("nmi", "ami")
SHOT_MAE = tuple(f"mae_{region}_shot" for region in SHOT_REGIONS)  # absent where no test target is in the region
REGRESSION = ("mae", "rmse", "r2", "spearman", *SHOT_MAE)
# The imbalanced-regression regions of Yang et al. (DIR, used by ConR): a target bin is many-shot
# above 100 training samples and few-shot below 20. On AgeDB-DIR (12,208 training ages in 101
# one-year bins, 121 a bin on average) those are 0.83 and 0.17 of the mean bin count; embedmix
# keeps the ratios over SHOT_BINS equal-width bins of the training range, so they mean the same
# on a dataset of any size or target scale (docs/methods.md, ConR).
SHOT_BINS = 20
MANY_SHOT_RATIO, FEW_SHOT_RATIO = 100 / 121, 20 / 121
SUPPORTED = (*RETRIEVAL, *CLUSTERING, "knn_accuracy", "linear_probe_accuracy", "alignment", "uniformity", "tolerance",
             *REGRESSION)


def _normalised(embeddings: Tensor) -> Tensor:
    """Unit-length float32 rows on the CPU: every similarity here is cosine, and float32 is what BLAS is fast at."""
    x = embeddings.detach().to("cpu", torch.float32)
    return torch.nn.functional.normalize(x, dim=1).contiguous()


# --------------------------------------------------------------------------- retrieval


def _order_keys(values: np.ndarray, negative: bool, out: np.ndarray) -> None:
    """Write int64 sort keys for float32 similarities into `out`: the float's order, then one relevance bit.

    Sorting these keys (values only, which numpy does with SIMD) ranks a query's
    candidates and keeps track of which were same-class without carrying indices.
    The low bit is 1 for other-class candidates, so on an exact tie the
    other-class one ranks first: a collapsed model (all similarities equal) scores
    the minimum instead of a perfect score.
    """
    bits = np.add(values, np.float32(0.0)).view(np.int32)  # + 0.0 maps -0.0 to +0.0: equal floats, equal keys
    bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)  # negative floats: reverse the order of their bit patterns
    np.multiply(bits, 2, out=out, dtype=np.int64)  # room for the bit; int32 values cannot overflow
    if negative:
        out |= 1


def _ranked_relevance(sims: np.ndarray, first_self: int, block: slice, depth: int) -> np.ndarray:
    """For rows of one class: a (rows, depth) bool array, True where the i-th nearest neighbour shares the class.

    `sims` holds the rows' similarities to all N references (sorted by class) and
    is overwritten. `block` is the class's column range and `first_self` the
    column of the first row inside that block; the query itself is excluded.
    Only the `depth` best candidates are ever sorted: the best `depth`
    other-class candidates (a partition, O(N)) merged with the class's own.
    Masked entries (the query, the class block among the other-class
    candidates) are -inf and rank after all N - 1 real neighbours.
    """
    rows, n = sims.shape
    same = sims[:, block].copy()
    same[np.arange(rows), np.arange(first_self, first_self + rows)] = -np.inf
    sims[:, block] = -np.inf
    m = min(n, depth)
    sims.partition(n - m, axis=1)
    width = same.shape[1]
    keys = np.empty((rows, width + m), dtype=np.int64)
    _order_keys(same, False, keys[:, :width])
    _order_keys(sims[:, n - m :], True, keys[:, width:])
    top = min(depth, keys.shape[1])
    keys.partition(keys.shape[1] - top, axis=1)
    best = np.sort(keys[:, -top:], axis=1)[:, ::-1]
    return (best & 1) == 0


class _RetrievalSums:
    """Per-query scores summed over all non-lone queries (PML averages over those)."""

    def __init__(self, ks: tuple[int, ...]) -> None:
        self.ks = ks
        self.queries = 0
        self.precision_at_1 = 0.0
        self.recall = dict.fromkeys(ks, 0.0)
        self.r_precision = 0.0
        self.map_at_r = 0.0

    def add(self, relevant: np.ndarray, r: int) -> None:
        """Add rows of `_ranked_relevance` for a class with `r` other members."""
        self.queries += relevant.shape[0]
        self.precision_at_1 += float(relevant[:, 0].sum())
        for k in self.ks:
            self.recall[k] += float(relevant[:, :k].any(axis=1).sum())
        hits_so_far = np.cumsum(relevant[:, :r], axis=1, dtype=np.int32)
        self.r_precision += float(hits_so_far[:, -1].sum()) / r
        hits_so_far *= relevant[:, :r]  # precision counts only at the ranks of hits
        self.map_at_r += float((hits_so_far @ (1.0 / np.arange(1, r + 1))).sum()) / r

    def merge(self, other: _RetrievalSums) -> None:
        self.queries += other.queries
        self.precision_at_1 += other.precision_at_1
        for k in self.ks:
            self.recall[k] += other.recall[k]
        self.r_precision += other.r_precision
        self.map_at_r += other.map_at_r

    def result(self) -> dict[str, float]:
        """Means over non-lone queries; NaN when every query is alone in its class, as PML returns."""
        q = self.queries or math.nan
        out = {"precision_at_1": self.precision_at_1 / q}
        out.update({f"recall_at_{k}": self.recall[k] / q for k in self.ks})
        out.update({"r_precision": self.r_precision / q, "map_at_r": self.map_at_r / q})
        return out


def _class_segments(lo: int, hi: int, starts: np.ndarray, ends: np.ndarray) -> Iterator[tuple[int, int, int, int]]:
    """(row_from, row_to, class_start, class_end) for each class that rows [lo, hi) of the class-sorted data touch."""
    c = int(np.searchsorted(ends, lo, side="right"))
    while c < len(starts) and starts[c] < hi:
        yield max(lo, starts[c]), min(hi, ends[c]), int(starts[c]), int(ends[c])
        c += 1


def _score_rows(sims: np.ndarray, lo: int, segment: tuple[int, int, int, int], depth: int, ks: tuple[int, ...]) -> _RetrievalSums:
    """Scores of the rows of one class segment of a similarity chunk that starts at row `lo`."""
    r0, r1, cs, ce = segment
    sums = _RetrievalSums(ks)
    r = ce - cs - 1
    if r > 0:  # a lone query is left out of every retrieval metric, as in PML
        sums.add(_ranked_relevance(sims[r0 - lo : r1 - lo], r0 - cs, slice(cs, ce), max(r, depth)), r)
    return sums


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"recall k values must be positive integers, got {list(ks)}")
    return ks


def _split(segment: tuple[int, int, int, int], parts: int) -> list[tuple[int, int, int, int]]:
    """Cut a segment's rows into `parts` near-equal pieces so that every thread gets work."""
    r0, r1, cs, ce = segment
    bounds = np.linspace(r0, r1, parts + 1).round().astype(int)
    return [(int(a), int(b), cs, ce) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def retrieval_metrics(embeddings: Tensor, labels: Tensor, *, ks: Sequence[int] = (1, 4), chunk: int = 1024) -> dict[str, float]:
    """precision_at_1, recall_at_{k}, r_precision and map_at_r with every item as query against all others.

    Definitions are PML AccuracyCalculator's (k="max_bin_count", reference ==
    query, the query left out of its own neighbours, queries alone in their class
    left out of the mean), on cosine similarity. recall_at_k counts a query when
    any of its k nearest neighbours has its class.

    Items are sorted by class so a query's same-class references are one column
    block; per chunk of `chunk` queries one float32 matmul gives the similarities,
    and per row only the best max(R, k) candidates are ever sorted. Rows of a
    chunk are scored on `torch.get_num_threads()` threads (numpy's partition and
    sort release the GIL). Memory is O(chunk x N).
    """
    ks = _check_ks(ks)
    order = torch.argsort(labels.detach().cpu(), stable=True)
    x = _normalised(embeddings)[order]
    _, counts = torch.unique_consecutive(labels.detach().cpu()[order], return_counts=True)
    ends = counts.cumsum(0).numpy()
    starts = ends - counts.numpy()
    n = x.shape[0]
    depth = max(ks)
    workers = max(1, torch.get_num_threads())
    total = _RetrievalSums(ks)
    buffer = torch.empty(min(chunk, n), n)
    with ThreadPoolExecutor(workers) as pool:
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            sims = buffer[: hi - lo]
            torch.mm(x[lo:hi], x.T, out=sims)
            pieces = [p for seg in _class_segments(lo, hi, starts, ends) for p in _split(seg, workers)]
            for sums in pool.map(lambda piece: _score_rows(sims.numpy(), lo, piece, depth, ks), pieces):
                total.merge(sums)
    return total.result()


# --------------------------------------------------------------------------- clustering


def clustering_metrics(embeddings: Tensor, labels: Tensor, *, seed: int = 0) -> dict[str, float]:
    """nmi and ami of k-means clusters (as many as there are classes) against the classes.

    k-means runs on the unit-normalised embeddings, the geometry every other
    metric here uses; a fixed seed and a few restarts keep the score stable
    between evaluations of the same model.
    """
    y = labels.detach().cpu().numpy()
    clusters = KMeans(n_clusters=len(np.unique(y)), n_init=3, random_state=seed).fit_predict(_normalised(embeddings).numpy())
    return {
        "nmi": float(normalized_mutual_info_score(y, clusters)),
        "ami": float(adjusted_mutual_info_score(y, clusters)),
    }


# --------------------------------------------------------------------------- probes


def nearest_neighbours(queries: Tensor, references: Tensor, k: int, *, chunk: int = 1024,
                       block: int = 16_384) -> Iterator[tuple[int, Tensor, Tensor]]:
    """The k most cosine-similar references of every query, one chunk of queries at a time.

    Yields (first query row, similarities (rows, k), reference indices (rows, k)),
    best first. References are scanned in blocks of `block` and each block's top k
    merged into a running top k, so memory is O(chunk x block) whatever the number
    of references: 1,000,000 references of d = 128 take their own 512 MB plus a
    64 MB similarity block at the defaults.
    """
    reference = _normalised(references)
    query = _normalised(queries)
    k = min(k, reference.shape[0])
    buffer = torch.empty(min(chunk, query.shape[0]), min(block, reference.shape[0]))
    for lo in range(0, query.shape[0], chunk):
        q = query[lo : lo + chunk]
        best_sims = best_idx = None
        for start in range(0, reference.shape[0], block):
            part = reference[start : start + block]
            sims = buffer[: q.shape[0], : part.shape[0]]
            torch.mm(q, part.T, out=sims)
            top, idx = torch.topk(sims, min(k, part.shape[0]), dim=1)
            idx += start
            if best_sims is not None:
                top, pick = torch.topk(torch.cat([best_sims, top], dim=1), k, dim=1)
                idx = torch.gather(torch.cat([best_idx, idx], dim=1), 1, pick)
            best_sims, best_idx = top, idx
        yield lo, best_sims, best_idx


def query_retrieval_metrics(queries: Tensor, query_labels: Tensor, references: Tensor, reference_labels: Tensor, *,
                            ks: Sequence[int] = (1, 10), chunk: int = 1024, block: int = 16_384) -> dict[str, float]:
    """precision_at_1 and recall_at_{k} of separate queries against a reference set (a gallery), cosine.

    The form for galleries too large for every item to query all the others
    (`retrieval_metrics`): a million references are searched by a sample of
    queries, exactly (no index), in O(chunk x block) memory.
    """
    ks = _check_ks(ks)
    ref_labels = reference_labels.detach().cpu()
    truth = query_labels.detach().cpu()
    hits = dict.fromkeys((1, *ks), 0)
    for lo, _, idx in nearest_neighbours(queries, references, max(ks), chunk=chunk, block=block):
        relevant = ref_labels[idx] == truth[lo : lo + idx.shape[0], None]
        for k in hits:
            hits[k] += int(relevant[:, :k].any(dim=1).sum())
    n = truth.shape[0] or math.nan
    return {"precision_at_1": hits[1] / n, **{f"recall_at_{k}": hits[k] / n for k in ks}}


def knn_accuracy(
    train_emb: Tensor,
    train_labels: Tensor,
    test_emb: Tensor,
    test_labels: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Accuracy of a weighted k-nearest-neighbour vote of train items for each test item (InstDisc).

    Each of the k most cosine-similar train items votes for its class with weight
    exp(s / T). Weights are taken relative to the row's best similarity, which
    leaves the vote unchanged and keeps exp finite for small T. Ties go to the
    smallest class label.
    """
    classes, reference_class = torch.unique(train_labels.detach().cpu(), return_inverse=True)
    truth = test_labels.detach().cpu()
    correct = 0
    for lo, sims, idx in nearest_neighbours(test_emb, train_emb, k, chunk=chunk):
        weights = torch.exp((sims - sims[:, :1]) / temperature)
        votes = torch.zeros(sims.shape[0], len(classes)).scatter_add_(1, reference_class[idx], weights)
        correct += int((classes[votes.argmax(dim=1)] == truth[lo : lo + chunk]).sum())
    return correct / truth.shape[0]


def linear_probe_accuracy(train_emb: Tensor, train_labels: Tensor, test_emb: Tensor, test_labels: Tensor, *, seed: int = 0) -> float:
    """Test accuracy of a logistic regression fit on standardised frozen train embeddings.

    Standardising lets lbfgs converge quickly whatever the embedding scale (15
    iterations on 8,000 clustered points), so the probe measures the
    representation, not the optimiser; max_iter is only a ceiling.
    """
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(_as_numpy(train_emb), train_labels.detach().cpu().numpy())
    return float(probe.score(_as_numpy(test_emb), test_labels.detach().cpu().numpy()))


def regression_metrics(train_emb: Tensor, train_y: Tensor, test_emb: Tensor, test_y: Tensor) -> dict[str, float]:
    """mae, rmse, r2 and spearman of a ridge probe fit on standardised train embeddings, scored on test.

    A small alpha keeps the probe close to least squares while staying defined
    when the embedding has more dimensions than train rows or collinear ones.
    """
    probe = make_pipeline(StandardScaler(), Ridge(alpha=1e-3))
    probe.fit(_as_numpy(train_emb), train_y.detach().cpu().double().numpy())
    truth = test_y.detach().cpu().double().numpy()
    predicted = probe.predict(_as_numpy(test_emb))
    errors = np.abs(truth - predicted)
    regions = shot_regions(train_y.detach().cpu().double().numpy(), truth)
    return {
        "mae": float(mean_absolute_error(truth, predicted)),
        "rmse": float(math.sqrt(mean_squared_error(truth, predicted))),
        "r2": float(r2_score(truth, predicted)),
        "spearman": float(spearmanr(truth, predicted).statistic),
        **{f"mae_{region}_shot": float(errors[regions == region].mean())
           for region in SHOT_REGIONS if (regions == region).any()},
    }


def shot_regions(train_y: np.ndarray, test_y: np.ndarray) -> np.ndarray:
    """Each test target's region ("many", "medium", "few") by how many training targets share its bin.

    Bins are SHOT_BINS equal-width bins over the training range (a test target outside it
    counts in the nearest end bin); a bin is many-shot above MANY_SHOT_RATIO and few-shot
    below FEW_SHOT_RATIO of the mean training count per bin, medium-shot between.
    """
    low, high = float(train_y.min()), float(train_y.max())
    edges = np.linspace(low, high, SHOT_BINS + 1)[1:-1]
    counts = np.bincount(np.digitize(train_y, edges), minlength=SHOT_BINS)
    mean = len(train_y) / SHOT_BINS
    region_of_bin = np.where(counts > MANY_SHOT_RATIO * mean, "many",
                             np.where(counts < FEW_SHOT_RATIO * mean, "few", "medium"))
    return region_of_bin[np.digitize(test_y, edges)]


def _as_numpy(embeddings: Tensor) -> np.ndarray:
    """float64 array for scikit-learn, which fits in float64 anyway."""
    return embeddings.detach().cpu().double().numpy()


# --------------------------------------------------------------------------- geometry


def alignment(embeddings: Tensor, labels: Tensor) -> float:
    """Mean ||f_i - f_j||^2 over same-class pairs i != j of unit-normalised embeddings (Wang & Isola).

    Per class, sum_{i != j} ||f_i - f_j||^2 = 2 n sum_i ||f_i||^2 - 2 ||sum_i f_i||^2,
    so one pass over the data (O(N d)) replaces the O(N^2) pairs. NaN when no
    class has two members.
    """
    x = _normalised(embeddings).double()
    classes, cls = torch.unique(labels.detach().cpu(), return_inverse=True)
    counts = torch.bincount(cls, minlength=len(classes)).double()
    sums = torch.zeros(len(classes), x.shape[1], dtype=torch.float64).index_add_(0, cls, x)
    sq_norms = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, cls, (x * x).sum(dim=1))
    pair_total = (2 * counts * sq_norms - 2 * (sums * sums).sum(dim=1)).sum()
    pairs = (counts * (counts - 1)).sum()
    return float(pair_total / pairs) if pairs > 0 else math.nan


def tolerance(embeddings: Tensor, labels: Tensor) -> float:
    """Mean cosine similarity over same-class pairs i != j of the embeddings (Wang & Liu, 2021).

    The uniformity-tolerance dilemma reads it beside uniformity: how close a
    contrastive loss lets semantically similar samples stay. Per class,
    sum_{i != j} f_i.f_j = ||sum_i f_i||^2 - sum_i ||f_i||^2, one O(N d) pass.
    NaN when no class has two members.
    """
    x = _normalised(embeddings).double()
    classes, cls = torch.unique(labels.detach().cpu(), return_inverse=True)
    counts = torch.bincount(cls, minlength=len(classes)).double()
    sums = torch.zeros(len(classes), x.shape[1], dtype=torch.float64).index_add_(0, cls, x)
    pair_total = (sums * sums).sum() - (x * x).sum()
    pairs = (counts * (counts - 1)).sum()
    return float(pair_total / pairs) if pairs > 0 else math.nan


def uniformity(embeddings: Tensor, chunk: int = 1024) -> float:
    """log of the mean over pairs i != j of exp(-2 ||f_i - f_j||^2) on unit-normalised embeddings (Wang & Isola).

    Rows are unit length (or zero), so every exponent computed lies in [-6, 2]:
    a plain exp neither overflows nor underflows, which is the stability a
    log-sum-exp would buy, without its extra passes over N^2 / 2 terms. Each pair is
    visited once (i < j, the sum is symmetric), chunk by chunk in O(chunk x N)
    memory; row sums are combined in float64.
    """
    x = _normalised(embeddings)
    n = x.shape[0]
    if n < 2:
        return math.nan
    sq_norms = (x * x).sum(dim=1)
    buffer = torch.empty(min(chunk, n) * n)  # reused: a fresh chunk x N block per step costs page faults
    total = 0.0
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        terms = buffer[: (hi - lo) * (n - lo)].view(hi - lo, n - lo)
        # exp(-2 ||f_i - f_j||^2) = exp(4 f_i.f_j - 2 ||f_j||^2) * exp(-2 ||f_i||^2), references j >= lo only
        torch.addmm(-2 * sq_norms[lo:], x[lo:hi], x[lo:].T, alpha=4, out=terms).exp_()
        terms[:, : hi - lo].triu_(diagonal=1)  # inside the diagonal block keep pairs i < j
        total += float((terms.sum(dim=1).double() * torch.exp(-2 * sq_norms[lo:hi].double())).sum())
    return math.log(2 * total) - math.log(n * (n - 1))


# --------------------------------------------------------------------------- dispatcher


# Metrics that fit on, or look up in, the training embeddings; the rest need only the test set.
USES_TRAIN = frozenset(REGRESSION) | {"knn_accuracy", "linear_probe_accuracy"}

def metric_keys(names: Sequence[str], recall_k: Sequence[int] = (1, 4)) -> list[str]:
    """The result keys `evaluate` returns for `names`: recall_at_k expands to recall_at_1, recall_at_4, ...

    Raises ValueError naming the first name that is not a metric.
    """
    keys: list[str] = []
    for name in names:
        if name not in SUPPORTED:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(SUPPORTED)}")
        keys.extend([f"recall_at_{k}" for k in _check_ks(recall_k)] if name == "recall_at_k" else [name])
    return list(dict.fromkeys(keys))


def evaluate(
    names: Sequence[str],
    *,
    train: tuple[Tensor, Tensor] | None,
    test: tuple[Tensor, Tensor],
    recall_k: Sequence[int] = (1, 4),
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    seed: int = 0,
) -> dict[str, float]:
    """Compute exactly the metrics named (catalog names), sharing work between them.

    `train` and `test` are (embeddings, labels or targets); `train` may be None when
    no name is in USES_TRAIN. Retrieval, clustering,
    alignment, uniformity and tolerance look at the test set alone (every test item queries
    all others); knn_accuracy, linear_probe_accuracy and the regression metrics
    use train as the reference or fit set and score test. One retrieval pass
    serves all retrieval metrics, one k-means both clustering scores, one ridge
    probe all regression scores.
    """
    keys = metric_keys(names, recall_k)
    wanted = set(names)
    if train is None and wanted & USES_TRAIN:
        raise ValueError(f"metrics {sorted(wanted & USES_TRAIN)} need the training embeddings")
    (train_x, train_y), (test_x, test_y) = train or (None, None), test
    results: dict[str, float] = {}
    if wanted & set(RETRIEVAL):
        results |= retrieval_metrics(test_x, test_y, ks=recall_k)
    if wanted & set(CLUSTERING):
        results |= clustering_metrics(test_x, test_y, seed=seed)
    if wanted & set(REGRESSION):
        results |= regression_metrics(train_x, train_y, test_x, test_y)
    if "knn_accuracy" in wanted:
        results["knn_accuracy"] = knn_accuracy(train_x, train_y, test_x, test_y, k=knn_k, temperature=knn_temperature)
    if "linear_probe_accuracy" in wanted:
        results["linear_probe_accuracy"] = linear_probe_accuracy(train_x, train_y, test_x, test_y, seed=seed)
    if "alignment" in wanted:
        results["alignment"] = alignment(test_x, test_y)
    if "uniformity" in wanted:
        results["uniformity"] = uniformity(test_x)
    if "tolerance" in wanted:
        results["tolerance"] = tolerance(test_x, test_y)
    return {key: results[key] for key in keys if key in results}  # a shot region without test targets has no MAE
