"""MoCo / MoCHi, Mixed Barlow Twins, Decoupled Mixup, RankMixup and MixOE.

Each method is tested on the property that makes it that method (METHODS.md),
on reducing to its base loss exactly, on drawing all randomness from the run's
generator, and end to end through the training loop.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import kstest

from embedmix.core import losses
from embedmix.core.data import load_dataset
from embedmix.core.mixup import METHODS, Batch, build
from embedmix.core.mixup.barlow import mixed_barlow_regulariser
from embedmix.core.mixup.classification import (
    decoupled_mixup_loss,
    expected_calibration_error,
    make_outliers,
    mndcg_term,
    mrl_term,
    ood_scores,
)
from embedmix.core.mixup.mixing import cutmix_region, paste, sample_lambda_float
from embedmix.core.losses import PairWeights
from embedmix.core.mixup.moco import hard_negative_mixes, moco_infonce
from embedmix.core.models import build_net
from embedmix.core.spec import SpecError, validate_spec
from embedmix.core.array_train import ArrayTrainer
from embedmix.core.train import train

BLOBS = {"name": "blobs", "size": 240, "params": {"num_classes": 4, "num_features": 8, "cluster_std": 1.0}}


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spec(mixup=None, loss="cross_entropy", loss_params=None, *, dataset=None, encoder="mlp", epochs=2, **train_over):
    body = {
        "name": "t",
        "dataset": dataset or BLOBS,
        "model": {"encoder": encoder, "embedding_dim": 8, "width": 16},
        "objective": {"loss": loss, "params": loss_params or {}},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.01, "seed": 5, **train_over},
        "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    }
    if mixup is not None:
        body["mixup"] = mixup
    return validate_spec(body)


def _parts(spec):
    """(net, loss, method, data) as the Trainer builds them, without training."""
    data = load_dataset(spec)
    torch.manual_seed(spec.train.seed)
    net = build_net(spec.model, data.x_train)
    out_dim = spec.model.projection_dim or spec.model.embedding_dim
    loss = losses.build(spec.objective.loss, num_classes=data.num_classes, embedding_dim=out_dim, **spec.objective.params)
    return net, loss, build(spec, loss, num_classes=data.num_classes, embedding_dim=out_dim), data


def _batch(net, data, seed=0, n=32, noise=0.05):
    x = net.encoder.preprocess(data.x_train[:n])
    y = data.y_train[:n]
    gen = torch.Generator().manual_seed(seed)
    view = (lambda: x + noise * torch.randn(x.shape, generator=gen)) if noise else (lambda: x)
    return Batch(x=x, y=y, gen=gen, view=view, step=0, total_steps=1)


def _fresh(batch, seed):
    batch.gen.manual_seed(seed)
    return batch


def _same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


MOCO = {"method": "moco", "params": {"queue_size": 64, "momentum": 0.99}}
MOCHI = {"method": "mochi", "params": {"queue_size": 64, "momentum": 0.99, "n_hard": 16, "s": 8, "s_prime": 4}}
NTX = {"temperature": 0.2}


# --------------------------------------------------------------------------- MoCo


def moco_weights(batch: int, queue: int) -> PairWeights:
    """MoCo as ntxent weights over [batch keys; queue]: key i is query i's only positive, the queue its negatives."""
    eye = torch.eye(batch, dtype=torch.float64)
    return PairWeights.cat(PairWeights(eye, torch.zeros_like(eye)),
                           PairWeights(torch.zeros(batch, queue, dtype=torch.float64), torch.ones(batch, queue, dtype=torch.float64)))


