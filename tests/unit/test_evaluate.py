"""core.evaluate against PML's AccuracyCalculator, scikit-learn, scipy and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score, r2_score

from embedmix.core import catalog
from embedmix.core.evaluate import (
    SUPPORTED,
    alignment,
    clustering_metrics,
    evaluate,
    knn_accuracy,
    linear_probe_accuracy,
    metric_keys,
    regression_metrics,
    retrieval_metrics,
    shot_regions,
    uniformity,
)


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def clustered(sizes: list[int], d: int, spread: float, seed: int, label_values: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes around random centres, shuffled; `spread` is the noise relative to the centre scale."""
    g = torch.Generator().manual_seed(seed)
    values = label_values or list(range(len(sizes)))
    labels = torch.cat([torch.full((n,), values[c], dtype=torch.int64) for c, n in enumerate(sizes)])
    centres = torch.randn(len(sizes), d, generator=g)
    index = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    x = centres[index] + spread * torch.randn(len(labels), d, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return x[perm], labels[perm]


RETRIEVAL_SETS = {
    "random_balanced": lambda: (torch.randn(600, 16, generator=torch.Generator().manual_seed(1)),
                                torch.randint(0, 10, (600,), generator=torch.Generator().manual_seed(2))),
    "imbalanced_with_lone": lambda: clustered([1, 2, 3, 40, 250, 1], 12, 2.0, seed=3, label_values=[-5, 7, 3, 1000, 0, 42]),
    "clustered": lambda: clustered([80] * 8, 32, 0.6, seed=4),
    "many_small_classes": lambda: clustered([2, 3, 4, 5] * 40, 8, 1.5, seed=5),
}


@pytest.mark.parametrize("name", RETRIEVAL_SETS)
def test_retrieval_equals_pml_accuracy_calculator(name: str) -> None:
    pytest.importorskip("faiss")
    acc_mod = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    x, labels = RETRIEVAL_SETS[name]()
    calculator = acc_mod.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    # PML + faiss ranks by L2 distance, which on unit vectors is the cosine ranking
    expected = calculator.get_accuracy(unit(x), labels)
    ours = retrieval_metrics(x, labels, ks=(1, 2, 8), chunk=64)
    assert ours["precision_at_1"] == pytest.approx(expected["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(expected["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-6)
    assert ours["recall_at_1"] == ours["precision_at_1"]


def brute_force_recall(x: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Full N x N cosine matrix, self excluded; queries alone in their class are left out (as PML does)."""
    sims = unit(x).double() @ unit(x).double().T
    sims.fill_diagonal_(-math.inf)
    hits, queries = 0, 0
    for i in range(len(labels)):
        if int((labels == labels[i]).sum()) < 2:
            continue
        nearest = torch.argsort(sims[i], descending=True)[:k]
        hits += bool((labels[nearest] == labels[i]).any())
        queries += 1
    return hits / queries


@pytest.mark.parametrize("name", RETRIEVAL_SETS)
def test_recall_at_k_equals_brute_force(name: str) -> None:
    x, labels = RETRIEVAL_SETS[name]()
    ks = (1, 2, 5, 30, 5000)  # 5000 > N - 1: every neighbour counts
    ours = retrieval_metrics(x, labels, ks=ks, chunk=100)
    for k in ks:
        assert ours[f"recall_at_{k}"] == pytest.approx(brute_force_recall(x, labels, k), abs=1e-12)


@pytest.mark.parametrize("name", RETRIEVAL_SETS)
def test_retrieval_equals_float64_brute_force(name: str) -> None:
    """Full sort of the float64 cosine matrix, PML's formulas written out: the reference free of faiss's rounding."""
    x, labels = RETRIEVAL_SETS[name]()
    f = unit(x).double()
    sims = f @ f.T
    sims.fill_diagonal_(-math.inf)
    relevant = (labels[torch.argsort(sims, dim=1, descending=True)] == labels[:, None]).double()
    r = (labels[:, None] == labels[None, :]).sum(dim=1) - 1
    p1, rp, ap = [], [], []
    for i in torch.nonzero(r > 0).flatten().tolist():
        top = relevant[i, : r[i]]
        p1.append(float(relevant[i, 0]))
        rp.append(float(top.mean()))
        ap.append(float((top * top.cumsum(0) / torch.arange(1, r[i] + 1)).sum() / r[i]))
    ours = retrieval_metrics(x, labels, chunk=50)
    assert ours["precision_at_1"] == pytest.approx(np.mean(p1), abs=1e-12)
    assert ours["r_precision"] == pytest.approx(np.mean(rp), abs=1e-12)
    assert ours["map_at_r"] == pytest.approx(np.mean(ap), abs=1e-12)


@pytest.mark.parametrize("name", RETRIEVAL_SETS)
def test_retrieval_does_not_depend_on_chunk_size(name: str) -> None:
    x, labels = RETRIEVAL_SETS[name]()
    small = retrieval_metrics(x, labels, ks=(1, 4), chunk=7)
    large = retrieval_metrics(x, labels, ks=(1, 4), chunk=10_000)
    assert small.keys() == large.keys()
    for key in small:
        assert small[key] == pytest.approx(large[key], abs=1e-6)


def test_perfect_embedding_scores_one() -> None:
    labels = torch.tensor([3, 1, 3, 0, 1, 1, 0, 3, 3])
    onehot = torch.nn.functional.one_hot(labels).float()
    result = retrieval_metrics(onehot, labels, ks=(1, 4))
    assert result == {"precision_at_1": 1.0, "recall_at_1": 1.0, "recall_at_4": 1.0, "r_precision": 1.0, "map_at_r": 1.0}


def test_collapsed_embedding_scores_the_minimum_on_ties() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    collapsed = torch.ones(len(labels), 4)
    result = retrieval_metrics(collapsed, labels, ks=(1, 6, 7))
    # every other-class item ties with the same-class ones and ranks first: 6 of them
    assert result["precision_at_1"] == result["recall_at_6"] == result["r_precision"] == result["map_at_r"] == 0.0
    assert result["recall_at_7"] == 1.0


def test_all_lone_queries_give_nan_like_pml() -> None:
    result = retrieval_metrics(torch.randn(5, 3), torch.arange(5))
    assert all(math.isnan(v) for v in result.values())


def test_retrieval_rejects_non_positive_k() -> None:
    with pytest.raises(ValueError, match="positive"):
        retrieval_metrics(torch.randn(5, 3), torch.zeros(5, dtype=torch.int64), ks=(0,))


def test_clustering_equals_sklearn_on_the_same_kmeans() -> None:
    x, labels = clustered([60, 40, 80, 20], 8, 1.2, seed=6)
    clusters = KMeans(n_clusters=4, n_init=3, random_state=11).fit_predict(unit(x).numpy())
    result = clustering_metrics(x, labels, seed=11)
    assert result["nmi"] == pytest.approx(normalized_mutual_info_score(labels.numpy(), clusters), abs=1e-12)
    assert result["ami"] == pytest.approx(adjusted_mutual_info_score(labels.numpy(), clusters), abs=1e-12)


def test_clustering_of_separated_classes_is_perfect() -> None:
    x, labels = clustered([30, 30, 30], 16, 0.01, seed=7)
    assert clustering_metrics(x, labels) == pytest.approx({"nmi": 1.0, "ami": 1.0})


def test_knn_accuracy_hand_computed() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    train_labels = torch.tensor([0, 1, 1])
    test, test_labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    # similarities 1, 0, -1. T = 1: class 0 gets e^1 = 2.72, class 1 gets e^0 + e^-1 = 1.37
    assert knn_accuracy(train, train_labels, test, test_labels, k=3, temperature=1.0) == 1.0
    # T = 100: class 0 gets e^0.01 = 1.01, class 1 gets e^0 + e^-0.01 = 1.99
    assert knn_accuracy(train, train_labels, test, test_labels, k=3, temperature=100.0) == 0.0
    assert knn_accuracy(train, train_labels, test, test_labels, k=1, temperature=100.0) == 1.0


def brute_force_knn(train, train_labels, test, test_labels, k, temperature) -> float:
    a, b = unit(train).double().numpy(), unit(test).double().numpy()
    correct = 0
    for q, truth in zip(b, test_labels.tolist()):
        sims = a @ q
        votes: dict[int, float] = {}
        for j in np.argsort(-sims)[:k]:
            votes[int(train_labels[j])] = votes.get(int(train_labels[j]), 0.0) + math.exp(sims[j] / temperature)
        best = max(votes.values())
        correct += min(c for c, v in votes.items() if v == best) == truth
    return correct / len(test)


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (20, 0.07), (7, 0.5), (500, 0.1)])
def test_knn_accuracy_equals_brute_force(k: int, temperature: float) -> None:
    x, labels = clustered([50, 70, 30, 60], 8, 2.5, seed=8, label_values=[4, -1, 9, 2])
    train, test = slice(0, 150), slice(150, None)
    expected = brute_force_knn(x[train], labels[train], x[test], labels[test], k, temperature)
    ours = knn_accuracy(x[train], labels[train], x[test], labels[test], k=k, temperature=temperature, chunk=13)
    assert ours == pytest.approx(expected, abs=1e-12)


def test_knn_accuracy_is_finite_at_tiny_temperature() -> None:
    x, labels = clustered([20, 20], 4, 0.1, seed=9)
    assert knn_accuracy(x[:30], labels[:30], x[30:], labels[30:], k=10, temperature=1e-3) == 1.0


def test_linear_probe_separates_separable_classes() -> None:
    x, labels = clustered([40, 40, 40], 10, 0.05, seed=10)
    assert linear_probe_accuracy(x[:90], labels[:90], x[90:], labels[90:]) == 1.0


def test_alignment_equals_brute_force() -> None:
    x, labels = clustered([1, 5, 17, 30], 6, 1.0, seed=11)
    x[3] = 0.0  # a zero embedding stays zero after normalising
    f = unit(x).double()
    total, pairs = 0.0, 0
    for i in range(len(f)):
        for j in range(len(f)):
            if i != j and labels[i] == labels[j]:
                total += float(((f[i] - f[j]) ** 2).sum())
                pairs += 1
    assert alignment(x, labels) == pytest.approx(total / pairs, rel=1e-6)
    assert math.isnan(alignment(x[:3], torch.arange(3)))


@pytest.mark.parametrize("spread", [0.01, 1.0, 10.0])
def test_uniformity_equals_brute_force(spread: float) -> None:
    x, _ = clustered([40, 25], 5, spread, seed=12)
    f = unit(x).double()
    sq = torch.cdist(f, f) ** 2
    off_diagonal = ~torch.eye(len(f), dtype=torch.bool)
    expected = float(torch.exp(-2 * sq[off_diagonal]).mean().log())
    assert uniformity(x, chunk=9) == pytest.approx(expected, abs=1e-5)


def test_uniformity_of_a_collapsed_embedding_is_zero() -> None:
    assert uniformity(torch.ones(10, 3)) == pytest.approx(0.0, abs=1e-6)


def test_regression_metrics_equal_sklearn_and_scipy() -> None:
    g = torch.Generator().manual_seed(13)
    x = torch.randn(300, 6, generator=g)
    y = x @ torch.randn(6, generator=g) + 0.3 * torch.randn(300, generator=g) + 5.0
    train, test = slice(0, 200), slice(200, None)
    # ordinary least squares with an intercept: the ridge probe's alpha is small enough to match it closely
    design = np.c_[x[train].double().numpy(), np.ones(200)]
    coef, *_ = np.linalg.lstsq(design, y[train].double().numpy(), rcond=None)
    predicted = np.c_[x[test].double().numpy(), np.ones(100)] @ coef
    truth = y[test].double().numpy()
    result = regression_metrics(x[train], y[train], x[test], y[test])
    assert result["mae"] == pytest.approx(np.abs(truth - predicted).mean(), rel=1e-4)
    assert result["rmse"] == pytest.approx(np.sqrt(((truth - predicted) ** 2).mean()), rel=1e-4)
    assert result["r2"] == pytest.approx(r2_score(truth, predicted), rel=1e-4)
    assert result["spearman"] == pytest.approx(spearmanr(truth, predicted).statistic, abs=1e-4)


def test_shot_regions_by_training_count_per_bin() -> None:
    # Training range [0, 20] in 20 one-wide bins: bin 0 holds 100 targets, bin 10 three, bin 19 one (the 20);
    # 104 in all, 5.2 a bin on average, so many-shot is above 4.30 and few-shot below 0.86 a bin.
    train = np.r_[np.zeros(100), np.full(3, 10.5), 20.0]
    test = np.array([0.5, 10.2, 5.5, 25.0, -3.0, 19.9])
    # 5.5 falls in an empty bin (few); 25 and -3 lie outside the range and count in the end bins
    assert shot_regions(train, test).tolist() == ["many", "medium", "few", "medium", "many", "medium"]


def test_shot_mae_is_each_regions_share_of_the_mae() -> None:
    g = torch.Generator().manual_seed(21)
    y = torch.cat([torch.rand(400, generator=g) * 4, torch.rand(60, generator=g) * 4 + 4, torch.rand(8, generator=g) * 2 + 8])
    x = torch.stack([y + 0.5 * torch.randn(len(y), generator=g), torch.randn(len(y), generator=g)], dim=1)
    order = torch.randperm(len(y), generator=g)
    train, test = order[:300], order[300:]
    result = regression_metrics(x[train], y[train], x[test], y[test])
    regions = shot_regions(y[train].double().numpy(), y[test].double().numpy())
    counts = {r: int((regions == r).sum()) for r in ("many", "medium", "few")}
    assert all(counts.values()), counts  # the set is built to have targets in all three
    weighted = sum(counts[r] * result[f"mae_{r}_shot"] for r in counts) / len(test)
    assert weighted == pytest.approx(result["mae"], rel=1e-9)
    assert result["mae_many_shot"] < result["mae_few_shot"]  # the probe fits where the training targets are


def test_a_shot_region_without_test_targets_is_absent() -> None:
    y = torch.cat([torch.linspace(0, 0.04, 50), torch.linspace(0, 1, 50)]).double()  # the test half in bin 0
    x = torch.stack([y, torch.ones_like(y)], dim=1)
    result = evaluate(["mae", "mae_many_shot", "mae_few_shot"], train=(x, y), test=(x[:50], y[:50]))
    assert list(result) == ["mae", "mae_many_shot"]


def test_supported_metrics_are_the_catalog_metrics() -> None:
    # Metrics a mixing method owns (its head's ECE, Metrix utilization) are computed by the method.
    assert set(SUPPORTED) == {n for n, e in catalog.METRICS.items() if not e.extra.get("from_methods")}


def test_evaluate_returns_exactly_the_requested_keys() -> None:
    x, labels = clustered([30, 30, 30], 8, 1.0, seed=14)
    train, test = (x[:45], labels[:45]), (x[45:], labels[45:])
    result = evaluate(["map_at_r", "recall_at_k", "knn_accuracy"], train=train, test=test, recall_k=(2, 5))
    assert list(result) == ["map_at_r", "recall_at_2", "recall_at_5", "knn_accuracy"]
    assert all(isinstance(v, float) for v in result.values())
    direct = retrieval_metrics(*test, ks=(2, 5))
    assert result["map_at_r"] == direct["map_at_r"] and result["recall_at_5"] == direct["recall_at_5"]
    assert result["knn_accuracy"] == knn_accuracy(*train, *test)


def test_evaluate_all_classification_and_regression_metrics() -> None:
    x, labels = clustered([30, 30, 30], 8, 1.0, seed=15)
    classification = [n for n, e in catalog.METRICS.items() if e.labels != "target" and not e.extra.get("from_methods")]
    result = evaluate(classification, train=(x[:45], labels[:45]), test=(x[45:], labels[45:]))
    assert list(result) == metric_keys(classification)
    targets = x[:, 0].double() * 2
    result = evaluate(["spearman", "r2"], train=(x[:45], targets[:45]), test=(x[45:], targets[45:]))
    assert list(result) == ["spearman", "r2"] and result["r2"] > 0.999


def test_evaluate_names_the_unknown_metric() -> None:
    x, labels = torch.randn(10, 3), torch.zeros(10, dtype=torch.int64)
    with pytest.raises(ValueError, match="'top5_accuracy'"):
        evaluate(["precision_at_1", "top5_accuracy"], train=(x, labels), test=(x, labels))


def test_retrieval_does_not_depend_on_thread_count() -> None:
    x, labels = RETRIEVAL_SETS["imbalanced_with_lone"]()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = retrieval_metrics(x, labels, chunk=33)
        torch.set_num_threads(3)
        three = retrieval_metrics(x, labels, chunk=33)
    finally:
        torch.set_num_threads(threads)
    assert one == three
