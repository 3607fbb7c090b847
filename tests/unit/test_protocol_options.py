"""Options that run the seed methods under their papers' protocols (issue 14, part 1).

* Metrix `mix: "alternate"`: a fair coin per step between pos-neg and anchor-neg
  mixing, as billpsomas/metrix train.py (`random.randint(0, 1)` per step);
* SupReMix `mixed_pairs: false` (the un-mixed supervised contrastive regression
  baseline) and `pos_pairs: "all"` (every (j, k) mix-pos pair, as the authors'
  `mixing_func` enumerates them);
* MixOE `outliers: "holdout"` with `outlier_classes`: real outliers from classes
  held out of the in-distribution data.

References are written here from the papers and the official code, in float64,
on the same draws as the engine (value and gradient for the losses).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedmix.core import losses
from embedmix.core.data import dataset_from_arrays, load_dataset
from embedmix.core.errors import DataError
from embedmix.core.mixup import Batch, build
from embedmix.core.mixup.classification import ood_scores
from embedmix.core.mixup.mixing import negative_partners, randint, sample_beta, sample_lambda_float
from embedmix.core.mixup.supremix import all_positives, draw_mixtures, supremix_loss
from embedmix.core.models import build_net
from embedmix.core.spec import SpecError, validate_spec
from embedmix.core.train import train, trainer_for


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_spec(dataset: dict, objective: dict, mixup: dict, metrics: list[str], **train_over):
    return validate_spec({
        "name": "t", "dataset": dataset,
        "model": {"encoder": "mlp", "embedding_dim": 8, "width": 16},
        "objective": objective, "mixup": mixup,
        "train": {"epochs": 1, "batch_size": 40, "lr": 0.01, "seed": 3, **train_over},
        "eval": {"metrics": metrics, "every_epochs": 0},
    })


def parts(spec):
    """(net, base loss, method, data) as the trainer builds them, without training."""
    data = load_dataset(spec)
    torch.manual_seed(spec.train.seed)
    net = build_net(spec.model, data.x_train)
    loss = losses.build(spec.objective.loss, num_classes=data.num_classes, embedding_dim=spec.model.embedding_dim,
                        **spec.objective.params)
    return net, loss, build(spec, loss, num_classes=data.num_classes, embedding_dim=spec.model.embedding_dim), data


def batch_of(x, y, seed: int) -> Batch:
    return Batch(x=x, y=y, gen=torch.Generator().manual_seed(seed), view=lambda: x, step=0, total_steps=1)


def errors_of(body_over: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        body_over()
    return {e["field"]: e["message"] for e in info.value.errors}


# ------------------------------------------------------------------ Metrix: alternate

BLOBS = {"name": "blobs", "size": 200, "params": {"num_classes": 4, "num_features": 6}}


def metrix_spec(mix: str, **objective):
    return make_spec(BLOBS, {"loss": "contrastive", "params": objective},
                     {"method": "metrix", "alpha": 2.0, "weight": 0.4, "level": "embedding", "params": {"mix": mix}},
                     ["precision_at_1"])


def metrix_mixed_reference(z: torch.Tensor, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, lam: float, kind: str,
                           pos_margin: float, neg_margin: float) -> torch.Tensor:
    """Metrix's contrastive mixed term at the embedding level, from the paper and train.py's two branches.

    m_u = lam z_u + (1 - lam) z_v; anchor-neg pairs (u, m_u), pos-neg pairs (a, m_u) for the other
    members a of u's class. lam * mean over non-zero relu(d - m_pos) + (1 - lam) * mean over non-zero
    relu(m_neg - d), d the Euclidean distance of the unit vectors (PML's AvgNonZeroReducer per term).
    """
    unit = F.normalize(z, dim=1)
    pos_terms, neg_terms = [], []
    for col, (a_u, a_v) in enumerate(zip(u.tolist(), v.tolist())):
        m = F.normalize(lam * z[a_u] + (1 - lam) * z[a_v], dim=0)
        anchors = [a_u] if kind == "anchor_neg" else [a for a in range(len(y)) if y[a] == y[a_u] and a != a_u]
        for a in anchors:
            d = (unit[a] - m).norm()
            pos_terms.append(F.relu(d - pos_margin))
            neg_terms.append(F.relu(neg_margin - d))
    pos, neg = torch.stack(pos_terms), torch.stack(neg_terms)
    mean_nz = (lambda t: t[t > 0].mean() if (t > 0).any() else t.sum() * 0)
    return lam * mean_nz(pos) + (1 - lam) * mean_nz(neg)


@pytest.mark.parametrize("kind", ["pos_neg", "anchor_neg"])
def test_metrix_mixed_term_of_each_kind_equals_the_reference_in_float64(kind):
    spec = metrix_spec("alternate", pos_margin=0.2, neg_margin=1.2)
    _, _, mixer, data = parts(spec)
    y = data.y_train[:16]
    u, v = negative_partners(y, torch.Generator().manual_seed(1))
    z0 = torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lam = 0.35
    z = z0.clone().requires_grad_()
    got = mixer.mixed_term(z, y, lam * z[u] + (1 - lam) * z[v], u, v, torch.tensor(lam, dtype=torch.float64), kind)
    zr = z0.clone().requires_grad_()
    want = metrix_mixed_reference(zr, y, u, v, lam, kind, 0.2, 1.2)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    g_got, = torch.autograd.grad(got, z)
    g_want, = torch.autograd.grad(want, zr)
    assert torch.allclose(g_got, g_want, rtol=1e-10, atol=1e-13)


def test_metrix_alternate_flips_a_coin_from_the_step_generator_before_lambda():
    """Each step is exactly the fixed-kind step of the drawn kind, on the draws that follow the coin."""
    net, loss, mixer, data = parts(metrix_spec("alternate"))
    x, y = net.encoder.preprocess(data.x_train[:40]), data.y_train[:40]
    kinds = set()
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        kind = ("pos_neg", "anchor_neg")[randint(2, gen)]
        lam = sample_beta(2.0, 2.0, (), gen)
        u, v = negative_partners(y, gen)
        clean, mixed = mixer.loss_parts(net, x, y, lam, u, v, kind)
        assert torch.equal(mixer.batch_loss(net, batch_of(x, y, seed)), clean + 0.4 * mixed)
        kinds.add(kind)
    assert kinds == {"pos_neg", "anchor_neg"}
    with pytest.raises(ValueError, match="alternate"):
        mixer.active_pairs(y, u)  # an alternating run must say which kind it replays


def test_metrix_alternate_is_fifty_fifty_and_fixed_kinds_draw_no_coin():
    _, _, mixer, _ = parts(metrix_spec("alternate"))
    gen = torch.Generator().manual_seed(0)
    draws = [mixer.step_kind(gen) for _ in range(400)]
    # binomial(400, 0.5): sd 10; 5 sd either side
    assert 150 <= draws.count("pos_neg") <= 250
    assert draws != sorted(draws)  # interleaved, not one then the other
    _, _, fixed, _ = parts(metrix_spec("pos_neg"))
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert fixed.step_kind(gen) == "pos_neg" and torch.equal(gen.get_state(), state)


def test_metrix_mix_refuses_an_unknown_kind_naming_the_field():
    errors = errors_of(lambda: metrix_spec("random"))
    assert "alternate" in errors["mixup.params.mix"]


# ------------------------------------------------------------------ SupReMix: mixed_pairs, pos_pairs

DIABETES = {"name": "diabetes"}


def supremix_spec(**params):
    return make_spec(DIABETES, {"loss": "supcon", "views": 2},
                     {"method": "supremix", "params": {"window": 20, **params}}, ["rmse"])


def supcr_reference(f: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """The un-mixed baseline, from the paper's Eq. (SupCon with distance magnifying) and the authors'
    SupConLoss_v2(use_weight=True, distance='L1_inv', base_temperature=temperature), one anchor at a time:

        L_i = log sum_{a != i} (|y_i - y_a| + 1) exp(f_i . f_a / tau) - mean_{p != i, y_p = y_i} f_i . f_p / tau,

    averaged over the anchors (each has its other view as a positive).
    """
    total = []
    for i in range(len(f)):
        others = [a for a in range(len(f)) if a != i]
        s = torch.stack([f[i] @ f[a] for a in others]) / tau
        w = torch.stack([(y[i] - y[a]).abs() + 1 for a in others])
        positives = torch.stack([s[n] for n, a in enumerate(others) if y[a] == y[i]])
        total.append(torch.log((w * s.exp()).sum()) - positives.mean())
    return torch.stack(total).mean()


def unit_rows(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_supremix_without_mixed_pairs_is_the_supcr_reference_and_draws_nothing():
    _, _, off, _ = parts(supremix_spec(mixed_pairs=False))
    _, _, on, _ = parts(supremix_spec())
    y = torch.tensor([3.0, 10.0, 12.0, 12.0, 25.0, 18.0, 7.0]).repeat(2)
    f0 = unit_rows(14, 0)
    leaf = f0.clone().requires_grad_()
    gen = torch.Generator().manual_seed(4)
    state = gen.get_state()
    got = off.loss_of(F.normalize(leaf, dim=1), y, gen)
    assert torch.equal(gen.get_state(), state)  # no mixing draws
    ref_leaf = f0.clone().requires_grad_()
    want = supcr_reference(F.normalize(ref_leaf, dim=1), y.double(), 0.3)
    assert torch.allclose(got, want, rtol=1e-12)
    g_got, = torch.autograd.grad(got, leaf)
    g_want, = torch.autograd.grad(want, ref_leaf)
    assert torch.allclose(g_got, g_want, rtol=1e-10, atol=1e-13)
    mixed = on.loss_of(F.normalize(f0, dim=1), y, torch.Generator().manual_seed(4))
    assert abs(mixed.item() - want.item()) > 1e-3  # the mixed pairs change the loss


def test_all_pos_pairs_are_every_j_below_and_k_above_within_the_window():
    y = torch.tensor([1.0, 2.0, 4.0, 4.0, 6.0, 9.0, 3.0, 5.0]).double()
    window = 3.0
    dy = y[None, :] - y[:, None]
    triples = all_positives(y, (dy < 0) & (dy > -window), (dy > 0) & (dy < window))
    got = set(zip(triples.anchor.tolist(), triples.j.tolist(), triples.k.tolist()))
    want = {(i, j, k) for i in range(8) for j in range(8) for k in range(8)
            if y[i] - window < y[j] < y[i] < y[k] < y[i] + window}
    assert got == want and len(triples.anchor) == len(want)
    assert torch.equal(triples.anchor, triples.anchor.sort().values)
    labels = triples.coef * y[triples.j] + (1 - triples.coef) * y[triples.k]
    assert torch.allclose(labels, y[triples.anchor], rtol=0, atol=1e-12)  # every mix-pos has its anchor's target


def all_pairs_reference(f: torch.Tensor, y: torch.Tensor, neg_coef: torch.Tensor, window: float, tau: float) -> torch.Tensor:
    """SupReMix with every (j, k) mix-pos, one anchor at a time, mixtures materialised and detached.

    Denominator: real samples a != i with weight |y_i - y_a| + 1, mix-negs a f_i + (1 - a) f_k (t_k != t_i,
    a = neg_coef[i, k]) with weight |y_i - (a y_i + (1 - a) y_k)| + 1, mix-poss b f_j + (1 - b) f_k for
    y_i - w < y_j < y_i < y_k < y_i + w, b = (y_k - y_i) / (y_k - y_j), weight 1. Positives: real same-target
    samples and the mix-poss. One shift per row: the paper's formula.
    """
    g = f.detach()
    total = []
    for i in range(len(f)):
        logits, weights, positive = [], [], []
        for a in range(len(f)):
            if a != i:
                logits.append(f[i] @ f[a] / tau)
                weights.append((y[i] - y[a]).abs() + 1)
                positive.append(bool(y[a] == y[i]))
        for k in range(len(f)):
            if y[k] != y[i]:
                a = neg_coef[i, k]
                logits.append(f[i] @ (a * g[i] + (1 - a) * g[k]) / tau)
                weights.append((y[i] - (a * y[i] + (1 - a) * y[k])).abs() + 1)
                positive.append(False)
        for j in range(len(f)):
            for k in range(len(f)):
                if y[i] - window < y[j] < y[i] < y[k] < y[i] + window:
                    b = (y[k] - y[i]) / (y[k] - y[j])
                    logits.append(f[i] @ (b * g[j] + (1 - b) * g[k]) / tau)
                    weights.append(torch.ones((), dtype=f.dtype))
                    positive.append(True)
        s, w = torch.stack(logits), torch.stack(weights)
        total.append(torch.log((w * s.exp()).sum()) - s[torch.tensor(positive)].mean())
    return torch.stack(total).mean()


def test_supremix_all_pos_pairs_equals_the_reference_value_and_gradient():
    _, _, method, _ = parts(supremix_spec(pos_pairs="all", window=4))
    y = torch.tensor([1.0, 2.0, 3.0, 3.0, 5.0, 6.0]).repeat(2)
    f0 = unit_rows(12, 1)
    mixtures = draw_mixtures(y, 4.0, 2.0, 8.0, torch.Generator().manual_seed(6), "all")
    assert len(mixtures.all_pos.anchor) > len(y)  # more than one k per (i, j) somewhere
    leaf = f0.clone().requires_grad_()
    got = supremix_loss(F.normalize(leaf, dim=1), y, mixtures, 0.3)
    ref_leaf = f0.clone().requires_grad_()
    want = all_pairs_reference(F.normalize(ref_leaf, dim=1), y.double(), mixtures.neg_coef, 4.0, 0.3)
    assert torch.allclose(got, want, rtol=1e-12)
    g_got, = torch.autograd.grad(got, leaf)
    g_want, = torch.autograd.grad(want, ref_leaf)
    assert torch.allclose(g_got, g_want, rtol=1e-10, atol=1e-13)
    # the method draws the same mixtures from the same generator state
    assert torch.allclose(method.loss_of(F.normalize(f0, dim=1), y, torch.Generator().manual_seed(6)), want, rtol=1e-12)


def test_supremix_pos_pairs_without_mixed_pairs_is_refused_naming_the_field():
    errors = errors_of(lambda: supremix_spec(mixed_pairs=False, pos_pairs="all"))
    assert "mixed_pairs false" in errors["mixup.params.pos_pairs"]
    assert "mixup.params.pos_pairs" in errors_of(lambda: supremix_spec(pos_pairs="every"))


def test_supremix_both_options_train_end_to_end():
    for params in ({"mixed_pairs": False}, {"pos_pairs": "all"}):
        spec = supremix_spec(**params)
        result = train(spec, load_dataset(spec))
        assert result.step > 0 and all(v == v for v in result.metrics.values()), params


# ------------------------------------------------------------------ MixOE: holdout

SIX = {"name": "blobs", "size": 300, "params": {"num_classes": 6, "num_features": 6, "cluster_std": 2.0}}


def mixoe_spec(outliers="holdout", outlier_classes=2, weight=5.0, dataset=None, **train_over):
    params = {"outliers": outliers, **({"outlier_classes": outlier_classes} if outlier_classes is not None else {})}
    return make_spec(dataset or SIX, {"loss": "cross_entropy"}, {"method": "mixoe", "weight": weight, "params": params},
                     ["accuracy", "auroc", "tnr_at_95_tpr"], **train_over)


def test_holdout_split_keeps_the_outlier_classes_out_of_training_and_the_id_test_set():
    held = load_dataset(mixoe_spec())
    plain = load_dataset(mixoe_spec("noise", None))  # the same split, nothing held out
    keep_train, keep_test = plain.y_train < 4, plain.y_test < 4
    assert set(plain.y_train.tolist()) == set(range(6))
    assert torch.equal(held.x_train, plain.x_train[keep_train]) and torch.equal(held.y_train, plain.y_train[keep_train])
    assert torch.equal(held.x_test, plain.x_test[keep_test]) and torch.equal(held.y_test, plain.y_test[keep_test])
    assert torch.equal(held.outliers.x_train, plain.x_train[~keep_train])  # the pool: their training rows
    assert torch.equal(held.outliers.x_test, plain.x_test[~keep_test])  # the OOD test set: exactly their test rows
    assert held.outliers.classes == [4, 5] and held.num_classes == 4  # ids kept, head sized to the 4 ID classes
    card = held.describe()
    assert card["split"]["outlier_classes"] == [4, 5] and card["num_classes"] == 4
    assert card["split"]["outlier_test_rows"] == int((~keep_test).sum())


def test_holdout_takes_the_largest_labels_and_names_string_classes():
    rng = np.random.default_rng(0)
    raw = {"x": rng.normal(size=(90, 4)), "y": np.array(["cat", "dog", "emu"] * 30)}
    data = dataset_from_arrays(raw, mixoe_spec(outlier_classes=1, dataset=SIX), "pets.npz")
    assert data.split["outlier_class_names"] == ["emu"] and data.num_classes == 2
    assert set(data.y_train.tolist()) == {0, 1}


def test_holdout_heads_have_the_in_distribution_classes_only():
    trainer = trainer_for(mixoe_spec(), load_dataset(mixoe_spec()))
    assert trainer.method.num_classes == 4
    assert trainer.loss.logits(torch.zeros(1, 8)).shape == (1, 4)


def hand_auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """P(score_in > score_out) + P(tie) / 2 over all pairs (Mann-Whitney), in float64."""
    a, b = inside.double()[:, None], outside.double()[None, :]
    return float(((a > b).double() + 0.5 * (a == b).double()).mean())


@pytest.mark.parametrize("weight", [5.0, 0.0])
def test_holdout_ood_metrics_are_computed_on_the_held_out_test_rows(weight):
    """Weight 0 is the baseline of the same protocol: no outliers mixed, scored on the same OOD rows."""
    spec = mixoe_spec(weight=weight)
    data = load_dataset(spec)
    trainer = trainer_for(spec, data)
    encoder, cpu = trainer.net.encoder, torch.device("cpu")
    values = trainer.method.extra_metrics(encoder, data, cpu)
    trainer.net.eval()
    with torch.no_grad():
        net = trainer.net
        conf = lambda x: F.softmax(trainer.loss.logits(net(net.encoder.preprocess(x))), dim=1).max(dim=1).values  # noqa: E731
        inside, outside = conf(data.x_test), conf(data.outliers.x_test)
    assert values["auroc"] == pytest.approx(hand_auroc(inside, outside), abs=1e-6)
    assert values["tnr_at_95_tpr"] == pytest.approx(ood_scores(inside, outside)["tnr_at_95_tpr"], abs=1e-6)
    assert len(outside) == len(data.outliers.x_test) > 0


def test_holdout_training_mixes_real_outliers_drawn_from_the_pool():
    spec = mixoe_spec()
    data = load_dataset(spec)
    trainer = trainer_for(spec, data)
    net, head, method = trainer.net, trainer.loss, trainer.method
    x, y = net.encoder.preprocess(data.x_train[:40]), data.y_train[:40]
    gen = torch.Generator().manual_seed(9)
    lam = sample_lambda_float(1.0, gen)
    idx = torch.randint(len(data.outliers.x_train), (40,), generator=gen)
    outliers = net.encoder.preprocess(data.outliers.x_train[idx])
    params = list(net.parameters()) + list(head.parameters())
    logits = head.logits(net(x))
    target = lam * F.one_hot(y, 4).double() + (1 - lam) / 4
    mixed_logp = F.log_softmax(head.logits(net(lam * x + (1 - lam) * outliers)).double(), dim=1)
    want = F.cross_entropy(logits.double(), y) + 5.0 * -(target * mixed_logp).sum(dim=1).mean()
    want_grad = torch.autograd.grad(want, params)
    got = method.batch_loss(net, batch_of(x, y, 9))
    got_grad = torch.autograd.grad(got, params)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(got_grad, want_grad))


def test_holdout_weight_zero_draws_nothing_and_trains_end_to_end():
    spec = mixoe_spec(weight=0.0)
    data = load_dataset(spec)
    trainer = trainer_for(spec, data)
    x, y = trainer.net.encoder.preprocess(data.x_train[:40]), data.y_train[:40]
    batch = batch_of(x, y, 2)
    state = batch.gen.get_state()
    got = trainer.method.batch_loss(trainer.net, batch)
    assert torch.equal(got, F.cross_entropy(trainer.loss.logits(trainer.net(x)), y))
    assert torch.equal(batch.gen.get_state(), state)
    result = train(spec, data)
    assert {"accuracy", "auroc", "tnr_at_95_tpr"} <= set(result.metrics)


@pytest.mark.parametrize("over,field,words", [
    ({"outlier_classes": 0}, "mixup.params.outlier_classes", "needs outlier_classes >= 1"),
    ({"outlier_classes": None}, "mixup.params.outlier_classes", "needs outlier_classes >= 1"),
    ({"outliers": "noise"}, "mixup.params.outlier_classes", "only used with outliers 'holdout'"),
    ({"outlier_classes": 5}, "mixup.params.outlier_classes", "at most 4"),
    ({"outlier_classes": -1}, "mixup.params.outlier_classes", "within"),
    ({"outlier_classes": "4,5"}, "mixup.params.outlier_classes", "must be int"),
])
def test_bad_outlier_classes_are_refused_naming_the_field(over, field, words):
    kwargs = {"outliers": "holdout", "outlier_classes": 2, **over}
    errors = errors_of(lambda: mixoe_spec(**kwargs))
    assert words in errors[field]


def test_holdout_refuses_a_class_split_and_too_many_classes_in_a_file():
    errors = errors_of(lambda: mixoe_spec(dataset={**SIX, "split": {"kind": "classes", "holdout_classes": [0]}}))
    assert "split kind 'classes'" in errors["dataset.split.kind"]
    raw = {"x": np.zeros((30, 3)), "y": np.arange(30) % 3}
    with pytest.raises(DataError, match="mixup.params.outlier_classes: 2 of the data's 3 classes"):
        dataset_from_arrays(raw, mixoe_spec(outlier_classes=2), "three.npz")