def test_moco_loss_is_the_ntxent_loss_against_the_own_key_and_the_queue():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    k = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(20, 5, generator=g, dtype=torch.float64), dim=1)
    ntxent = losses.build("ntxent", temperature=0.2)
    by_ntxent = ntxent(q, weights=moco_weights(6, 20), ref=torch.cat([k, queue]))
    ours = moco_infonce(0.2, q, k, queue, None)
    qn = F.normalize(q, dim=1)
    logits = torch.cat([(qn * k).sum(1, keepdim=True), qn @ queue.T], dim=1) / 0.2
    reference = F.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(ours, reference, rtol=1e-12) and torch.allclose(ours, by_ntxent, rtol=1e-10)
    (grad,) = torch.autograd.grad(ours, q)
    (grad_ntxent,) = torch.autograd.grad(by_ntxent, q)
    assert torch.allclose(grad, grad_ntxent, rtol=1e-9, atol=1e-12)


def test_moco_queue_and_momentum_update():
    spec = _spec(MOCO, "ntxent", NTX)
    net, _, method, data = _parts(spec)
    assert list(method.parameters()) == []  # what the loop's optimizer sees when it is built
    batch = _batch(net, data)
    method.batch_loss(net, batch)
    assert int(method.queue_ptr) == 32
    keys = method.queue[:32].clone()
    assert torch.allclose(keys.norm(dim=1), torch.ones(32))
    assert not any(p.requires_grad for p in method.key_net.parameters())
    assert not any(p.requires_grad for p in method.parameters())  # the key encoder is never trained by the optimizer
    before = {k: v.clone() for k, v in method.key_net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)
    method.after_step(net)
    for (name, pk), pq in zip(method.key_net.named_parameters(), net.parameters()):
        assert torch.allclose(pk, 0.99 * before[name] + 0.01 * pq), name
    method.batch_loss(net, batch)
    method.batch_loss(net, batch)
    assert int(method.queue_ptr) == (3 * 32) % 64  # wraps around


def test_mochi_synthetic_negatives_are_unit_norm_detached_and_harder():
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(16, 12, generator=g), dim=1).requires_grad_(True)
    queue = F.normalize(torch.randn(256, 12, generator=g), dim=1)
    synth = hard_negative_mixes(q, queue, n_hard=16, s=8, s_prime=4, gen=torch.Generator().manual_seed(2))
    assert synth.shape == (16, 12, 12)
    assert torch.allclose(synth.norm(dim=-1), torch.ones(16, 12), atol=1e-6)
    assert not synth.requires_grad and synth.grad_fn is None
    sim_synth = torch.einsum("bd,bsd->bs", q.detach(), synth)
    sim_queue = q.detach() @ queue.T
    assert sim_synth.mean() > sim_queue.mean() + 0.3
    assert sim_synth[:, :8].mean() > sim_queue.mean() and sim_synth[:, 8:].mean() > sim_synth[:, :8].mean()
    again = hard_negative_mixes(q, queue, n_hard=16, s=8, s_prime=4, gen=torch.Generator().manual_seed(2))
    assert torch.equal(synth, again)  # same generator state, same mixing


def test_mochi_synthetic_negatives_enter_the_denominator_only_of_their_query():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    keys = F.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(10, 6, generator=g, dtype=torch.float64), dim=1)
    extra = F.normalize(torch.randn(4, 3, 6, generator=g, dtype=torch.float64), dim=-1)
    empty = moco_infonce(0.2, q, keys, queue, extra[:, :0])
    assert torch.allclose(empty, moco_infonce(0.2, q, keys, queue, None), rtol=1e-12)
    ours = moco_infonce(0.2, q, keys, queue, extra)
    qn = F.normalize(q, dim=1)
    rows = []
    for i in range(4):  # per query: its key, the queue, its own synthetic negatives
        logits = torch.cat([qn[i] @ keys[i:i + 1].T, qn[i] @ queue.T, qn[i] @ extra[i].T]) / 0.2
        rows.append(-F.log_softmax(logits, dim=0)[0])
    assert torch.allclose(ours, torch.stack(rows).mean(), rtol=1e-10)
    ours.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_mochi_without_synthetic_points_is_moco_exactly():
    losses_ = []
    for mix in (MOCO, {**MOCHI, "params": {**MOCHI["params"], "s": 0, "s_prime": 0}}):
        spec = _spec(mix, "ntxent", NTX)
        net, _, method, data = _parts(spec)
        losses_.append(method.batch_loss(net, _batch(net, data)))
    assert torch.equal(losses_[0], losses_[1])
    spec = _spec(MOCHI, "ntxent", NTX)
    net, _, method, data = _parts(spec)
    assert method.batch_loss(net, _batch(net, data)) > losses_[0]  # hard negatives make the task harder


