"""ConR, CACR, iSogCLR and the tolerance metric: float64 references written from the official code, defining properties,
validation, and (iSogCLR) per-sample temperatures that a checkpoint carries across a resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from embedmix.core import catalog
from embedmix.core.data import load_dataset
from embedmix.core.evaluate import alignment, evaluate, tolerance
from embedmix.core.losses import build
from embedmix.core.losses.conr import conr_regulariser
from embedmix.core.spec import SpecError, validate_spec
from embedmix.core.train import train
from tests.callbacks import StopAt
from tests.references import assert_same, value_and_grad

DIM = 6


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def fields_of(spec: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate_spec(spec)
    return [e["field"] for e in info.value.errors]


# ---- ConR ---------------------------------------------------------------------------------------


def conr_official(features, targets, preds, w, t, e):
    """BorealisAI/ConR agedb-dir/loss.py ConR, per anchor, with the paper's denominator.

    The official code masks by multiplication, so each non-positive entry adds exp(0) = 1 to its
    denominator; the paper's (and our) denominator holds only the positives and the pushed
    negatives (docs/methods.md, ConR). Sample weights (LDS) are 1.
    """
    q = F.normalize(features, dim=1)
    n = len(targets)
    total = features.new_zeros(())
    for i in range(n):
        pos = [j for j in range(n) if j != i and abs(targets[i] - targets[j]) <= w]
        neg = [j for j in range(n) if abs(targets[i] - targets[j]) > w and abs(preds[i] - preds[j]) <= w]
        if not neg or not pos:
            continue
        z = q[i] @ q.T / t
        denominator = sum(torch.exp(z[j]) for j in pos) + sum(math.exp(e * abs(targets[i] - targets[j])) * torch.exp(z[j]) for j in neg)
        total = total + sum(-torch.log(torch.exp(z[j]) / denominator) for j in pos) / len(pos)
    return total / n


def conr_batch(seed: int = 0, batch: int = 8):
    """Two views of `batch` samples on a coarse label grid; predictions off by up to 1.5 labels, so some far labels are
    predicted inside the window (negatives) and some are not."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 6, (batch,), generator=gen).double()
    targets = torch.cat([y, y])
    preds = targets + 1.5 * (torch.rand(2 * batch, generator=gen, dtype=torch.float64) - 0.5) * 2
    return randn(2 * batch, DIM, seed=seed + 1), targets, preds


@pytest.mark.parametrize("window,temperature,eta", [(1.0, 0.07, 0.01), (0.5, 0.2, 0.3), (2.0, 1.0, 1.0)])
def test_conr_regulariser_equals_official_reference(window, temperature, eta):
    features, targets, preds = conr_batch()
    assert_same(lambda f: conr_regulariser(f, targets, preds, window=window, temperature=temperature, eta=eta),
                lambda f: conr_official(f, targets.tolist(), preds.tolist(), window, temperature, eta), features)


def test_conr_loss_is_the_heads_mse_plus_beta_times_the_regulariser_on_its_detached_predictions():
    features, targets, _ = conr_batch(3)
    loss = build("conr", embedding_dim=DIM, beta=2.5, window=1.0).double()
    loss.fit_targets(targets)
    mse = build("mse", embedding_dim=DIM).double()
    mse.load_state_dict(loss.state_dict())

    def reference(f):
        preds = mse.predict(f).detach()
        return mse(f, targets) + 2.5 * conr_official(f, targets.tolist(), preds.tolist(), 1.0, 0.07, 0.01)

    assert_same(lambda f: loss(f, targets), reference, features)


