"""Our losses equal pytorch-metric-learning's on hard labels: values and gradients, float64, rtol 1e-5.

PML is the oracle here only; `core` never imports it. Where our loss selects
pairs itself (batch-hard / semi-hard triplets, the multi-similarity miner) the
PML side is the loss fed by the matching PML miner.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from pytorch_metric_learning import losses, miners

from embedmix.core.losses import PairWeights, build

DIM = 12
RTOL = 1e-5
ATOL = 1e-10


def batch(kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and labels; every kind has some edge PML handles in a particular way."""
    gen = torch.Generator().manual_seed(seed)
    size = 30
    x = torch.randn(size, DIM, generator=gen, dtype=torch.float64)
    if kind == "lonely":  # anchor 0 has no positive, a few classes
        y = torch.randint(0, 4, (size,), generator=gen)
        y[0] = 99
    elif kind == "duplicates":  # zero distances between distinct rows
        y = torch.randint(0, 5, (size,), generator=gen)
        x[1], y[1] = x[0], y[0]
        x[3] = x[2]
    elif kind == "no_positive":
        y = torch.arange(size)
    elif kind == "one_class":
        y = torch.zeros(size, dtype=torch.long)
    else:
        raise ValueError(kind)
    return x, y


KINDS = [("lonely", 0), ("lonely", 1), ("duplicates", 2), ("no_positive", 3), ("one_class", 4)]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def with_miner(loss: torch.nn.Module, miner: torch.nn.Module) -> LossFn:
    return lambda x, y: loss(x, y, miner(x, y))


PAIR_CASES: dict[str, tuple[Callable[[], LossFn], Callable[[], LossFn]]] = {
    "contrastive": (lambda: build("contrastive"), lambda: losses.ContrastiveLoss()),
    "contrastive_margins": (
        lambda: build("contrastive", pos_margin=0.3, neg_margin=0.9),
        lambda: losses.ContrastiveLoss(pos_margin=0.3, neg_margin=0.9),
    ),
    "triplet_all": (lambda: build("triplet", margin=0.2), lambda: losses.TripletMarginLoss(margin=0.2)),
    "triplet_all_default": (lambda: build("triplet"), lambda: losses.TripletMarginLoss()),
    "triplet_batch_hard": (
        lambda: build("triplet", triplets="batch_hard", margin=0.2),
        lambda: with_miner(losses.TripletMarginLoss(margin=0.2), miners.BatchHardMiner()),
    ),
    "triplet_semi_hard": (
        lambda: build("triplet", triplets="semi_hard", margin=0.3),
        lambda: with_miner(losses.TripletMarginLoss(margin=0.3), miners.TripletMarginMiner(0.3, type_of_triplets="semihard")),
    ),
    "multi_similarity": (
        lambda: build("multi_similarity"),
        lambda: with_miner(losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()),
    ),
    "multi_similarity_params": (
        lambda: build("multi_similarity", alpha=3.0, beta=20.0, base=0.3, miner_epsilon=0.3),
        lambda: with_miner(losses.MultiSimilarityLoss(3.0, 20.0, 0.3), miners.MultiSimilarityMiner(0.3)),
    ),
    "multi_similarity_no_miner": (lambda: build("multi_similarity", miner=False), lambda: losses.MultiSimilarityLoss()),
    "supcon": (lambda: build("supcon"), lambda: losses.SupConLoss()),
    "supcon_t": (lambda: build("supcon", temperature=0.5), lambda: losses.SupConLoss(temperature=0.5)),
    "ntxent_labels": (lambda: build("ntxent"), lambda: losses.NTXentLoss()),
    "ntxent_labels_t": (lambda: build("ntxent", temperature=0.3), lambda: losses.NTXentLoss(temperature=0.3)),
}