# --------------------------------------------------------------------------- Mixed Barlow Twins


def test_mixed_barlow_regulariser_is_exactly_zero_without_mixing():
    spec = _spec({"method": "mixed_barlow_twins"}, "barlow_twins")
    net, loss, method, data = _parts(spec)
    batch = _batch(net, data)
    x_a, x_b = batch.view(), batch.view()
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    base, reg = method.loss_given(net, x_a, x_b, 1.0, perm)
    assert reg.item() == 0.0
    assert torch.equal(base, loss(net(x_a), net(x_b)))
    _, reg_mixed = method.loss_given(net, x_a, x_b, 0.5, perm)
    assert reg_mixed.item() > 0.0
    reg_mixed.backward()  # nothing is detached: the regulariser trains the net
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    z = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    assert mixed_barlow_regulariser(z, torch.randn(32, 8), z, perm, 1.0).item() == 0.0


def test_mixed_barlow_draws_from_the_generator_and_weight_zero_is_plain_barlow():
    spec = _spec({"method": "mixed_barlow_twins"}, "barlow_twins")
    net, loss, method, data = _parts(spec)
    batch = _batch(net, data)
    assert method.draw(torch.Generator().manual_seed(4), 32)[0] == method.draw(torch.Generator().manual_seed(4), 32)[0]
    assert torch.equal(method.batch_loss(net, _fresh(batch, 9)), method.batch_loss(net, _fresh(batch, 9)))
    lam, perm = method.draw(torch.Generator().manual_seed(4), 32)
    assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == list(range(32))
    reference = _spec(None, "barlow_twins")
    zero = _spec({"method": "mixed_barlow_twins", "weight": 0.0}, "barlow_twins")
    _same_state(train(reference, load_dataset(reference)).encoder.state_dict(),
                train(zero, load_dataset(zero)).encoder.state_dict())


# --------------------------------------------------------------------------- Decoupled Mixup


def _mixup_ce(logits, y_a, y_b, lam):
    return lam * F.cross_entropy(logits, y_a) + (1 - lam) * F.cross_entropy(logits, y_b)


def test_decoupled_mixup_reduces_to_mixup_ce_and_to_ce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 5, generator=g, dtype=torch.float64)
    y_a, y_b = torch.randint(5, (10,), generator=g), torch.randint(5, (10,), generator=g)
    for lam in (0.3, 0.5, 0.8):
        assert torch.allclose(decoupled_mixup_loss(logits, y_a, y_b, lam, eta=0.0, mode="both"), _mixup_ce(logits, y_a, y_b, lam))
        assert torch.allclose(decoupled_mixup_loss(logits, y_a, y_b, lam, eta=0.5, mode="both", weight=0.0),
                              _mixup_ce(logits, y_a, y_b, lam))
        # same-class pairs: plain CE whatever eta is
        assert torch.allclose(decoupled_mixup_loss(logits, y_a, y_a, lam, eta=0.5, mode="both"), F.cross_entropy(logits, y_a))