def test_conr_has_no_penalty_where_the_neighbourhoods_agree_with_the_label_window():
    """Predictions equal to the labels: every pair outside the window is predicted outside it, so no anchor has a
    negative and the regulariser and its gradient vanish, whatever the features; one wrong prediction brings it back."""
    features, targets, _ = conr_batch(5)
    value, (grad,) = value_and_grad(lambda f: conr_regulariser(f, targets, targets, window=1.0, temperature=0.07, eta=0.01), features)
    assert value == 0.0 and torch.count_nonzero(grad) == 0
    wrong = targets.clone()
    far = int((targets - targets[0]).abs().argmax())
    wrong[far] = targets[0]  # predicted inside sample 0's window although its label is far
    assert conr_regulariser(features, targets, wrong, window=1.0, temperature=0.07, eta=0.01) > 0


def test_conr_pushes_harder_the_farther_the_negatives_label():
    features, targets, preds = conr_batch(7)
    values = [float(conr_regulariser(features, targets, preds, window=1.0, temperature=0.2, eta=eta)) for eta in (0.0, 0.5, 1.0)]
    assert values[0] < values[1] < values[2]


# ---- CACR ---------------------------------------------------------------------------------------


def cacr_official(a, b, tau_pos, tau_neg, alpha, beta):
    """JegZheng/CACR-SSL our_loss1 + our_loss2 for two views, with the repulsion of both view orders averaged.

    our_loss1: per query view, alpha ||z_x - z_y||^2 to the other views, softmax(tau_pos d^2) weighted (one other view:
    weight 1), averaged over queries and views. forward_negative_loss(z_x, z_y): cost -beta ||z_x[i] - z_y[j]||^2, j != i,
    weights softmax(tau_neg / beta * cost) per row, sum(cost * weights) averaged over rows. The official code only
    takes the order (a, b) of a view pair; we average (a, b) and (b, a) (docs/methods.md, CACR).
    """
    za, zb = F.normalize(a, dim=1), F.normalize(b, dim=1)
    views = [za, zb]
    loss1 = 0.0
    for x in range(2):
        others = torch.stack([views[1 - x]])  # (views - 1, B, d)
        cost = (views[x] - others).norm(p=2, dim=-1).pow(2).transpose(1, 0) * alpha
        weights = torch.softmax(cost * (tau_pos / alpha), dim=1)
        loss1 = loss1 + (cost * weights).sum(1).mean()
    loss1 = loss1 / 2

    def negative(zx, zy):
        cost = torch.norm(zx[:, None] - zy, dim=-1).pow(2) * -beta
        off = ~torch.eye(len(zx), dtype=torch.bool)
        cost = cost.masked_select(off).view(len(zx), len(zx) - 1)
        weights = torch.softmax(cost * (tau_neg / beta), dim=1)
        return (cost * weights).sum(1).mean()

    return loss1 + (negative(za, zb) + negative(zb, za)) / 2


def cacr_labels_reference(x, labels, tau_pos, tau_neg, alpha, beta):
    """The paper's CACR with labels, anchor by anchor: same-class rows are the positives, the other classes' the negatives."""
    z = F.normalize(x, dim=1)
    pulls, pushes = [], []
    for i in range(len(z)):
        d = (z[i] - z).pow(2).sum(dim=1)
        pos = [j for j in range(len(z)) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(len(z)) if labels[j] != labels[i]]
        if pos:
            pulls.append((torch.softmax(tau_pos * d[pos], 0) * d[pos]).sum())
        if neg:
            pushes.append((torch.softmax(-tau_neg * d[neg], 0) * d[neg]).sum())
    return alpha * torch.stack(pulls).mean() - beta * torch.stack(pushes).mean()


@pytest.mark.parametrize("tau_pos,tau_neg,alpha,beta", [(1.0, 0.9, 1.0, 1.0), (0.5, 2.0, 0.7, 1.3), (3.0, 5.0, 2.0, 0.5)])
def test_cacr_two_views_equals_official_reference(tau_pos, tau_neg, alpha, beta):
    loss = build("cacr", tau_pos=tau_pos, tau_neg=tau_neg, alpha=alpha, beta=beta)
    assert_same(loss, lambda a, b: cacr_official(a, b, tau_pos, tau_neg, alpha, beta), randn(9, DIM), randn(9, DIM, seed=1))


