"""Faithfulness options: each setting equals a float64 reference written from the official code it names.

For every option the reference below is a transcription of the official formula
(repository and file in its docstring), given the same inputs and the same draws
(lambda, partners, sampled positives) as embedmix; loss and gradient must agree
to ~1e-10. Each option's two settings must also differ on the same input (the
option is not a no-op), and the spec validator must refuse unknown values.

Two findings of reading the official code are pinned here as well: openmixup's
shipped ClsMixupHead passes avg_factor = batch size, so its decoupled loss is the
all-rows mean (reduction "all_rows"), and only `soft_mix_cross_entropy` called
without avg_factor averages the mixed and the other rows separately ("openmixup").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare
from sklearn.neighbors import KernelDensity

from embedmix.core import catalog, losses
from embedmix.core.array_train import ArrayTrainer
from embedmix.core.data import load_dataset
from embedmix.core.losses import PairWeights
from embedmix.core.losses.infonce import sample_positives
from embedmix.core.mixup import Batch, build
from embedmix.core.mixup.barlow import mixed_barlow_regulariser
from embedmix.core.mixup.classification import decoupled_mixup_loss, mrl_term
from embedmix.core.mixup.mixing import kernel_partners, kernel_probs
from embedmix.core.models import build_net
from embedmix.core.spec import SpecError, validate_spec
from embedmix.core.train import train
from tests.references import assert_same

BLOBS = {"name": "blobs", "size": 120, "params": {"num_classes": 4, "num_features": 6}}


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def loss_and_param_grads(fn, module: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    value = fn()
    value.backward()
    return value.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]


def assert_same_in_params(ours, reference, module: torch.nn.Module, rtol: float = 1e-10) -> None:
    """Loss and every parameter gradient of `module` agree between two closures (float64 by default;
    the methods run their nets in float32, so a method-level check passes a float32 tolerance)."""
    v1, g1 = loss_and_param_grads(ours, module)
    v2, g2 = loss_and_param_grads(reference, module)
    torch.testing.assert_close(v1, v2, rtol=rtol, atol=rtol * 1e-2)
    assert len(g1) == len(g2) > 0
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=10 * rtol, atol=rtol * 1e-2)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def spec_of(**over) -> object:
    body = {
        "name": "t",
        "dataset": BLOBS,
        "model": {"encoder": "mlp", "embedding_dim": 8, "width": 16},
        "objective": {"loss": "cross_entropy"},
        "train": {"epochs": 1, "batch_size": 40, "lr": 0.01, "seed": 3},
        "eval": {"metrics": [], "every_epochs": 0},
    }
    body.update(over)
    return validate_spec(body)


def fields_of(body: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        validate_spec(body)
    return {e["field"]: e["message"] for e in info.value.errors}


# ============================================================ C-Mixup: partner_pool


def cmixup_sample_rates(y_train: np.ndarray, bandwidth: float) -> np.ndarray:
    """huaxiuyao/C-Mixup src/algorithm.py get_mixup_sample_rate (kde): row i is a Gaussian KDE fitted on y_i,
    scored at every training target, exponentiated and normalised over all N training rows."""
    y = y_train.reshape(len(y_train), -1)
    rates = []
    for i in range(len(y)):
        kd = KernelDensity(kernel="gaussian", bandwidth=bandwidth).fit(y[i].reshape(-1, y.shape[1]))
        each_rate = np.exp(kd.score_samples(y))
        rates.append(each_rate / np.sum(each_rate))
    return np.array(rates)


def cmixup_official_loss(net, head, x_train, y_train, idx_1, idx_2, lam, manifold):
    """One step of src/algorithm.py train (mixtype kde): X1, X2 = x_train[idx_1], x_train[idx_2]; the loss of the
    model on lam X1 + (1 - lam) X2 (or Learner.forward_mixup: block_1 on each, then mixed) against the mixed target.
    The model is embedmix's net and head; its input standardisation is part of the model, so it sees raw rows."""
    x1, x2 = x_train[idx_1], x_train[idx_2]
    y1, y2 = y_train[idx_1], y_train[idx_2]
    mixup_y = y1 * lam + y2 * (1 - lam)
    if manifold:
        h1 = net.encoder.hidden(net.encoder.preprocess(x1), 0, 1)
        h2 = net.encoder.hidden(net.encoder.preprocess(x2), 0, 1)
        pred = net(lam * h1 + (1 - lam) * h2, 1)
    else:
        pred = net(net.encoder.preprocess(x1 * lam + x2 * (1 - lam)))
    return head(pred, mixup_y)