@pytest.mark.parametrize("mode", ["both", "less", "more"])
@pytest.mark.parametrize("lam", [0.3, 0.5, 0.7])
def test_decoupled_mixup_removes_the_other_class_from_the_softmax(mode, lam):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y_a = torch.tensor([0, 1, 2, 3, 0, 1])
    y_b = torch.tensor([1, 2, 3, 0, 0, 3])  # the fifth pair is same-class
    eta = 0.4
    total = []
    for i in range(6):
        a, b = int(y_a[i]), int(y_b[i])
        target = torch.zeros(4, dtype=torch.float64)
        target[a] += lam
        target[b] += 1 - lam
        value = -(target * F.log_softmax(logits[i], 0)).sum()
        if a != b:
            keep_a = [c for c in range(4) if c != b]  # class a against all but b
            keep_b = [c for c in range(4) if c != a]
            ce_a = -F.log_softmax(logits[i, keep_a], 0)[keep_a.index(a)]
            ce_b = -F.log_softmax(logits[i, keep_b], 0)[keep_b.index(b)]
            eta_a, eta_b = eta * lam, eta * (1 - lam)
            if mode == "less":  # only the minority class (lam = 0.5: class b, as openmixup)
                eta_a, eta_b = (eta_a, 0.0) if lam < 0.5 else (0.0, eta_b)
            if mode == "more":
                eta_a, eta_b = (0.0, eta_b) if lam < 0.5 else (eta_a, 0.0)
            value = value + eta_a * ce_a + eta_b * ce_b
        total.append(value)
    expected = torch.stack(total).mean()
    assert torch.allclose(decoupled_mixup_loss(logits, y_a, y_b, lam, eta=eta, mode=mode), expected, rtol=1e-12)


def test_decoupled_mixup_manifold_and_generator():
    spec = _spec({"method": "decoupled_mixup", "level": "manifold", "alpha": 2.0})
    net, _, method, data = _parts(spec)
    batch = _batch(net, data, noise=0.0)
    draws = {method.draw(torch.Generator().manual_seed(s), 32, len(net.encoder.blocks))[2] for s in range(30)}
    assert draws == set(range(len(net.encoder.blocks)))  # the input and after each block
    a = method.draw(torch.Generator().manual_seed(3), 32, 3)
    b = method.draw(torch.Generator().manual_seed(3), 32, 3)
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert torch.equal(method.batch_loss(net, _fresh(batch, 7)), method.batch_loss(net, _fresh(batch, 7)))


# --------------------------------------------------------------------------- RankMixup