@pytest.mark.parametrize("tau_pos,tau_neg", [(1.0, 0.9), (4.0, 3.0)])
def test_cacr_with_labels_equals_reference(tau_pos, tau_neg):
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 0, 3, 1, 2])  # class 3 has no positive
    loss = build("cacr", tau_pos=tau_pos, tau_neg=tau_neg, alpha=0.8, beta=1.2)
    assert_same(lambda x: loss(x, labels), lambda x: cacr_labels_reference(x, labels, tau_pos, tau_neg, 0.8, 1.2), randn(10, DIM))


def test_cacr_weights_favour_far_positives_and_close_negatives():
    """Raising tau_pos raises the attraction (far positives count more); raising tau_neg raises the repulsion's
    weight on close negatives, so the subtracted mean distance falls and the loss rises."""
    x, labels = randn(12, DIM, seed=4), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    pull = [float(build("cacr", tau_pos=t, tau_neg=0.0, beta=0.0)(x, labels)) for t in (0.0, 1.0, 5.0)]
    push = [float(build("cacr", tau_pos=0.0, tau_neg=t, alpha=0.0)(x, labels)) for t in (0.0, 1.0, 5.0)]
    assert pull[0] < pull[1] < pull[2]
    assert push[0] < push[1] < push[2]


def test_cacr_at_zero_temperatures_is_the_large_temperature_limit_of_infonce():
    """tau_pos = tau_neg = 0 makes the weights uniform. Per anchor, InfoNCE over its positive and the same K - 1
    negatives, at temperature T, is log K + (K - 1) / (2 K T) (d_pos - mean d_neg) + O(1 / T^2) on unit vectors
    (s = 1 - d / 2), so CACR = 2 K / (K - 1) * lim T (InfoNCE_T - log K), value and gradient."""
    a, b = randn(7, DIM, seed=2), randn(7, DIM, seed=3)
    k, big = len(a), 1e6

    def infonce_limit(a, b):
        za, zb = F.normalize(a, dim=1), F.normalize(b, dim=1)
        terms = []
        for anchors, refs in ((za, zb), (zb, za)):  # both directions, as CACR's anchors are both views
            logits = anchors @ refs.T / big
            terms.append(F.cross_entropy(logits, torch.arange(k), reduction="none"))
        infonce = torch.cat(terms).mean()
        return 2 * k / (k - 1) * big * (infonce - math.log(k))

    v1, g1 = value_and_grad(build("cacr", tau_pos=0.0, tau_neg=0.0), a, b)
    v2, g2 = value_and_grad(infonce_limit, a, b)
    torch.testing.assert_close(v1, v2, rtol=1e-4, atol=1e-5)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_cacr_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="cacr"):
        build("cacr")(randn(4, DIM), randn(5, DIM))
    with pytest.raises(ValueError, match="cacr"):
        build("cacr")(randn(4, DIM), torch.tensor([0, 1]))


# ---- iSogCLR ------------------------------------------------------------------------------------