def cmix_parts(pool: str, level: str = "input", sigma: float = 30.0):
    spec = spec_of(dataset={"name": "diabetes"}, objective={"loss": "mse"}, eval={"metrics": ["rmse"], "every_epochs": 0},
                   mixup={"method": "c_mixup", "level": level, "params": {"sigma": sigma, "partner_pool": pool}})
    data = load_dataset(spec)
    torch.manual_seed(0)
    net = build_net(spec.model, data.x_train).double()
    head = losses.build("mse", embedding_dim=spec.model.embedding_dim).double()
    head.fit_targets(data.y_train)
    method = build(spec, head, num_classes=None, embedding_dim=spec.model.embedding_dim)
    x_train, y_train = data.x_train.double(), data.y_train.double()
    method.use_train_set(y_train, lambda idx: x_train[idx])
    return spec, net, head, method, x_train, y_train


def test_c_mixup_train_set_probabilities_are_the_official_kde_rates_over_all_training_rows():
    y_train = torch.tensor([3.0, 7.5, 8.0, 12.0, 20.0, 21.0, 40.0, 41.5], dtype=torch.float64)
    batch = torch.tensor([1, 4, 6])
    for sigma in (1.0, 5.0):
        official = torch.from_numpy(cmixup_sample_rates(y_train.numpy(), sigma))[batch]
        torch.testing.assert_close(kernel_probs(y_train[batch], sigma, y_train), official, rtol=1e-10, atol=1e-14)


def test_c_mixup_train_set_partners_follow_the_pool_kernel():
    """Chi-square fit of the drawn training rows to the official rates, rows outside the batch included."""
    y_train = torch.tensor([0.0, 0.4, 1.0, 1.3, 2.0, 2.2, 3.5, 4.0])
    y = y_train[[0, 3, 5]]
    probs = torch.from_numpy(cmixup_sample_rates(y_train.double().numpy(), 1.0))[[0, 3, 5]]
    gen = torch.Generator().manual_seed(0)
    draws = 2000
    counts = torch.zeros(3, len(y_train), dtype=torch.long)
    for _ in range(draws):
        counts[torch.arange(3), kernel_partners(y, 1.0, gen, y_train)] += 1
    for i in range(3):
        keep = probs[i] * draws > 1.0  # cells expected at least once
        observed, expected = counts[i][keep].double(), probs[i][keep] * draws
        expected = expected * observed.sum() / expected.sum()
        assert chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3, (i, counts[i].tolist())


@pytest.mark.parametrize("level", ["input", "manifold"])
def test_c_mixup_train_set_loss_and_gradient_equal_the_official_step(level):
    _, net, head, method, x_train, y_train = cmix_parts("train_set", level)
    idx_1 = torch.arange(10, 42)
    partner, lam = method.draw(y_train[idx_1], torch.Generator().manual_seed(4))
    assert (partner >= 42).any() or (partner < 10).any()  # partners come from the whole training set
    x = net.encoder.preprocess(x_train[idx_1])
    lam = lam.double()
    assert_same_in_params(lambda: method.mixed_loss(net, x, y_train[idx_1], partner, lam),
                          lambda: cmixup_official_loss(net, head, x_train, y_train, idx_1, partner, lam, level == "manifold"),
                          net)