def test_rankmixup_mrl_penalises_a_model_more_confident_on_mixed_inputs():
    raw = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0]])
    confident_mixed = torch.tensor([[5.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    mixed = torch.tensor([True, True])
    assert mrl_term(raw, confident_mixed, mixed, margin=2.0) == pytest.approx((5.0 - 2.0 + 2.0 + 3.0 - 1.0 + 2.0) / 2)
    assert mrl_term(raw, confident_mixed, mixed, margin=0.0) > 0
    humble_mixed = torch.tensor([[-3.0, -3.0, -3.0], [-4.0, -4.0, -4.0]])
    assert mrl_term(raw, humble_mixed, mixed, margin=2.0) == 0.0
    assert mrl_term(raw, confident_mixed, torch.tensor([False, False]), margin=2.0) == 0.0  # same-class pairs


def test_rankmixup_mndcg_is_zero_when_confidence_ranks_like_relevance():
    # raw confidence 1 and mixed confidences equal to the relevances -> NDCG = 1
    raw = torch.tensor([[50.0, 0.0]])
    rel = torch.tensor([[0.6, 0.9, 0.7]])
    mixed = torch.stack([torch.log(torch.tensor([[r, 1 - r]])) for r in rel[0]])  # (n, B, C)
    assert mndcg_term(raw, mixed, rel).item() == pytest.approx(0.0, abs=1e-6)
    # the most mixed copy being the most confident ranks badly -> positive loss
    wrong = torch.stack([torch.log(torch.tensor([[r, 1 - r]])) for r in (0.99, 0.6, 0.8)])
    assert mndcg_term(raw, wrong, rel).item() > 0.0


@pytest.mark.parametrize("mode", ["mrl", "mndcg"])
def test_rankmixup_weight_zero_is_plain_cross_entropy_training(mode):
    reference = _spec(None)
    zero = _spec({"method": "rankmixup", "weight": 0.0, "params": {"mode": mode}})
    _same_state(train(reference, load_dataset(reference)).encoder.state_dict(),
                train(zero, load_dataset(zero)).encoder.state_dict())


def test_rankmixup_uses_its_catalog_default_weight():
    _, _, method, _ = _parts(_spec({"method": "rankmixup"}))
    assert method.weight == 0.1 and method.copies == 1
    _, _, method, _ = _parts(_spec({"method": "rankmixup", "weight": 0.3, "params": {"mode": "mndcg"}}))
    assert method.weight == 0.3 and method.copies == 3


# --------------------------------------------------------------------------- MixOE


def test_mixoe_outliers_and_cutmix():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g) * torch.arange(1.0, 7.0) + 3.0
    noise = make_outliers(x, "noise", torch.Generator().manual_seed(1))
    assert torch.allclose(noise.mean(0), x.mean(0), atol=0.5) and torch.allclose(noise.std(0), x.std(0), rtol=0.2)
    shuffled = make_outliers(x, "shuffled", torch.Generator().manual_seed(1))
    assert sorted(shuffled.flatten().tolist()) == sorted(x.flatten().tolist())  # the data's values, rearranged
    assert not torch.equal(shuffled, x)
    assert torch.equal(shuffled, make_outliers(x, "shuffled", torch.Generator().manual_seed(1)))
    images = torch.zeros(4, 1, 8, 8)
    mixed, lam = paste(images, torch.ones(4, 1, 8, 8), cutmix_region(images, 0.6, torch.Generator().manual_seed(2)))
    assert lam == pytest.approx(1.0 - mixed[0].mean().item())  # lambda is the area kept
    assert torch.equal(mixed[0], mixed[3])  # one box for the batch
    seq = torch.zeros(3, 40)
    seq, lam = paste(seq, torch.ones(3, 40), cutmix_region(seq, 0.75, torch.Generator().manual_seed(2)))
    assert lam == pytest.approx(1.0 - seq[0].mean().item()) and 0.7 <= lam <= 0.8


def test_mixoe_target_is_onehot_mixed_with_uniform():
    spec = _spec({"method": "mixoe"})
    net, loss, method, data = _parts(spec)
    assert method.weight == 5.0
    batch = _batch(net, data, noise=0.0)
    gen_state = torch.Generator().manual_seed(11)
    x = batch.x
    mixed_x, lam = method.mixed_batch(x, gen_state)
    ce = F.cross_entropy(loss.logits(net(x)), batch.y)
    target = lam * F.one_hot(batch.y, 4).float() + (1 - lam) / 4
    expected = ce + 5.0 * loss(net(mixed_x), target)
    batch.gen.manual_seed(11)
    assert torch.allclose(method.batch_loss(net, batch), expected, rtol=1e-6)


def test_mixoe_weight_zero_is_plain_cross_entropy_training():
    reference = _spec(None)
    zero = _spec({"method": "mixoe", "weight": 0.0})
    _same_state(train(reference, load_dataset(reference)).encoder.state_dict(),
                train(zero, load_dataset(zero)).encoder.state_dict())


# --------------------------------------------------------------------------- metrics


def test_ece_matches_a_hand_computed_example():
    conf = [0.95, 0.9, 0.78, 0.65, 0.57, 0.55]
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    probs = torch.tensor([[c, 1 - c] for c in conf], dtype=torch.float64)
    probs[3] = probs[3].flip(0)  # predicts class 1 (right)
    # 15 bins of width 1/15, (lo, hi]: 0.95 right -> (0.933, 1]; 0.9 right -> (0.867, 0.933];
    # 0.78 wrong -> (0.733, 0.8]; 0.65 right -> (0.6, 0.667]; 0.57 right and 0.55 wrong -> (0.533, 0.6]
    expected = (abs(1 - 0.95) + abs(1 - 0.9) + abs(0 - 0.78) + abs(1 - 0.65)) / 6 + (2 / 6) * abs(0.5 - 0.56)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(probs.float(), labels) == pytest.approx(expected, abs=1e-6)
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]] * 3), torch.tensor([0, 0, 0])) == 0.0