class LibAUCGCLossV1:
    """Optimization-AI/LibAUC libauc/losses/contrastive.py GCLoss_v1(enable_isogclr=True), one process, float64.

    gamma: LibAUC takes 1 for a batch whose u are all still 0 (before adjust_gamma moves past epoch 0), else
    gamma; the batches below are either all new or all seen, where this equals our per-sample rule.
    """

    def __init__(self, n, tau, tau_min, tau_max, rho, eta, beta, gamma):
        self.u = torch.zeros(n, 1, dtype=torch.float64)
        self.learnable_tau = torch.full((n, 1), tau, dtype=torch.float64)
        self.grad_tau = torch.zeros(n, 1, dtype=torch.float64)
        self.tau_min, self.tau_max, self.rho, self.eta, self.beta, self.gamma = tau_min, tau_max, rho, eta, beta, gamma

    def __call__(self, hidden1, hidden2, index):
        hidden1, hidden2 = F.normalize(hidden1, dim=1), F.normalize(hidden2, dim=1)
        bs = len(hidden1)
        labels = F.one_hot(torch.arange(bs), bs * 2).double()
        masks = F.one_hot(torch.arange(bs), bs).double()
        logits_aa = hidden1 @ hidden1.T - masks * 1e9
        logits_bb = hidden2 @ hidden2.T - masks * 1e9
        logits_ab_aa = torch.cat([hidden1 @ hidden2.T, logits_aa], 1)
        logits_ba_bb = torch.cat([hidden2 @ hidden1.T, logits_bb], 1)
        neg_mask = 1 - labels
        tau = self.learnable_tau[index]
        neg1 = torch.exp(logits_ab_aa / tau) * neg_mask
        neg2 = torch.exp(logits_ba_bb / tau) * neg_mask
        gamma = 1.0 if self.u[index].sum() == 0 else self.gamma
        u1 = (1 - gamma) * self.u[index] + gamma * neg1.sum(1, keepdim=True) / (2 * (bs - 1))
        u2 = (1 - gamma) * self.u[index] + gamma * neg2.sum(1, keepdim=True) / (2 * (bs - 1))
        self.u[index] = ((u1 + u2) / 2).detach()
        p1 = (neg1 / u1.clamp(min=1e-8)).detach()
        p2 = (neg2 / u2.clamp(min=1e-8)).detach()

        def ce(logits, weights):
            return -(labels * (logits - (weights * logits).sum(1, keepdim=True) / (2 * (bs - 1)))).sum(1)

        loss = (ce(logits_ab_aa, p1) + ce(logits_ba_bb, p2)).mean()
        g1 = torch.log(u1) + self.rho - (p1 * (logits_ab_aa / tau).detach()).sum(1, keepdim=True) / (2 * (bs - 1))
        g2 = torch.log(u2) + self.rho - (p2 * (logits_ba_bb / tau).detach()).sum(1, keepdim=True) / (2 * (bs - 1))
        self.grad_tau[index] = (1 - self.beta) * self.grad_tau[index] + self.beta * ((g1 + g2) / 2).detach()
        self.learnable_tau[index] = (self.learnable_tau[index] - self.eta * self.grad_tau[index]).clamp(self.tau_min, self.tau_max)
        return loss


ISOG = {"tau_init": 0.1, "tau_min": 0.05, "tau_max": 0.7, "rho": 0.3, "eta": 0.05, "beta": 0.9, "gamma": 0.9}


def test_isogclr_equals_libauc_over_steps_with_state():
    """Loss, gradients, moving estimates and temperatures over three steps: two first visits, then a revisit."""
    ours = build("isogclr", num_samples=12, **ISOG).double()
    ref = LibAUCGCLossV1(12, ISOG["tau_init"], ISOG["tau_min"], ISOG["tau_max"], ISOG["rho"], ISOG["eta"], ISOG["beta"], ISOG["gamma"])
    ref.learnable_tau = ours.tau.clone()[:, None]  # our buffer starts as float32 0.1, then .double()
    for step, index in enumerate([torch.arange(6), torch.arange(6, 12), torch.tensor([3, 7, 1, 10, 5, 0])]):
        a, b = randn(6, DIM, seed=2 * step), randn(6, DIM, seed=2 * step + 1)
        assert_same(lambda x, y: ours(x, y, index), lambda x, y: ref(x, y, index), a, b)
        # each stepped once on this batch: the state after the step must agree too
        torch.testing.assert_close(ours.u, ref.u.squeeze(1), rtol=1e-12, atol=0)
        torch.testing.assert_close(ours.tau, ref.learnable_tau.squeeze(1), rtol=1e-12, atol=0)
        torch.testing.assert_close(ours.tau_grad, ref.grad_tau.squeeze(1), rtol=1e-12, atol=1e-15)
    assert len(set(ours.tau.tolist())) > 2  # the temperatures did individualise