def test_c_mixup_batch_pool_stays_the_in_batch_kernel_and_the_two_pools_differ():
    losses_ = {}
    for pool in ("batch", "train_set"):
        _, net, head, method, x_train, y_train = cmix_parts(pool)
        idx_1 = torch.arange(32)
        x = net.encoder.preprocess(x_train[idx_1])
        partner, lam = method.draw(y_train[idx_1], torch.Generator().manual_seed(4))
        if pool == "batch":
            assert int(partner.max()) < 32
            reference = cmixup_official_loss(net, head, x_train[idx_1], y_train[idx_1], torch.arange(32), partner,
                                             lam.double(), False)
            torch.testing.assert_close(method.mixed_loss(net, x, y_train[idx_1], partner, lam.double()), reference,
                                       rtol=1e-10, atol=1e-12)
        losses_[pool] = method.mixed_loss(net, x, y_train[idx_1], partner, lam.double()).item()
    assert abs(losses_["batch"] - losses_["train_set"]) > 1e-3 * abs(losses_["batch"])


def test_c_mixup_train_set_without_a_training_set_is_refused():
    spec = spec_of(dataset={"name": "diabetes"}, objective={"loss": "mse"}, eval={"metrics": ["rmse"], "every_epochs": 0},
                   mixup={"method": "c_mixup"})
    assert spec.mixup.params["partner_pool"] == "train_set"  # the default
    method = build(spec, losses.build("mse", embedding_dim=8), num_classes=None, embedding_dim=8)
    with pytest.raises(RuntimeError, match="use_train_set"):
        method.draw(torch.rand(4), torch.Generator())


def test_c_mixup_trainer_hands_over_the_training_set_and_trains():
    spec = spec_of(dataset={"name": "diabetes"}, objective={"loss": "mse"}, eval={"metrics": ["rmse"], "every_epochs": 0},
                   mixup={"method": "c_mixup", "params": {"sigma": 20.0}})
    data = load_dataset(spec)
    trainer = ArrayTrainer(spec, data)
    assert trainer.method.pool_y is trainer.y
    rows = torch.tensor([0, 5, len(data.x_train) - 1])
    assert torch.equal(trainer.method.fetch(rows), data.x_train[rows])
    result = train(spec, data)
    assert np.isfinite(result.metrics["rmse"])


# ============================================================ Decoupled Mixup: reduction


def openmixup_eta_weight(lam: float, eta: float, mode: str) -> list[float]:
    """openmixup/models/heads/cls_mixup_head.py ClsMixupHead.loss, eta_weight=dict(eta, mode, thr=0.5) with
    lam_scale_mode 'pow', lam_thr 1, lam_idx 1 (the configs' linear rescale): lambda_adjust(l) = l for l < 1."""
    below_thr = lam < 0.5
    if mode == "less":
        weights = [lam, 0] if below_thr else [0, 1 - lam]
    elif mode == "more":
        weights = [lam, 0] if not below_thr else [0, 1 - lam]
    else:
        weights = [lam, 1 - lam]
    return [eta * min(1, w) if w > 0 else w for w in weights]


def openmixup_soft_mix_cross_entropy(pred, label, eta_weight, avg_factor=None):
    """openmixup/models/losses/cross_entropy_loss.py soft_mix_cross_entropy (no class weight, no smoothing),
    with weight_reduce_loss's 'mean' (sum / avg_factor, or the mean when avg_factor is None)."""
    def reduce(loss):
        return loss.sum() / avg_factor if avg_factor is not None else loss.mean()

    _eps = 1e-3
    mask_one = (label > _eps).sum(dim=-1)
    mix_num = max(mask_one)
    mask_one = mask_one >= mix_num
    if mask_one.sum() < label.size(0):
        pred_one, label_one = pred[~mask_one, :], label[~mask_one, :]
        pred, label = pred[mask_one, :], label[mask_one, :]
    else:
        pred_one, label_one = None, None
    bs, cls_num = label.size()
    mask_lam_k = label > _eps
    lam_k = label[0, label[0, :] > _eps]
    loss = (-label * F.log_softmax(pred, dim=-1)).sum(dim=-1)
    if len(set(lam_k.tolist())) == lam_k.size(0) and lam_k.size(0) > 1:
        for i in range(lam_k.size(0)):
            mask_lam_i = (label == lam_k[i]) | ~mask_lam_k
            pred_lam_i = pred.reshape([1, bs, -1])[:, mask_lam_i].reshape([-1, cls_num + 1 - lam_k.size(0)])
            label_lam_i = label.reshape([1, bs, -1])[:, mask_lam_i].reshape([-1, cls_num + 1 - lam_k.size(0)])
            label_lam_i = (label_lam_i > 0).to(pred.dtype)
            loss_global = -label_lam_i * F.log_softmax(pred_lam_i, dim=-1)
            loss = loss + eta_weight[i] * loss_global.sum(dim=-1)
    loss = reduce(loss)
    if label_one is not None:
        loss = loss + reduce((-label_one * F.log_softmax(pred_one, dim=-1)).sum(dim=-1))
    return loss