def test_ood_scores():
    assert ood_scores(torch.tensor([0.9, 0.8, 0.95]), torch.tensor([0.1, 0.2])) == {"auroc": 1.0, "tnr_at_95_tpr": 1.0}
    mixed = ood_scores(torch.linspace(0.5, 1.0, 20), torch.linspace(0.0, 0.6, 10))
    assert 0.5 < mixed["auroc"] < 1.0 and 0.0 < mixed["tnr_at_95_tpr"] < 1.0


# --------------------------------------------------------------------------- all methods

CASES = {
    "moco": (MOCO, "ntxent", NTX),
    "mochi": (MOCHI, "ntxent", NTX),
    "mixed_barlow_twins": ({"method": "mixed_barlow_twins"}, "barlow_twins", None),
    "decoupled_mixup": ({"method": "decoupled_mixup", "params": {"eta": 0.5}}, "cross_entropy", None),
    "decoupled_mixup_manifold": ({"method": "decoupled_mixup", "level": "manifold", "params": {"mode": "less"}}, "cross_entropy", None),
    "rankmixup_mrl": ({"method": "rankmixup", "weight": 1.0}, "cross_entropy", None),
    "rankmixup_mndcg": ({"method": "rankmixup", "weight": 1.0, "params": {"mode": "mndcg"}}, "cross_entropy", None),
    "mixoe": ({"method": "mixoe", "params": {"outliers": "shuffled"}}, "cross_entropy", None),
}


def _eval_loss(method, net, batch):
    saved = {k: v.clone() for k, v in method.state_dict().items()}
    value = method.batch_loss(net, _fresh(batch, 123)).item()
    if saved:
        method.load_state_dict(saved)
    return value


@pytest.mark.parametrize("case", CASES)
def test_a_few_steps_on_a_tiny_batch_reduce_the_loss(case):
    mixup, loss, params = CASES[case]
    spec = _spec(mixup, loss, params)
    net, base, method, data = _parts(spec)
    batch = _batch(net, data)
    method.batch_loss(net, _fresh(batch, 0))  # creates lazily-built state (the key encoder)
    opt = torch.optim.Adam(list(net.parameters()) + list(base.parameters()) + list(method.parameters()), lr=0.01)
    start = _eval_loss(method, net, batch)
    for step in range(25):
        value = method.batch_loss(net, _fresh(batch, step))
        opt.zero_grad()
        value.backward()
        opt.step()
        method.after_step(net)
    assert _eval_loss(method, net, batch) < start


@pytest.mark.parametrize("case", CASES)
def test_the_same_generator_state_gives_the_same_loss(case):
    mixup, loss, params = CASES[case]
    spec = _spec(mixup, loss, params)
    net, _, method, data = _parts(spec)
    batch = _batch(net, data)
    method.batch_loss(net, _fresh(batch, 0))  # creates lazily-built state (the key encoder)
    first = _eval_loss(method, net, batch)
    assert _eval_loss(method, net, batch) == first
    batch.gen.manual_seed(124)
    assert method.batch_loss(net, batch).item() != first  # and the mixing does depend on it


@pytest.mark.parametrize("case", CASES)
def test_each_method_trains_end_to_end(case):
    mixup, loss, params = CASES[case]
    spec = _spec(mixup, loss, params)
    result = train(spec, load_dataset(spec))
    assert math.isfinite(result.metrics["precision_at_1"])
    if loss == "cross_entropy":
        assert 0.0 <= result.metrics["ece"] <= 1.0 and result.metrics["accuracy"] > 0.5
    if mixup["method"] == "mixoe":
        assert 0.0 <= result.metrics["auroc"] <= 1.0 and 0.0 <= result.metrics["tnr_at_95_tpr"] <= 1.0


def test_mixoe_cutmix_on_images_end_to_end():
    spec = _spec({"method": "mixoe", "params": {"mix": "cutmix"}}, dataset={"name": "digits"}, encoder="conv2d", epochs=1)
    result = train(spec, load_dataset(spec))
    assert {"accuracy", "ece", "auroc", "tnr_at_95_tpr"} <= result.metrics.keys()


