"""core.losses: the builder, the call forms, pair weights, and the losses PML does not have."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from embedmix.core.catalog import LOSSES
from embedmix.core.losses import LOSS_CLASSES, PairWeights, build
from embedmix.core.losses.pairs import euclidean_matrix
from embedmix.core.losses.proxies import class_cosines

ROOT = Path(__file__).resolve().parents[2]
DIM = 10

PAIR_LOSSES: list[tuple[str, dict]] = [
    ("contrastive", {}),
    ("triplet", {"triplets": "all"}),
    ("triplet", {"triplets": "batch_hard"}),
    ("triplet", {"triplets": "semi_hard", "margin": 0.3}),
    ("multi_similarity", {}),
    ("multi_similarity", {"miner": False}),
    ("supcon", {}),
    ("ntxent", {}),
    ("decoupled_softmax", {}),
]
PAIR_IDS = [f"{n}-{'-'.join(map(str, p.values()))}" if p else n for n, p in PAIR_LOSSES]
CLASS_WEIGHT_LOSSES = ["proxy_anchor", "normalized_softmax", "arcface"]


def data(seed: int = 0, size: int = 24, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, DIM, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (size,), generator=gen)
    y[0] = classes  # one anchor without a positive
    return x, y


def value_and_grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    value = fn(x)
    value.backward()
    return value.detach(), x.grad


def make(name: str, **params) -> torch.nn.Module:
    return build(name, num_classes=6, embedding_dim=DIM, **params).double()


# ---- builder ---------------------------------------------------------------------------------


def test_every_catalog_loss_builds_with_its_defaults() -> None:
    assert set(LOSS_CLASSES) == set(LOSSES)
    for name, entry in LOSSES.items():
        loss = build(name, num_classes=5, embedding_dim=DIM, num_samples=4)
        for param, default in entry.defaults().items():
            assert getattr(loss, param) == default, (name, param)


def test_params_override_defaults() -> None:
    loss = build("triplet", margin=0.4, triplets="semi_hard")
    assert (loss.margin, loss.triplets) == (0.4, "semi_hard")


def test_class_attributes_match_catalog() -> None:
    for name, entry in LOSSES.items():
        cls = LOSS_CLASSES[name]
        assert cls.labels == entry.labels, name
        # conr takes its two views stacked with their targets (embeddings, labels), not as (view_a, view_b)
        assert cls.two_view == (entry.views == 2 and entry.labels != "target"), name


@pytest.mark.parametrize(
    "call,culprit",
    [
        (lambda: build("no_such_loss"), "no_such_loss"),
        (lambda: build("supcon", temprature=0.1), "temprature"),
        (lambda: build("triplet", triplets="hardest"), "hardest"),
        (lambda: build("arcface"), "num_classes"),
        (lambda: build("proxy_anchor", num_classes=3), "embedding_dim"),
    ],
)
def test_bad_name_or_param_raises_value_error_naming_it(call, culprit: str) -> None:
    with pytest.raises(ValueError, match=culprit):
        call()


def test_class_weight_losses_own_their_parameters() -> None:
    for name in CLASS_WEIGHT_LOSSES:
        params = list(build(name, num_classes=7, embedding_dim=DIM).parameters())
        assert [p.shape for p in params] == [torch.Size([7, DIM])], name
    assert not list(build("supcon").parameters())


def test_core_does_not_import_pml() -> None:
    code = "import sys, embedmix.core.losses; sys.exit(any(m.startswith('pytorch_metric_learning') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# ---- call forms and pair weights ---------------------------------------------------------------


def test_pair_weights_from_labels_excludes_self_pairs_only_against_the_batch() -> None:
    y = torch.tensor([0, 0, 1])
    own = PairWeights.from_labels(y)
    assert own.pos.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert own.neg.tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 0]]
    other = PairWeights.from_labels(y, torch.tensor([0, 1]))
    assert other.pos.tolist() == [[1, 0], [1, 0], [0, 1]]
    joined = PairWeights.cat(own, other)
    assert joined.shape == (3, 5)


def test_pair_weights_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="PairWeights"):
        PairWeights(torch.zeros(2, 3), torch.zeros(3, 2))
    x, y = data()
    with pytest.raises(ValueError, match="weights are"):
        build("supcon")(x, weights=PairWeights.from_labels(y[:5]))


@pytest.mark.parametrize("name,params", PAIR_LOSSES, ids=PAIR_IDS)
def test_weights_form_equals_labels_form(name: str, params: dict) -> None:
    x, y = data(1)
    loss = make(name, **params)
    by_labels = value_and_grad(lambda e: loss(e, y), x)
    by_weights = value_and_grad(lambda e: loss(e, weights=PairWeights.from_labels(y)), x)
    assert torch.equal(by_labels[0], by_weights[0])
    assert torch.equal(by_labels[1], by_weights[1])


def test_two_view_form_equals_weights_form() -> None:
    x, _ = data(2)
    a, b = x[:12], x[12:]
    loss = make("ntxent")
    assert torch.equal(loss(a, b), loss(x, weights=PairWeights.from_labels(torch.arange(12).repeat(2))))


def soft_weights(y: torch.Tensor, seed: int) -> PairWeights:
    """Mixed-label weights: each reference j is lambda_j of its class and 1 - lambda_j of another."""
    gen = torch.Generator().manual_seed(seed)
    lam = torch.rand(len(y), generator=gen, dtype=torch.float64) * 0.5 + 0.5
    partner = (y + 1) % (int(y.max()) + 1)
    same = (y[:, None] == y[None, :]).double()
    same_partner = (y[:, None] == partner[None, :]).double()
    pos = lam[None, :] * same + (1 - lam[None, :]) * same_partner
    pos.fill_diagonal_(0.0)
    neg = 1.0 - pos
    neg.fill_diagonal_(0.0)
    return PairWeights(pos, neg)


@pytest.mark.parametrize("name,params", PAIR_LOSSES, ids=PAIR_IDS)
def test_soft_weights_change_the_value_and_keep_gradients_finite(name: str, params: dict) -> None:
    x, y = data(3)
    loss = make(name, **params)
    hard, _ = value_and_grad(lambda e: loss(e, y), x)
    soft, grad = value_and_grad(lambda e: loss(e, weights=soft_weights(y, 3)), x)
    assert torch.isfinite(soft) and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    assert not torch.isclose(soft, hard)


@pytest.mark.parametrize("name,params", PAIR_LOSSES, ids=PAIR_IDS)
def test_queue_negatives_enter_through_ref(name: str, params: dict) -> None:
    """Batch + queue as references: batch block from labels, queue block all negatives."""
    x, y = data(4)
    queue = torch.randn(40, DIM, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    weights = PairWeights.cat(
        PairWeights.from_labels(y),
        PairWeights(torch.zeros(len(y), len(queue), dtype=torch.float64), torch.ones(len(y), len(queue), dtype=torch.float64)),
    )
    loss = make(name, **params)
    batch_only, _ = value_and_grad(lambda e: loss(e, y), x)
    with_queue, grad = value_and_grad(lambda e: loss(e, weights=weights, ref=torch.cat([e, queue])), x)
    assert torch.isfinite(with_queue) and torch.isfinite(grad).all()
    if name != "triplet" or params["triplets"] != "batch_hard":  # batch-hard may pick the same negative
        assert not torch.isclose(with_queue, batch_only)


def test_ref_without_weights_and_views_for_label_losses_are_rejected() -> None:
    x, y = data()
    with pytest.raises(ValueError, match="weights"):
        build("supcon")(x, y, ref=x)
    with pytest.raises(ValueError, match="second view"):
        build("supcon")(x, x)


def triplet_brute_force(x: torch.Tensor, weights: PairWeights, margin: float, semi_hard: bool) -> torch.Tensor:
    """Every (a, p, n) with p != n as a (B, N, N) tensor, weight pos[a, p] * neg[a, n], weighted mean over non-zero."""
    e = F.normalize(x, dim=1)
    d = torch.cdist(e, e)
    d_ap, d_an = d[:, :, None], d[:, None, :]
    loss = F.relu(d_ap - d_an + margin)
    w = weights.pos[:, :, None] * weights.neg[:, None, :] * (1 - torch.eye(len(x), dtype=x.dtype))[None]
    if semi_hard:
        w = w * (d_an > d_ap)
    return (w * loss).sum() / (w * (loss > 0)).sum()


@pytest.mark.parametrize("triplets", ["all", "semi_hard"])
def test_triplet_soft_weights_equal_brute_force(triplets: str) -> None:
    """The sort-and-prefix-sum triplet loss is the plain sum over triplets, also with mixed references."""
    x, y = data(13, size=20)
    weights = soft_weights(y, 13)
    loss = make("triplet", triplets=triplets, margin=0.3)
    ours = value_and_grad(lambda e: loss(e, weights=weights), x)
    reference = value_and_grad(lambda e: triplet_brute_force(e, weights, 0.3, triplets == "semi_hard"), x)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def contrastive_reference(x: torch.Tensor, weights: PairWeights, ref: torch.Tensor, pos_margin: float,
                          neg_margin: float) -> torch.Tensor:
    """The contrastive formula left to autograd: two weighted means of relu hinges over their non-zero pairs."""
    dist = euclidean_matrix(F.normalize(x, dim=1), F.normalize(ref, dim=1))
    pos, neg = F.relu(dist - pos_margin), F.relu(neg_margin - dist)
    return ((weights.pos * pos).sum() / (weights.pos * (pos > 0)).sum()
            + (weights.neg * neg).sum() / (weights.neg * (neg > 0)).sum())


@pytest.mark.parametrize("margins", [(0.0, 1.0), (0.3, 0.9), (-0.1, 1.5)])
def test_contrastive_hand_written_backward_equals_autograd(margins: tuple[float, float]) -> None:
    """Mixed weights against the batch (self-pairs at distance 0, weight 0) and a queue, duplicates included."""
    x, y = data(14, size=20)
    x[1] = x[0]
    queue = torch.randn(15, DIM, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    weights = PairWeights.cat(soft_weights(y, 14), PairWeights(torch.full((20, 15), 0.2, dtype=torch.float64),
                                                               torch.full((20, 15), 0.8, dtype=torch.float64)))
    loss = make("contrastive", pos_margin=margins[0], neg_margin=margins[1])
    ours = value_and_grad(lambda e: loss(e, weights=weights, ref=torch.cat([e, queue])), x)
    reference = value_and_grad(lambda e: contrastive_reference(e, weights, torch.cat([e, queue]), *margins), x)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-15)


def test_contrastive_refuses_weights_that_need_a_gradient() -> None:
    x, y = data()
    weights = PairWeights.from_labels(y)
    with pytest.raises(ValueError, match="no gradient"):
        make("contrastive")(x, weights=PairWeights(weights.pos.double().requires_grad_(True), weights.neg.double()))


def test_triplet_all_is_not_cubic() -> None:
    """All triplets of 2048 rows (2.7e8 of them) in O(B^2) memory: PML would enumerate them."""
    x = torch.randn(2048, 32, requires_grad=True)
    y = torch.randint(0, 30, (2048,))
    build("triplet")(x, y).backward()
    assert torch.isfinite(x.grad).all()


def test_supervised_ntxent_is_quadratic_at_4096() -> None:
    """PML's NTXentLoss with labels needs (positive pairs x negative pairs): ~10^11 entries here."""
    x = torch.randn(4096, 64, requires_grad=True)
    y = torch.randint(0, 40, (4096,))
    value = build("ntxent")(x, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


# ---- class-weight losses with soft targets -----------------------------------------------------


@pytest.mark.parametrize("name", CLASS_WEIGHT_LOSSES)
def test_one_hot_soft_targets_equal_hard_labels(name: str) -> None:
    x, y = data(6)
    loss = make(name)
    hard = value_and_grad(lambda e: loss(e, y), x)
    soft = value_and_grad(lambda e: loss(e, F.one_hot(y, 6).double()), x)
    torch.testing.assert_close(hard, soft, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["normalized_softmax", "arcface"])
def test_mixed_targets_are_the_mixture_of_the_two_losses(name: str) -> None:
    x, y = data(7)
    partner = torch.roll(y, 1)
    lam = 0.3
    loss = make(name)
    targets = lam * F.one_hot(y, 6).double() + (1 - lam) * F.one_hot(partner, 6).double()
    mixed, grad = value_and_grad(lambda e: loss(e, targets), x)
    torch.testing.assert_close(mixed, lam * loss(x, y) + (1 - lam) * loss(x, partner))
    assert torch.isfinite(grad).all()


def test_proxy_anchor_mixed_targets_change_value_and_keep_gradients_finite() -> None:
    x, y = data(8)
    loss = make("proxy_anchor")
    targets = 0.6 * F.one_hot(y, 6).double() + 0.4 * F.one_hot(torch.roll(y, 1), 6).double()
    mixed, grad = value_and_grad(lambda e: loss(e, targets), x)
    assert torch.isfinite(grad).all() and not torch.isclose(mixed, loss(x, y))


def test_arcface_is_stable_when_all_competitors_underflow() -> None:
    """Two classes, an embedding on its class vector: e^{-2 s} competitors must not give NaN or inf."""
    loss = build("arcface", num_classes=2, embedding_dim=2)
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    value = loss(x, torch.tensor([0, 1]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("num_classes", [6, 40])
def test_class_cosines_equal_normalized_product(num_classes: int) -> None:
    """Norms divided out after the product (C <= d) or before it (C > d): the scaled cosines and their gradients."""
    x, _ = data(9)
    x[2] = 0.0  # a zero embedding: cosines 0, finite gradient
    weight = torch.randn(num_classes, DIM, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def both(fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e, w = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        cos = fn(e, w)
        (cos * torch.linspace(-1, 1, cos.numel(), dtype=cos.dtype).reshape(cos.shape)).sum().backward()
        return cos.detach(), e.grad, w.grad

    ours = both(lambda e, w: class_cosines(e, w, 20.0))
    reference = both(lambda e, w: 20.0 * F.normalize(e, dim=1) @ F.normalize(w, dim=1).T)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-14)
    assert torch.equal(ours[0][2], torch.zeros(num_classes, dtype=torch.float64)) and torch.isfinite(ours[1]).all()


def test_soft_target_shape_is_checked() -> None:
    x, _ = data()
    with pytest.raises(ValueError, match="soft targets"):
        make("arcface")(x, torch.rand(len(x), 3, dtype=torch.float64))


# ---- losses without a PML twin -----------------------------------------------------------------


def barlow_twins_reference(z_a: torch.Tensor, z_b: torch.Tensor, lambda_offdiag: float) -> torch.Tensor:
    """facebookresearch/barlowtwins, written out: BatchNorm1d(affine=False), c = bn(a).T bn(b) / B."""
    bn = torch.nn.BatchNorm1d(z_a.shape[1], affine=False).double()
    c = bn(z_a).T @ bn(z_b) / z_a.shape[0]
    on_diag = sum((1 - c[i, i]) ** 2 for i in range(c.shape[0]))
    off_diag = sum(c[i, j] ** 2 for i in range(c.shape[0]) for j in range(c.shape[1]) if i != j)
    return on_diag + lambda_offdiag * off_diag


@pytest.mark.parametrize("lambda_offdiag", [0.0051, 0.5])
def test_barlow_twins_equals_reference(lambda_offdiag: float) -> None:
    gen = torch.Generator().manual_seed(9)
    a = torch.randn(32, 8, generator=gen, dtype=torch.float64)
    b = a + 0.3 * torch.randn(32, 8, generator=gen, dtype=torch.float64)
    loss = build("barlow_twins", lambda_offdiag=lambda_offdiag)
    ours = value_and_grad(lambda e: loss(e, b), a)
    reference = value_and_grad(lambda e: barlow_twins_reference(e, b, lambda_offdiag), a)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-10)


def test_barlow_twins_rejects_labels() -> None:
    x, y = data()
    with pytest.raises(ValueError, match="two float views"):
        build("barlow_twins")(x, y)


def decoupled_reference(x: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """DEXML's formula with loops: other positives are out of each positive's denominator."""
    s = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T / temperature
    per_anchor = []
    for i in range(len(y)):
        positives = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        negatives = [n for n in range(len(y)) if y[n] != y[i]]
        if not positives:
            continue
        terms = []
        for p in positives:
            denominator = torch.exp(s[i, p]) + sum(torch.exp(s[i, n]) for n in negatives)
            terms.append(-torch.log(torch.exp(s[i, p]) / denominator))
        per_anchor.append(sum(terms) / len(positives))
    return sum(per_anchor) / len(per_anchor)


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_decoupled_softmax_equals_loop_reference(temperature: float) -> None:
    x, y = data(10, size=16)
    loss = build("decoupled_softmax", temperature=temperature)
    ours = value_and_grad(lambda e: loss(e, y), x)
    reference = value_and_grad(lambda e: decoupled_reference(e, y, temperature), x)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-10)


def test_decoupled_softmax_equals_infonce_with_one_positive_per_query() -> None:
    x, _ = data(11, size=20)
    y = torch.arange(10).repeat(2)
    decoupled = value_and_grad(lambda e: build("decoupled_softmax", temperature=0.1)(e, y), x)
    supcon = value_and_grad(lambda e: build("supcon", temperature=0.1)(e, y), x)
    infonce = value_and_grad(lambda e: build("ntxent", temperature=0.1)(e[:10], e[10:]), x)
    torch.testing.assert_close(decoupled, supcon, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(decoupled, infonce, rtol=1e-10, atol=1e-12)


def test_decoupled_softmax_differs_from_supcon_with_several_positives() -> None:
    x, y = data(12)
    assert not torch.isclose(build("decoupled_softmax", temperature=0.1)(x, y), build("supcon", temperature=0.1)(x, y))