def decoupled_inputs(num_classes: int = 5):
    """Logits and mixed labels with same-class pairs; the first mixed row has y_a < y_b (see the report on ordering)."""
    logits = randn(12, num_classes, seed=1) * 2.0
    y_a = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 2, 1])
    y_b = torch.tensor([3, 1, 0, 3, 2, 4, 1, 1, 0, 2, 2, 4])  # rows 1, 3, 6, 10: the same class
    return logits, y_a, y_b


@pytest.mark.parametrize("mode", ["both", "less", "more"])
@pytest.mark.parametrize("lam", [0.3, 0.8])
def test_decoupled_mixup_reductions_equal_openmixup_with_and_without_avg_factor(mode, lam):
    logits, y_a, y_b = decoupled_inputs()
    c, eta = logits.shape[1], 0.7
    label = lam * F.one_hot(y_a, c).double() + (1 - lam) * F.one_hot(y_b, c).double()
    weights = openmixup_eta_weight(lam, eta, mode)
    for reduction, avg_factor in (("all_rows", len(logits)), ("openmixup", None)):
        assert_same(lambda z, r=reduction: decoupled_mixup_loss(z, y_a, y_b, lam, eta=eta, mode=mode, reduction=r),
                    lambda z, a=avg_factor: openmixup_soft_mix_cross_entropy(z, label, weights, a), logits)


def test_decoupled_mixup_reductions_differ_and_agree_without_same_class_rows():
    logits, y_a, y_b = decoupled_inputs()
    values = {r: decoupled_mixup_loss(logits, y_a, y_b, 0.3, eta=0.7, mode="both", reduction=r)
              for r in ("all_rows", "openmixup")}
    assert abs(float(values["all_rows"] - values["openmixup"])) > 0.1
    mixed = y_a != y_b
    same = [decoupled_mixup_loss(logits[mixed], y_a[mixed], y_b[mixed], 0.3, eta=0.7, mode="both", reduction=r)
            for r in ("all_rows", "openmixup")]
    torch.testing.assert_close(same[0], same[1], rtol=1e-12, atol=0.0)


def test_decoupled_mixup_method_applies_its_reduction():
    spec = spec_of(mixup={"method": "decoupled_mixup", "params": {"eta": 0.5, "reduction": "openmixup"}})
    data = load_dataset(spec)
    torch.manual_seed(0)
    net = build_net(spec.model, data.x_train)
    head = losses.build("cross_entropy", num_classes=data.num_classes, embedding_dim=8)
    method = build(spec, head, num_classes=data.num_classes, embedding_dim=8)
    assert method.reduction == "openmixup"
    x, y = net.encoder.preprocess(data.x_train[:40]), data.y_train[:40]
    batch = Batch(x=x, y=y, gen=torch.Generator().manual_seed(2), view=lambda: x, step=0, total_steps=1)
    lam, perm, _ = method.draw(torch.Generator().manual_seed(2), 40, len(net.encoder.blocks))
    logits = head.logits(net(lam * x + (1 - lam) * x[perm]))
    want = decoupled_mixup_loss(logits, y, y[perm], lam, eta=0.5, mode="both", reduction="openmixup")
    torch.testing.assert_close(method.batch_loss(net, batch), want, rtol=1e-12, atol=0.0)