class _Recorder:
    def __init__(self, stop_after=None):
        self.stop_after, self.step, self.checkpoints = stop_after, 0, []

    def on_progress(self, p):
        self.step = p.step

    def on_metrics(self, step, epoch, values):
        pass

    def on_checkpoint(self, state, step, epoch):
        self.checkpoints.append((step, state))

    def should_stop(self):
        return self.stop_after is not None and self.step >= self.stop_after


@pytest.mark.parametrize("mixup", [MOCO, MOCHI], ids=["moco", "mochi"])
def test_moco_resume_is_bit_exact_with_the_queue_restored(mixup):
    spec = _spec(mixup, "ntxent", NTX, epochs=3)
    data = load_dataset(spec)
    straight = ArrayTrainer(spec, data)
    straight.run()
    first = ArrayTrainer(spec, data, _Recorder(stop_after=8))  # mid-epoch (7 steps per epoch)
    first.run()
    step, blob = first.cb.checkpoints[-1]
    assert step == 8
    resumed = ArrayTrainer(spec, data)
    resumed.load_state(blob)
    assert resumed.method.key_net is None and "queue" in resumed.method.state_dict()
    assert torch.equal(resumed.method.queue, first.method.queue)
    assert set(resumed.method.state_dict()) == set(first.method.state_dict())  # held key encoder state round-trips
    resumed.run()
    _same_state(straight.net.state_dict(), resumed.net.state_dict())
    _same_state(straight.method.state_dict(), resumed.method.state_dict())  # queue, pointer, key encoder


# --------------------------------------------------------------------------- spec validation


def _errors(body_over):
    body = {"name": "t", "dataset": BLOBS, "objective": {"loss": "cross_entropy"}, **body_over}
    with pytest.raises(SpecError) as err:
        validate_spec(body)
    out: dict[str, str] = {}
    for e in err.value.errors:
        out[e["field"]] = out.get(e["field"], "") + e["message"] + "; "
    return out


def test_invalid_combinations_are_refused_naming_the_fields():
    errors = _errors({"objective": {"loss": "supcon"}, "mixup": {"method": "mochi"}})
    assert "mixup.method" in errors and "ntxent" in errors["mixup.method"]
    errors = _errors({"dataset": {"name": "diabetes"}, "mixup": {"method": "rankmixup"}})
    assert "mixup.method" in errors and "objective.loss" in errors
    errors = _errors({"objective": {"loss": "barlow_twins", "views": 1}, "mixup": {"method": "mixed_barlow_twins"}})
    assert "mixup.method" in errors or "objective.views" in errors
    assert "mixup.level" in _errors({"mixup": {"method": "rankmixup", "level": "manifold"}})
    assert "mixup.params.outliers" in _errors({"mixup": {"method": "mixoe", "params": {"outliers": "webvision"}}})
    assert "mixup.params.mode" in _errors({"mixup": {"method": "decoupled_mixup", "params": {"mode": "most"}}})
    assert "eval.metrics" in _errors({"objective": {"loss": "ntxent"}, "mixup": {"method": "moco"},
                                      "eval": {"metrics": ["ece"]}})


def test_methods_are_registered():
    assert {"moco", "mochi", "mixed_barlow_twins", "decoupled_mixup", "rankmixup", "mixoe"} <= METHODS.keys()


def test_beta_draws_come_from_the_generator():
    a = [sample_lambda_float(2.0, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert a[0] == a[1] and 0.0 < a[0] < 1.0
    uniform = [sample_lambda_float(1.0, torch.Generator().manual_seed(s)) for s in range(400)]
    assert kstest(uniform, "uniform").pvalue > 0.01  # Beta(1, 1) is U(0, 1) (Mixed Barlow Twins' default alpha)
    draws = torch.tensor([sample_lambda_float(2.0, torch.Generator().manual_seed(s)) for s in range(400)])
    assert abs(draws.mean() - 0.5) < 0.03 and abs(draws.var() - 0.05) < 0.01  # Beta(2, 2): mean 1/2, var 1/20