def values_and_grads(fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    value = fn(x, y)
    value.backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("kind,seed", KINDS, ids=[f"{k}{s}" for k, s in KINDS])
@pytest.mark.parametrize("case", list(PAIR_CASES))
def test_pair_losses_equal_pml(case: str, kind: str, seed: int) -> None:
    ours, pml = (make() for make in PAIR_CASES[case])
    x, y = batch(kind, seed)
    ours_value, ours_grad = values_and_grads(ours, x, y)
    pml_value, pml_grad = values_and_grads(pml, x, y)
    torch.testing.assert_close(ours_value, pml_value, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours_grad, pml_grad, rtol=RTOL, atol=ATOL)
    assert torch.isfinite(ours_grad).all()


@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_ntxent_two_views_equal_pml_with_repeated_labels(temperature: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    pairs = 16
    a = torch.randn(pairs, DIM, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(pairs, DIM, generator=gen, dtype=torch.float64, requires_grad=True)
    ours = build("ntxent", temperature=temperature)(a, b)
    ours.backward()
    ours_grads = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    pml = losses.NTXentLoss(temperature=temperature)(torch.cat([a, b]), torch.arange(pairs).repeat(2))
    pml.backward()
    torch.testing.assert_close(ours, pml, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours_grads[0], a.grad, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours_grads[1], b.grad, rtol=RTOL, atol=ATOL)


def pml_proxy_twin(name: str, ours: torch.nn.Module, num_classes: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The PML module with our class weights copied in, and its weight as (C, d) (PML's W is (d, C))."""
    if name == "proxy_anchor":
        pml = losses.ProxyAnchorLoss(num_classes, DIM, margin=ours.margin, alpha=ours.alpha).double()
        pml.proxies.data.copy_(ours.weight.data)
        return pml, pml.proxies
    if name == "normalized_softmax":
        pml = losses.NormalizedSoftmaxLoss(num_classes, DIM, temperature=ours.temperature).double()
    else:
        pml = losses.ArcFaceLoss(num_classes, DIM, margin=ours.margin, scale=ours.scale).double()
    pml.W.data.copy_(ours.weight.data.T)
    return pml, pml.W


PROXY_CASES = [
    ("proxy_anchor", {}),
    ("proxy_anchor", {"margin": 0.3, "alpha": 8.0}),
    ("normalized_softmax", {}),
    ("normalized_softmax", {"temperature": 0.5}),
    ("arcface", {}),
    ("arcface", {"margin": 10.0, "scale": 16.0}),
]


@pytest.mark.parametrize("kind,seed", [("lonely", 5), ("duplicates", 6), ("one_class", 7)])
@pytest.mark.parametrize("name,params", PROXY_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PROXY_CASES)])
def test_class_weight_losses_equal_pml(name: str, params: dict, kind: str, seed: int) -> None:
    x, y = batch(kind, seed)
    y = y % 7  # class ids must index the weights; class 6 may stay empty
    torch.manual_seed(seed)
    ours = build(name, num_classes=7, embedding_dim=DIM, **params).double()
    pml, pml_weight = pml_proxy_twin(name, ours, 7)
    ours_value, ours_grad = values_and_grads(ours, x, y)
    pml_value, pml_grad = values_and_grads(pml, x, y)
    torch.testing.assert_close(ours_value, pml_value, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours_grad, pml_grad, rtol=RTOL, atol=ATOL)
    weight_grad = pml_weight.grad if name == "proxy_anchor" else pml_weight.grad.T
    torch.testing.assert_close(ours.weight.grad, weight_grad, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "name,params,pml_fn",
    [
        ("contrastive", {}, lambda: losses.ContrastiveLoss()),
        ("triplet", {"margin": 0.2}, lambda: losses.TripletMarginLoss(margin=0.2)),
        ("multi_similarity", {"miner": False}, lambda: losses.MultiSimilarityLoss()),
        ("supcon", {}, lambda: losses.SupConLoss()),
        ("ntxent", {}, lambda: losses.NTXentLoss()),
    ],
)
def test_ref_embeddings_equal_pml(name: str, params: dict, pml_fn: Callable) -> None:
    """Weights against separate references equal PML's ref_emb / ref_labels (no self-pairs there)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(12, DIM, generator=gen, dtype=torch.float64, requires_grad=True)
    q = torch.randn(20, DIM, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (12,), generator=gen)
    qy = torch.randint(0, 3, (20,), generator=gen)
    ours = build(name, **params)(x, weights=PairWeights.from_labels(y, qy), ref=q)
    ours.backward()
    ours_grads = x.grad.clone(), q.grad.clone()
    x.grad = q.grad = None
    pml = pml_fn()(x, y, ref_emb=q, ref_labels=qy)
    pml.backward()
    torch.testing.assert_close(ours, pml, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours_grads[0], x.grad, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ours_grads[1], q.grad, rtol=RTOL, atol=ATOL)