# ============================================================ Barlow Twins: standardise


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    """facebookresearch/barlowtwins main.py (and wgcban/mix-bt main.py) off_diagonal."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_facebook(z1, z2, lambd):
    """facebookresearch/barlowtwins main.py BarlowTwins.forward: BatchNorm1d(affine=False) in training mode."""
    bn = torch.nn.BatchNorm1d(z1.shape[1], affine=False).double()
    c = bn(z1).T @ bn(z2) / z1.shape[0]
    return torch.diagonal(c).add(-1).pow(2).sum() + lambd * off_diagonal(c).pow(2).sum()


def mixbt_step(out_1, out_2, out_m, index, alpha, lmbda, mixup_loss_scale):
    """wgcban/mix-bt main.py train: loss_bt + loss_mix, unbiased std without eps, c = Z^T Z / batch_size."""
    batch_size = out_1.shape[0]
    out_1_norm = (out_1 - out_1.mean(dim=0)) / out_1.std(dim=0)
    out_2_norm = (out_2 - out_2.mean(dim=0)) / out_2.std(dim=0)
    c = torch.matmul(out_1_norm.T, out_2_norm) / batch_size
    loss_bt = torch.diagonal(c).add(-1).pow(2).sum() + lmbda * off_diagonal(c).pow(2).sum()
    out_m_norm = (out_m - out_m.mean(dim=0)) / out_m.std(dim=0)
    cc_m_1 = torch.matmul(out_m_norm.T, out_1_norm) / batch_size
    cc_m_1_gt = alpha * torch.matmul(out_1_norm.T, out_1_norm) / batch_size + \
        (1 - alpha) * torch.matmul(out_2_norm[index, :].T, out_1_norm) / batch_size
    cc_m_2 = torch.matmul(out_m_norm.T, out_2_norm) / batch_size
    cc_m_2_gt = alpha * torch.matmul(out_1_norm.T, out_2_norm) / batch_size + \
        (1 - alpha) * torch.matmul(out_2_norm[index, :].T, out_2_norm) / batch_size
    loss_mix = mixup_loss_scale * lmbda * ((cc_m_1 - cc_m_1_gt).pow(2).sum() + (cc_m_2 - cc_m_2_gt).pow(2).sum())
    return loss_bt + loss_mix


def bt_views(batch: int = 24, dim: int = 6):
    a = randn(batch, dim, seed=5)
    return a, a + 0.4 * randn(batch, dim, seed=6), 0.5 * a + randn(batch, dim, seed=7)


@pytest.mark.parametrize("lambd", [0.0051, 0.3])
def test_barlow_twins_biased_eps_equals_facebook_and_unbiased_equals_mix_bt(lambd):
    a, b, _ = bt_views()
    biased = losses.build("barlow_twins", lambda_offdiag=lambd)
    assert biased.standardise == "biased_eps"  # the default
    assert_same(biased, lambda x, y: barlow_facebook(x, y, lambd), a, b)
    unbiased = losses.build("barlow_twins", lambda_offdiag=lambd, standardise="unbiased")
    no_mix = torch.arange(len(a))
    assert_same(unbiased, lambda x, y: mixbt_step(x, y, x, no_mix, 1.0, lambd, 0.0), a, b)


@pytest.mark.parametrize("batch,at_least", [(16, 0.3), (128, 0.05)])
def test_barlow_twins_standardisations_differ_most_at_small_batches(batch, at_least):
    a = randn(batch, 32, seed=1)
    b = a + 0.5 * randn(batch, 32, seed=2)
    values = [float(losses.build("barlow_twins", standardise=s)(a, b)) for s in ("biased_eps", "unbiased")]
    assert abs(values[1] - values[0]) / values[0] > at_least, values


def test_mixed_barlow_twins_unbiased_equals_the_mix_bt_step():
    a, b, m = bt_views()
    perm = torch.randperm(len(a), generator=torch.Generator().manual_seed(3))
    lam, lmbda, l_reg = 0.37, 0.0051, 4.0
    loss = losses.build("barlow_twins", lambda_offdiag=lmbda, standardise="unbiased")

    def ours(za, zb, zm):
        return loss(za, zb) + l_reg * lmbda * mixed_barlow_regulariser(za, zb, zm, perm, lam, loss.standardise)

    assert_same(ours, lambda za, zb, zm: mixbt_step(za, zb, zm, perm, lam, lmbda, l_reg), a, b, m)
    biased = mixed_barlow_regulariser(a, b, m, perm, lam, "biased_eps")
    assert abs(float(biased - mixed_barlow_regulariser(a, b, m, perm, lam, "unbiased"))) > 1e-3 * float(biased)


def test_mixed_barlow_twins_method_standardises_as_its_loss_says():
    spec = spec_of(objective={"loss": "barlow_twins", "views": 2, "params": {"standardise": "unbiased"}},
                   mixup={"method": "mixed_barlow_twins"})
    data = load_dataset(spec)
    torch.manual_seed(0)
    net = build_net(spec.model, data.x_train)
    loss = losses.build("barlow_twins", **spec.objective.params)
    method = build(spec, loss, num_classes=None, embedding_dim=8)
    x_a = net.encoder.preprocess(data.x_train[:32])
    x_b = x_a + 0.1 * randn(*x_a.shape, seed=8).float()
    lam, perm = method.draw(torch.Generator().manual_seed(1), 32)

    def ours():
        base, reg = method.loss_given(net, x_a, x_b, lam, perm)
        return base + method.l_reg * loss.lambda_offdiag * reg

    def official():
        return mixbt_step(net(x_a), net(x_b), net(lam * x_a + (1 - lam) * x_b[perm]), perm, lam,
                          loss.lambda_offdiag, method.l_reg)

    assert_same_in_params(ours, official, net, rtol=1e-5)


# ============================================================ DEXML: positives


def dexml_decoupled_softmax(x, labels, temperature, sampled=None):
    """nilesh2797/DEXML losses.py SimLoss.compute_loss, loss_criterion 'decoupled-softmax', written densely.

    sim = cos / tau (nets.py); each query's label set is the other rows of the batch. With `sampled` (one
    column per query: loss_sample True), the positives not sampled get -100; then the sampled positives get
    -100 in sim_neg, log_denom = logaddexp(logsumexp(sim_neg), sim_pos), loss = -sum(log_prob / num_pos) / B.
    """
    z = F.normalize(x, dim=1)
    n = len(labels)
    eye = torch.eye(n, dtype=torch.bool)
    sim = (z @ z.T / temperature).masked_fill(eye, float("-inf"))  # the query itself is no label
    positive = (labels[:, None] == labels[None, :]) & ~eye
    if sampled is not None:
        chosen = torch.zeros_like(positive)
        chosen[torch.arange(n), sampled] = True
        sim = sim.masked_fill(positive & ~chosen, -100.0)
        positive = chosen
    pos_rows, pos_cols = positive.nonzero(as_tuple=True)
    num_pos = positive.sum(dim=1)
    sim_pos = sim[pos_rows, pos_cols]
    sim_neg = sim.masked_fill(positive, -100.0)
    log_denom = torch.logaddexp(sim_neg.logsumexp(dim=1)[pos_rows], sim_pos)
    log_prob = sim_pos - log_denom
    return -(log_prob / num_pos[pos_rows]).sum() / n


def dexml_batch():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 0, 2])  # every query has a positive, several have 2-3
    return randn(len(labels), 5, seed=11), labels


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_decoupled_softmax_all_and_sampled_equal_dexml(temperature):
    x, labels = dexml_batch()
    all_loss = losses.build("decoupled_softmax", temperature=temperature)
    assert all_loss.positives == "all"  # the default
    assert_same(lambda e: all_loss(e, labels), lambda e: dexml_decoupled_softmax(e, labels, temperature), x)
    sampled_loss = losses.build("decoupled_softmax", temperature=temperature, positives="sampled")
    sampled_loss.use_generator(torch.Generator().manual_seed(5))
    chosen = sample_positives(PairWeights.from_labels(labels).pos.double(), torch.Generator().manual_seed(5))
    assert (labels[chosen] == labels).all() and (chosen != torch.arange(len(labels))).all()
    assert_same(lambda e: sampled_loss(e, labels), lambda e: dexml_decoupled_softmax(e, labels, temperature, chosen), x)


def test_decoupled_softmax_sampled_replays_from_its_generator_and_differs_from_all():
    x, labels = dexml_batch()
    loss = losses.build("decoupled_softmax", temperature=0.1, positives="sampled")
    values = []
    for seed in (5, 5, 6):
        loss.use_generator(torch.Generator().manual_seed(seed))
        values.append(float(loss(x, labels)))
    assert values[0] == values[1] and values[0] != values[2]
    assert abs(values[0] - float(losses.build("decoupled_softmax", temperature=0.1)(x, labels))) > 1e-3


def test_sampled_positives_are_uniform_over_the_positives_and_follow_soft_weights():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])  # anchor 0 has three positives, anchor 6 none
    pos = PairWeights.from_labels(labels).pos
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_positives(pos, gen) for _ in range(1500)])
    assert (draws[:, 6] == -1).all() and (draws[:, 4] == 5).all()
    counts = torch.bincount(draws[:, 0], minlength=7)
    assert counts[[0, 4, 5, 6]].sum() == 0
    assert chisquare(counts[1:4].numpy()).pvalue > 1e-3
    soft = torch.tensor([[0.0, 0.2, 0.6, 0.2]])
    counts = torch.bincount(torch.cat([sample_positives(soft, gen) for _ in range(2000)]), minlength=4)
    assert counts[0] == 0 and chisquare(counts[1:].numpy(), [400, 1200, 400]).pvalue > 1e-3


def test_decoupled_softmax_sampled_needs_the_runs_generator_and_the_trainer_hands_it_over():
    x, labels = dexml_batch()
    with pytest.raises(RuntimeError, match="use_generator"):
        losses.build("decoupled_softmax", positives="sampled")(x, labels)
    spec = spec_of(objective={"loss": "decoupled_softmax", "params": {"positives": "sampled"}},
                   eval={"metrics": ["precision_at_1"], "every_epochs": 0})
    data = load_dataset(spec)
    assert ArrayTrainer(spec, data).loss.generator is not None
    first, second = train(spec, data), train(spec, data)
    assert first.metrics == second.metrics  # the draws replay with the run's seed


# ============================================================ RankMixup: mrl_rows


def rankmixup_mrl(inputs, targets, mixup, target_re, margin, alpha):
    """cvlab-yonsei/RankMixup calibrate/losses/rankmixup.py RankMixup_MRL.forward (logit differences)."""
    loss_ce = F.cross_entropy(inputs, targets)
    self_mixup_mask = (target_re == 1.0).sum(dim=1).reshape(1, -1)
    self_mixup_mask = self_mixup_mask.sum(dim=0) == 0.0
    diff = mixup.max(dim=1).values.unsqueeze(dim=1) - inputs.max(dim=1).values.unsqueeze(dim=1)
    loss_mixup = (self_mixup_mask * F.relu(diff + margin)).mean()
    return loss_ce + alpha * loss_mixup


def mrl_inputs():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 0, 1])
    perm = torch.tensor([3, 4, 0, 8, 2, 1, 7, 6, 5, 9])  # rows 0, 1, 3, 6, 7, 8, 9: the same class
    return randn(10, 4, seed=2) * 2.0, randn(10, 4, seed=3) * 2.0, y, perm


@pytest.mark.parametrize("lam", [0.35, 0.9])
def test_rankmixup_mrl_rescale_equals_the_official_mrl(lam):
    raw, mixed_logits, y, perm = mrl_inputs()
    onehot = F.one_hot(y, 4).double()
    target_re = onehot * lam + onehot[perm] * (1 - lam)
    mixed = y != y[perm]
    margin, alpha = 2.0, 0.1

    def ours(r, m):
        return F.cross_entropy(r, y) + alpha * mrl_term(r, m, mixed, margin, "rescale")

    assert_same(ours, lambda r, m: rankmixup_mrl(r, y, m, target_re, margin, alpha), raw, mixed_logits)


def test_rankmixup_mrl_zero_keeps_same_class_rows_out_and_the_settings_differ():
    raw, mixed_logits, y, perm = mrl_inputs()
    mixed = y != y[perm]
    terms = F.relu(mixed_logits.max(dim=1).values - raw.max(dim=1).values + 2.0)
    zero = mrl_term(raw, mixed_logits, mixed, 2.0, "zero")
    torch.testing.assert_close(zero, terms[mixed].sum() / len(y), rtol=1e-12, atol=0.0)
    rescale = mrl_term(raw, mixed_logits, mixed, 2.0, "rescale")
    assert abs(float(zero - rescale)) > 0.05 * float(zero)


def test_rankmixup_method_applies_mrl_rows():
    spec = spec_of(mixup={"method": "rankmixup", "params": {"mrl_rows": "rescale"}})
    data = load_dataset(spec)
    torch.manual_seed(0)
    net = build_net(spec.model, data.x_train)
    head = losses.build("cross_entropy", num_classes=data.num_classes, embedding_dim=8)
    method = build(spec, head, num_classes=data.num_classes, embedding_dim=8)
    x, y = net.encoder.preprocess(data.x_train[:40]), data.y_train[:40]
    batch = Batch(x=x, y=y, gen=torch.Generator().manual_seed(2), view=lambda: x, step=0, total_steps=1)
    [(lam, perm)] = method.draw(torch.Generator().manual_seed(2), 40)
    onehot = F.one_hot(y, data.num_classes).float()

    def official():
        return rankmixup_mrl(head.logits(net(x)), y, head.logits(net(lam * x + (1 - lam) * x[perm])),
                             onehot * lam + onehot[perm] * (1 - lam), method.margin, method.weight)

    assert_same_in_params(lambda: method.batch_loss(net, batch), official, net, rtol=1e-5)


# ============================================================ catalog and validation

OPTIONS = {
    # (section, entry, param): (default, choices, a repository its help must name)
    ("mixups", "c_mixup", "partner_pool"): ("train_set", ("train_set", "batch"), "huaxiuyao/C-Mixup"),
    ("mixups", "decoupled_mixup", "reduction"): ("all_rows", ("all_rows", "openmixup"), "openmixup/models/losses"),
    ("losses", "barlow_twins", "standardise"): ("biased_eps", ("biased_eps", "unbiased"), "wgcban/mix-bt"),
    ("losses", "decoupled_softmax", "positives"): ("all", ("all", "sampled"), "nilesh2797/DEXML"),
    ("mixups", "rankmixup", "mrl_rows"): ("zero", ("zero", "rescale"), "cvlab-yonsei/RankMixup"),
}


@pytest.mark.parametrize("key", list(OPTIONS))
def test_each_option_is_in_the_catalog_with_its_default_choices_and_source(key):
    section, entry, name = key
    default, choices, source = OPTIONS[key]
    param = next(p for p in catalog.SECTIONS[section][entry].params if p.name == name)
    assert (param.type, param.default, param.choices) == ("str", default, choices)
    assert source in param.help


BAD = {
    "c_mixup": ({"dataset": {"name": "diabetes"}, "objective": {"loss": "mse"},
                 "eval": {"metrics": ["rmse"], "every_epochs": 0},
                 "mixup": {"method": "c_mixup", "params": {"partner_pool": "queue"}}}, "mixup.params.partner_pool"),
    "decoupled_mixup": ({"mixup": {"method": "decoupled_mixup", "params": {"reduction": "mean"}}}, "mixup.params.reduction"),
    "barlow_twins": ({"objective": {"loss": "barlow_twins", "views": 2, "params": {"standardise": "biased"}}},
                     "objective.params.standardise"),
    "decoupled_softmax": ({"objective": {"loss": "decoupled_softmax", "params": {"positives": "one"}}},
                          "objective.params.positives"),
    "rankmixup": ({"mixup": {"method": "rankmixup", "params": {"mrl_rows": "drop"}}}, "mixup.params.mrl_rows"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_unknown_option_values_are_refused_naming_the_field_and_the_choices(name):
    over, field = BAD[name]
    body = {"name": "t", "dataset": BLOBS, "model": {"encoder": "mlp", "embedding_dim": 8},
            "objective": {"loss": "cross_entropy"}, **over}
    errors = fields_of(body)
    assert field in errors and "must be one of" in errors[field], errors


def test_the_loss_builder_refuses_unknown_values_too():
    with pytest.raises(ValueError, match="standardise"):
        losses.build("barlow_twins", standardise="biased")
    with pytest.raises(ValueError, match="positives"):
        losses.build("decoupled_softmax", positives="one")