def test_isogclr_temperature_moves_as_the_update_rule_says():
    """g_i = log u_i + rho - E_p[s / tau_i]; tau_i <- clip(tau_i - eta * beta * g_i) on a first visit.

    Equal negative cosines (orthonormal rows, identical views): log u_i = E_p[s / tau_i] = 0, g_i = rho, so every
    visited tau falls by exactly eta * beta * rho. With rho = 0 and spread negatives, E_p[s / tau] >= log u
    (Jensen), g_i < 0, so every visited tau rises; unvisited rows keep tau_init; the clip holds tau_min."""
    eye = torch.eye(DIM, dtype=torch.float64)[:4]
    loss = build("isogclr", num_samples=10, **ISOG).double()
    init = loss.tau[0].item()  # tau_init as the float32 buffer holds it
    loss(eye, eye, torch.tensor([2, 3, 5, 7]))
    expected = init - ISOG["eta"] * ISOG["beta"] * ISOG["rho"]
    torch.testing.assert_close(loss.tau[[2, 3, 5, 7]], torch.full((4,), expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert torch.all(loss.tau[[0, 1, 4, 6, 8, 9]] == init)

    spread = build("isogclr", num_samples=10, **{**ISOG, "rho": 0.0}).double()
    spread(randn(5, DIM), randn(5, DIM, seed=1), torch.tensor([0, 2, 4, 6, 8]))
    assert torch.all(spread.tau[[0, 2, 4, 6, 8]] > init)
    assert torch.all(spread.tau[[1, 3, 5, 7, 9]] == init)

    floor = build("isogclr", num_samples=4, **{**ISOG, "eta": 10.0}).double()
    floor(eye, eye, torch.arange(4))
    assert torch.all(floor.tau == ISOG["tau_min"])


def test_isogclr_state_lives_in_the_state_dict():
    loss = build("isogclr", num_samples=9)
    assert set(loss.state_dict()) == {"tau", "u", "tau_grad"} and all(v.shape == (9,) for v in loss.state_dict().values())
    with pytest.raises(ValueError, match="num_samples"):
        build("isogclr")


def _isogclr_spec(**train_over):
    return validate_spec({
        "name": "isog",
        "dataset": {"name": "blobs", "size": 200, "params": {"num_classes": 4, "num_features": 8}},
        "model": {"encoder": "mlp", "embedding_dim": 8, "width": 16},
        "objective": {"loss": "isogclr", "params": {"eta": 0.05}},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.01, "seed": 1, "device": "cpu", **train_over},
        "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    })


def test_isogclr_resume_continues_the_temperatures_exactly_and_reports_their_distribution():
    from embedmix.core.array_train import ArrayTrainer

    spec = _isogclr_spec()
    data = load_dataset(spec)
    straight = ArrayTrainer(spec, data)
    result = straight.run()
    stop = StopAt(7)  # mid-epoch (5 steps an epoch)
    first = ArrayTrainer(spec, data, stop)
    assert first.run().stopped
    resumed = ArrayTrainer(spec, data)
    resumed.load_state(stop.checkpoints[-1])
    torch.testing.assert_close(resumed.loss.tau, first.loss.tau, rtol=0, atol=0)
    resumed.run()
    for name in ("tau", "u", "tau_grad"):
        assert torch.equal(getattr(straight.loss, name), getattr(resumed.loss, name)), name
    tau = straight.loss.tau
    assert len(set(tau.tolist())) > 10 and not torch.all(tau == 0.1)
    assert result.metrics["temperature_median"] == float(tau.median())
    assert result.metrics["temperature_min"] == float(tau.min()) and result.metrics["temperature_max"] == float(tau.max())


# ---- the catalog, validation, training ----------------------------------------------------------


def test_catalog_entries_and_builders_agree():
    for name in ("conr", "cacr", "isogclr"):
        entry = catalog.LOSSES[name]
        loss = build(name, embedding_dim=DIM, num_samples=4)
        assert entry.paper and entry.source
        for param, default in entry.defaults().items():
            assert getattr(loss, param) == default, (name, param)
    assert catalog.LOSSES["conr"].task == "regression" and catalog.LOSSES["conr"].labels == "target"
    assert "tolerance" in catalog.METRICS


BLOBS = {"name": "blobs", "size": 200, "params": {"num_classes": 4, "num_features": 8}}


@pytest.mark.parametrize("spec,field", [
    ({"dataset": {"name": "diabetes"}, "objective": {"loss": "conr", "views": 1}}, "objective.views"),
    ({"dataset": BLOBS, "objective": {"loss": "conr"}}, "objective.loss"),
    ({"dataset": {"name": "diabetes"}, "objective": {"loss": "conr", "params": {"window": -1.0}}}, "objective.params.window"),
    ({"dataset": BLOBS, "objective": {"loss": "cacr", "params": {"tau_neg": -0.1}}}, "objective.params.tau_neg"),
    ({"dataset": BLOBS, "objective": {"loss": "isogclr", "params": {"tau_min": 0.2}}}, "objective.params.tau_init"),
    ({"dataset": BLOBS, "objective": {"loss": "isogclr", "params": {"tau_max": 0.08}}}, "objective.params.tau_max"),
    ({"dataset": BLOBS, "objective": {"loss": "isogclr", "params": {"tau_min": 0.001}}}, "objective.params.tau_min"),
    ({"dataset": BLOBS, "objective": {"loss": "isogclr"}, "train": {"grad_cache_chunk": 16}}, "train.grad_cache_chunk"),
    ({"dataset": BLOBS, "objective": {"loss": "isogclr", "views": 1}}, "objective.views"),
    ({"dataset": BLOBS, "objective": {"loss": "isogclr"}, "mixup": {"method": "moco"}}, "mixup.method"),
    ({"dataset": {"name": "diabetes"}, "objective": {"loss": "mse"}, "eval": {"metrics": ["tolerance"]}}, "eval.metrics"),
], ids=["conr-one-view", "conr-classes", "conr-window", "cacr-tau", "isog-order-low", "isog-order-high", "isog-floor",
        "isog-grad-cache", "isog-one-view", "isog-mixup", "tolerance-regression"])
def test_bad_combinations_name_the_field(spec, field):
    assert field in fields_of({"name": "x", **spec})


@pytest.mark.parametrize("loss,dataset,metrics", [
    ("conr", {"name": "diabetes"}, ["mae", "spearman"]),
    ("cacr", BLOBS, ["precision_at_1", "uniformity", "tolerance"]),
])
def test_conr_and_cacr_train_end_to_end(loss, dataset, metrics):
    spec = validate_spec({"name": "x", "dataset": dataset, "model": {"encoder": "mlp", "embedding_dim": 8, "width": 16},
                          "objective": {"loss": loss}, "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
                          "eval": {"metrics": metrics, "every_epochs": 0}})
    result = train(spec, load_dataset(spec))
    assert set(result.metrics) == set(metrics) and all(math.isfinite(v) for v in result.metrics.values())


# ---- tolerance ----------------------------------------------------------------------------------


def test_tolerance_is_the_mean_same_class_cosine():
    x, labels = randn(11, DIM, seed=9), torch.tensor([0, 1, 0, 2, 1, 0, 3, 1, 2, 0, 1])
    z = F.normalize(x, dim=1)
    pairs = [float(z[i] @ z[j]) for i in range(11) for j in range(11) if i != j and labels[i] == labels[j]]
    assert tolerance(x, labels) == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    # on unit vectors ||f_i - f_j||^2 = 2 - 2 cos: tolerance = 1 - alignment / 2
    assert tolerance(x, labels) == pytest.approx(1 - alignment(x, labels) / 2, abs=1e-6)
    assert evaluate(["tolerance"], train=None, test=(x, labels)) == {"tolerance": tolerance(x, labels)}
    assert math.isnan(tolerance(x[:3], torch.tensor([0, 1, 2])))
    same = torch.ones(4, DIM)
    assert tolerance(same, torch.zeros(4, dtype=torch.long)) == pytest.approx(1.0)
