"""Label-mixing methods (input, manifold, embedding, cutmix), Metrix, C-Mixup and SupReMix.

Each method is checked for its METHODS.md property, for reducing to its base loss
(lambda = 1 or weight = 0), for detached synthetic points where it says so, for
replaying the same mixing from the same generator state, for lowering its loss
in a few optimizer steps, for training end to end through the loop, and for being
refused by the spec validator in combinations it cannot run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from embedmix.core import losses
from embedmix.core.data import load_dataset
from embedmix.core.losses import PairWeights
from embedmix.core.mixup import METHODS, Batch, build
from embedmix.core.mixup.mixing import (Mix, apply_cutmix, feature_start, kernel_partners, kernel_probs, negative_partners,
                               partners, sample_beta, soft_pair_weights, soft_targets)
from embedmix.core.mixup.metrix import utilization
from embedmix.core.mixup.supremix import draw_mixtures, supremix_loss
from embedmix.core.models import build_net
from embedmix.core.spec import SpecError, validate_spec
from embedmix.core.train import train

BLOBS = {"name": "blobs", "size": 300, "params": {"num_classes": 5, "num_features": 12}}


def make_spec(**over) -> object:
    base = {
        "name": "t",
        "dataset": BLOBS,
        "model": {"encoder": "mlp", "embedding_dim": 16, "width": 32},
        "objective": {"loss": "supcon"},
        "train": {"epochs": 2, "batch_size": 60, "lr": 0.01, "seed": 0},
        "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    }
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) and key != "dataset" else value
    return validate_spec(base)


def setup(spec, n: int = 40, seed: int = 0):
    """(net, method, base loss, preprocessed x, y) for a spec, on the first n training rows."""
    torch.manual_seed(seed)
    data = load_dataset(spec)
    net = build_net(spec.model, data.x_train)
    out_dim = spec.model.projection_dim or spec.model.embedding_dim
    loss = losses.build(spec.objective.loss, num_classes=data.num_classes, embedding_dim=out_dim, **spec.objective.params)
    if hasattr(loss, "fit_targets"):
        loss.fit_targets(data.y_train)
    method = build(spec, loss, num_classes=data.num_classes, embedding_dim=out_dim)
    x = net.encoder.preprocess(data.x_train[:n])
    y = data.y_train[:n]
    return net, method, loss, x, y


def batch_of(x, y, seed: int = 1, view=None) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(x=x, y=y, gen=gen, view=view or (lambda: x), step=0, total_steps=1)


# ------------------------------------------------------------------ primitives


def test_beta_draws_come_from_the_generator_and_have_the_beta_mean():
    a = sample_beta(2.0, 8.0, (20000,), torch.Generator().manual_seed(3))
    b = sample_beta(2.0, 8.0, (20000,), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert abs(a.mean().item() - 0.2) < 0.005 and 0 <= a.min() and a.max() <= 1
    state = torch.get_rng_state()
    sample_beta(1.0, 1.0, (), torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


def test_partners_and_soft_labels():
    gen = torch.Generator().manual_seed(0)
    perm = partners(9, gen)
    assert sorted(perm.tolist()) == list(range(9))
    assert partners(4, gen, "flip").tolist() == [3, 2, 1, 0]
    y = torch.tensor([0, 1, 1, 2, 0, 2])
    p = torch.tensor([1, 0, 3, 2, 5, 4])
    exact = PairWeights.from_labels(y)
    w1 = soft_pair_weights(y, p, torch.tensor(1.0))
    assert torch.equal(w1.pos, exact.pos) and torch.equal(w1.neg, exact.neg)
    w = soft_pair_weights(y, p, torch.tensor(0.3))
    # anchor 0 = 0.3 * (class 0) + 0.7 * (class 1): against sample 1 (class 1) it is 0.7 positive
    assert w.pos[0, 1].item() == pytest.approx(0.7) and w.neg[0, 1].item() == pytest.approx(0.3)
    assert w.pos[0, 4].item() == pytest.approx(0.3) and w.pos[0, 0] == 0 and w.neg[0, 0] == 0
    t = soft_targets(y, p, torch.tensor(0.25), 3)
    assert torch.allclose(t.sum(1), torch.ones(6)) and t[0].tolist() == pytest.approx([0.25, 0.75, 0.0])


def test_cutmix_box_area_sets_lambda_and_lambda_one_is_identity():
    x = torch.randn(4, 1, 8, 8)
    p = torch.tensor([1, 0, 3, 2])
    out, lam = apply_cutmix(x, p, (2, 6, 1, 3))
    assert lam.item() == pytest.approx(1 - 8 / 64)
    assert torch.equal(out[0, :, 2:6, 1:3], x[1, :, 2:6, 1:3]) and torch.equal(out[0, :, :2], x[0, :, :2])
    same, lam1 = apply_cutmix(x, p, (3, 3, 5, 5))
    assert torch.equal(same, x) and lam1.item() == 1.0


def test_feature_is_the_last_stage_before_parameter_free_pooling():
    conv = build_net(make_spec(dataset={"name": "mnist1d", "size": 300}, model={"encoder": "conv1d"}).model, torch.randn(10, 40))
    mlp = build_net(make_spec().model, torch.randn(10, 12))
    assert feature_start(conv.encoder) == len(conv.encoder.blocks) - 1
    assert feature_start(mlp.encoder) == len(mlp.encoder.blocks)


# ------------------------------------------------------------------ input / manifold / embedding / cutmix

GENERIC = [
    ("input", "supcon", {}),
    ("input", "contrastive", {}),
    ("manifold", "multi_similarity", {}),
    ("embedding", "triplet", {}),
    ("input", "proxy_anchor", {}),
    ("manifold", "cross_entropy", {}),
    ("embedding", "normalized_softmax", {}),
    ("input", "ntxent", {"views": 2}),
]


def _unmixed(net, loss, x, y, views: int, two_view: bool):
    """What the loop computes without mixing (views encoded one by one)."""
    zs = [net(v) for v in x.chunk(views)]
    if views == 2 and two_view:
        return loss(zs[0], zs[1])
    return loss(torch.cat(zs), y.repeat(views) if views > 1 else y)


@pytest.mark.parametrize("method,loss_name,objective", GENERIC, ids=[f"{m}-{l}" for m, l, _ in GENERIC])
def test_lambda_one_reproduces_the_unmixed_loss(method, loss_name, objective):
    spec = make_spec(objective={"loss": loss_name, **objective}, mixup={"method": method})
    net, mixer, loss, x, y = setup(spec)
    views = spec.objective.views
    xv = torch.cat([x] * views)
    labels = mixer.labels(y, len(x), x.device)
    perm = torch.randperm(len(xv), generator=torch.Generator().manual_seed(5))
    m = Mix(lam=torch.tensor(1.0), partner=perm, start=1)
    got = mixer.mixed_loss(net, xv, labels, m)
    want = _unmixed(net, loss, xv, y, views, loss.two_view)
    if mixer.class_loss:
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)  # soft one-hot targets: the same value up to rounding
    else:
        assert torch.equal(got, want)


def test_cutmix_lambda_one_reproduces_the_unmixed_loss():
    spec = make_spec(dataset={"name": "digits", "split": {"test_fraction": 0.8}},
                     model={"encoder": "conv2d", "width": 8}, objective={"loss": "supcon"}, mixup={"method": "cutmix"})
    net, mixer, loss, x, y = setup(spec)
    m = Mix(lam=torch.tensor(1.0), partner=torch.arange(len(x)).flip(0), box=(4, 4, 2, 2))
    assert torch.equal(mixer.mixed_loss(net, x, y, m), loss(net(x), y))


@pytest.mark.parametrize("method", ["input", "manifold", "embedding"])
def test_same_generator_state_gives_the_same_mixing(method):
    spec = make_spec(mixup={"method": method, "params": {"per_sample": True}})
    net, mixer, _, x, y = setup(spec)
    a = mixer.batch_loss(net, batch_of(x, y, seed=4))
    b = mixer.batch_loss(net, batch_of(x, y, seed=4))
    c = mixer.batch_loss(net, batch_of(x, y, seed=5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_manifold_block_out_of_range_is_refused_naming_the_param():
    """Refused when the spec is validated, before any training (it was an internal error mid-run)."""
    with pytest.raises(SpecError, match="mixup.params.block: 'mlp' has 2 blocks"):
        make_spec(mixup={"method": "manifold", "params": {"block": 5}})


# ------------------------------------------------------------------ Metrix


def metrix_spec(loss="contrastive", level="feature", mix="pos_neg", weight=0.4, **objective):
    return make_spec(objective={"loss": loss, "params": objective},
                     mixup={"method": "metrix", "alpha": 2.0, "weight": weight, "level": level, "params": {"mix": mix}})


@pytest.mark.parametrize("level", ["input", "feature", "embedding"])
@pytest.mark.parametrize("loss_name,params", [("contrastive", {"neg_margin": 0.5}), ("multi_similarity", {"miner": False})])
def test_metrix_lambda_one_mixed_term_is_the_clean_positive_term(level, loss_name, params):
    spec = metrix_spec(loss_name, level, **params)
    net, mixer, loss, x, y = setup(spec)
    u, v = negative_partners(y, torch.Generator().manual_seed(0))
    assert torch.equal(u, torch.arange(len(y)))  # every sample has a negative here
    clean_loss, mixed = mixer.loss_parts(net, x, y, torch.tensor(1.0), u, v)
    z = net(x)
    pos_only = PairWeights(PairWeights.from_labels(y).pos, torch.zeros(len(y), len(y)))
    assert torch.allclose(mixed, loss(z, weights=pos_only), rtol=1e-6, atol=1e-7)
    assert torch.equal(clean_loss, loss(z, y))


def test_metrix_contrastive_weights_the_two_terms_by_lambda():
    spec = metrix_spec("contrastive", "embedding", neg_margin=1.2)
    net, mixer, loss, x, y = setup(spec)
    u, v = negative_partners(y, torch.Generator().manual_seed(0))
    lam = torch.tensor(0.3)
    z = net(x)
    zm = 0.3 * z[u] + 0.7 * z[v]
    d = torch.cdist(F.normalize(z, dim=1), F.normalize(zm, dim=1))
    active = (y[:, None] == y[u][None, :]) & (torch.arange(len(y))[:, None] != u[None, :])
    pos, neg = d[active], (1.2 - d[active]).relu()
    assert (pos > 0).any() and (neg > 0).any() and (neg == 0).any()
    want = 0.3 * pos[pos > 0].mean() + 0.7 * neg[neg > 0].mean()
    _, mixed = mixer.loss_parts(net, x, y, lam, u, v)
    assert torch.allclose(mixed, want, rtol=1e-5)


def test_metrix_anchor_neg_pairs_each_anchor_with_its_own_mixture():
    spec = metrix_spec(mix="anchor_neg")
    _, mixer, _, _, y = setup(spec)
    u = torch.tensor([0, 2, 3])
    assert torch.equal(mixer.active_pairs(y, u)[:4], torch.eye(4)[:, [0, 2, 3]])


def test_metrix_proxy_anchor_lambda_one_is_the_clean_loss():
    spec = metrix_spec("proxy_anchor", "input")
    net, mixer, loss, x, y = setup(spec)
    u, v = negative_partners(y, torch.Generator().manual_seed(0))
    clean, mixed = mixer.loss_parts(net, x, y, torch.tensor(1.0), u, v)
    assert torch.allclose(mixed, clean, rtol=1e-6)


@pytest.mark.parametrize("level", ["input", "feature"])
def test_metrix_weight_zero_is_the_clean_loss_exactly(level):
    spec = metrix_spec("multi_similarity", level, weight=0.0)
    net, mixer, loss, x, y = setup(spec)
    assert torch.equal(mixer.batch_loss(net, batch_of(x, y)), loss(net(x), y))


def test_metrix_same_generator_state_gives_the_same_loss():
    net, mixer, _, x, y = setup(metrix_spec())
    a, b = (mixer.batch_loss(net, batch_of(x, y, seed=8)) for _ in range(2))
    assert torch.equal(a, b)


def test_utilization_is_deterministic_and_mixed_points_only_bring_training_closer():
    spec = metrix_spec(level="feature")
    net, _, _, _, _ = setup(spec)
    data = load_dataset(spec)
    kw = dict(level="feature", alpha=2.0, seed=0, device=torch.device("cpu"))
    first = utilization(net.encoder, data.x_train, data.y_train, data.x_test, **kw)
    second = utilization(net.encoder, data.x_train, data.y_train, data.x_test, **kw)
    assert first == second and first > 0
    with torch.no_grad():
        net.eval()
        clean = torch.cdist(net.encoder(data.x_test), net.encoder(data.x_train)).amin(dim=1).mean().item()
    assert first <= clean + 1e-5


# ------------------------------------------------------------------ C-Mixup

REGRESSION = {"name": "diabetes"}


def cmix_spec(level="input", sigma=20.0):
    """The in-batch pool: these tests drive the method without a trainer (the train_set pool: test_faithfulness)."""
    return make_spec(dataset=REGRESSION, objective={"loss": "mse"}, eval={"metrics": ["rmse"]},
                     mixup={"method": "c_mixup", "alpha": 2.0, "level": level,
                            "params": {"sigma": sigma, "partner_pool": "batch"}})


def test_c_mixup_partners_follow_the_kernel():
    """Chi-square goodness of fit of the drawn partners to P(j|i) ~ exp(-|y_i - y_j|^2 / (2 sigma^2))."""
    y = torch.tensor([0.0, 0.3, 1.0, 1.2, 2.5, 4.0])
    sigma = 1.0
    probs = kernel_probs(y, sigma)
    expected = torch.exp(-(y[:, None] - y[None, :]) ** 2 / (2 * sigma**2)).double()
    assert torch.allclose(probs, expected / expected.sum(1, keepdim=True))
    gen = torch.Generator().manual_seed(0)
    draws = 3000
    counts = torch.zeros(6, 6, dtype=torch.long)
    for _ in range(draws):
        j = kernel_partners(y, sigma, gen)
        counts[torch.arange(6), j] += 1
    for i in range(6):
        p = chisquare(counts[i].numpy(), (probs[i] * draws).numpy()).pvalue
        assert p > 1e-3, (i, counts[i].tolist(), p)


@pytest.mark.parametrize("level", ["input", "manifold"])
def test_c_mixup_lambda_one_is_plain_mse(level):
    net, mixer, loss, x, y = setup(cmix_spec(level))
    partner = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    assert torch.equal(mixer.mixed_loss(net, x, y, partner, torch.tensor(1.0)), loss(net(x), y))


def test_c_mixup_mixes_targets_with_the_same_lambda_and_replays():
    net, mixer, loss, x, y = setup(cmix_spec())
    p1, l1 = mixer.draw(y, torch.Generator().manual_seed(2))
    p2, l2 = mixer.draw(y, torch.Generator().manual_seed(2))
    assert torch.equal(p1, p2) and torch.equal(l1, l2)
    want = loss(net(l1 * x + (1 - l1) * x[p1]), l1 * y + (1 - l1) * y[p1])
    assert torch.allclose(mixer.mixed_loss(net, x, y, p1, l1), want)


# ------------------------------------------------------------------ SupReMix


def test_supremix_mix_pos_labels_equal_their_anchors():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 30, (48,)).float()
    mixtures = draw_mixtures(y, window=5, beta_a=2.0, beta_b=8.0, gen=gen)
    assert mixtures.pos_mask.any()
    i, j = mixtures.pos_mask.nonzero(as_tuple=True)
    k = mixtures.pos_partner[i, j]
    labels = mixtures.pos_labels(y)[i, j]
    assert torch.allclose(labels, y[i].double(), rtol=0, atol=1e-9)
    assert ((y[j] < y[i]) & (y[i] - y[j] < 5) & (y[k] > y[i]) & (y[k] - y[i] < 5)).all()
    coef = mixtures.pos_coef[i, j]
    assert ((coef > 0) & (coef < 1)).all()
    # mix-neg: one per (anchor, different target), anchor weight ~ Beta(2, 8)
    assert torch.equal(mixtures.neg_mask, y[:, None] != y[None, :])
    a = mixtures.neg_coef[mixtures.neg_mask]
    assert abs(a.mean().item() - 0.2) < 0.02
    neg_labels = mixtures.neg_labels(y)[mixtures.neg_mask]
    assert (neg_labels != y[:, None].expand(48, 48)[mixtures.neg_mask].double()).all()


def _oracle(f, y, mixtures, tau):
    """Per-anchor loop with the mixtures materialised (detached): the definition, O(N^2 d) memory."""
    total, count = 0.0, 0
    for i in range(len(f)):
        neg, pos = mixtures.embeddings(f, i)
        assert not neg.requires_grad and not pos.requires_grad
        others = [a for a in range(len(f)) if a != i]
        real = f[others] @ f[i] / tau
        neg_l, pos_l = neg @ f[i] / tau, pos @ f[i] / tau
        real_w = (y[others] - y[i]).abs() + 1
        ks = mixtures.neg_mask[i].nonzero(as_tuple=True)[0]
        neg_w = (1 - mixtures.neg_coef[i, ks]) * (y[ks] - y[i]).abs() + 1
        den = torch.logsumexp(torch.cat([real + real_w.log(), neg_l + neg_w.log(), pos_l]), 0)
        pos_logits = torch.cat([real[y[others] == y[i]], pos_l])
        if len(pos_logits):
            total = total + den - pos_logits.mean()
            count += 1
    return total / count


def test_supremix_mixtures_carry_no_gradient_and_the_loss_is_the_definition():
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 8, (10,)).float().repeat(2)
    f0 = torch.randn(20, 6, dtype=torch.float64)
    mixtures = draw_mixtures(y, window=3, beta_a=2.0, beta_b=8.0, gen=gen)
    f1 = F.normalize(f0.clone().requires_grad_(), dim=1)
    got = supremix_loss(f1, y, mixtures, 0.3)
    base = f0.clone().requires_grad_()
    want = _oracle(F.normalize(base, dim=1), y.double(), mixtures, 0.3)
    assert torch.allclose(got, want, rtol=1e-10)
    leaf = f0.clone().requires_grad_()
    g_got, = torch.autograd.grad(supremix_loss(F.normalize(leaf, dim=1), y, mixtures, 0.3), leaf)
    g_want, = torch.autograd.grad(want, base)
    assert torch.allclose(g_got, g_want, rtol=1e-8, atol=1e-12)


def test_supremix_without_mixtures_and_magnifying_is_supcon():
    y = torch.tensor([1.0, 2.0, 2.0, 3.0, 5.0, 1.0]).repeat(2)
    f = torch.randn(12, 5, dtype=torch.float64)
    classes = torch.unique(y, return_inverse=True)[1]
    want = losses.build("supcon", temperature=0.3)(f, classes)
    assert torch.allclose(supremix_loss(F.normalize(f, dim=1), y, None, 0.3, magnify=False), want, rtol=1e-12)


def supremix_spec():
    return make_spec(dataset=REGRESSION, objective={"loss": "supcon", "views": 2}, eval={"metrics": ["rmse"]},
                     mixup={"method": "supremix", "params": {"window": 20}})


def test_supremix_same_generator_state_gives_the_same_mixing():
    net, mixer, _, x, y = setup(supremix_spec())
    a, b = (mixer.batch_loss(net, batch_of(x, y, seed=3)) for _ in range(2))
    assert torch.equal(a, b)
    m1 = draw_mixtures(y, 20, 2.0, 8.0, torch.Generator().manual_seed(3))
    m2 = draw_mixtures(y, 20, 2.0, 8.0, torch.Generator().manual_seed(3))
    assert all(torch.equal(getattr(m1, k), getattr(m2, k)) for k in ("neg_coef", "pos_partner", "pos_mask"))


# ------------------------------------------------------------------ training


def training_specs():
    digits = {"name": "digits", "split": {"test_fraction": 0.8}}
    return {
        "input": make_spec(mixup={"method": "input"}),
        "manifold": make_spec(objective={"loss": "cross_entropy"}, mixup={"method": "manifold", "alpha": 2.0}),
        "embedding": make_spec(objective={"loss": "proxy_anchor"}, mixup={"method": "embedding"}),
        "cutmix": make_spec(dataset=digits, model={"encoder": "conv2d", "width": 8}, mixup={"method": "cutmix"}),
        "metrix": metrix_spec("multi_similarity", "feature"),
        "c_mixup": cmix_spec(),
        "supremix": supremix_spec(),
    }


@pytest.mark.parametrize("name", list(training_specs()))
def test_a_few_steps_on_one_batch_reduce_the_loss(name):
    """The same batch and the same mixing (the generator reseeded) every step: the loss must go down."""
    spec = training_specs()[name]
    net, mixer, loss, x, y = setup(spec, n=48)
    params = list(net.parameters()) + list(loss.parameters()) + list(mixer.parameters())
    opt = torch.optim.Adam(params, lr=0.01)
    values = []
    for _ in range(12):
        value = mixer.batch_loss(net, batch_of(x, y, seed=11))
        opt.zero_grad()
        value.backward()
        opt.step()
        values.append(value.item())
    assert values[-1] < values[0], values


def test_every_method_trains_end_to_end():
    specs = training_specs()
    assert set(specs) == {"input", "manifold", "embedding", "cutmix", "metrix", "c_mixup", "supremix"} <= set(METHODS)
    for name, spec in specs.items():
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 1})})
        result = train(spec, load_dataset(spec))
        assert result.step > 0 and result.metrics, name
        assert all(v == v for v in result.metrics.values()), (name, result.metrics)
        if name == "metrix":
            assert result.metrics["utilization"] > 0


class _StopAfter:
    def __init__(self, step):
        self.stop, self.step, self.blobs = step, 0, []

    def on_progress(self, p):
        self.step = p.step

    def on_metrics(self, step, epoch, values):
        pass

    def on_checkpoint(self, state, step, epoch):
        self.blobs.append(state)

    def should_stop(self):
        return self.step >= self.stop


def test_resume_mid_epoch_is_bit_exact_with_mixing():
    """All mixing draws come from the checkpointed generator, so a resumed run continues the same sequence."""
    spec = metrix_spec("proxy_anchor", "input")
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"dropout": 0.1})})
    data = load_dataset(spec)
    straight = train(spec, data).encoder.state_dict()
    rec = _StopAfter(5)
    assert train(spec, data, rec).stopped
    resumed = train(spec, data, resume=rec.blobs[-1]).encoder.state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_method_does_not_put_the_loss_parameters_in_the_optimizer_twice():
    net, mixer, loss, _, _ = setup(metrix_spec("proxy_anchor"))
    assert not list(mixer.parameters())
    assert mixer.base_loss is loss


# ------------------------------------------------------------------ refused combinations


def _fields(data) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        validate_spec(data)
    return [(e["field"], e["message"]) for e in info.value.errors]


def _raw(**over):
    base = {"dataset": BLOBS, "objective": {"loss": "supcon"}, "train": {"batch_size": 60}}
    base.update(over)
    return base


def test_invalid_combinations_are_refused_naming_both_fields():
    errors = _fields(_raw(mixup={"method": "metrix", "alpha": 2.0}))
    assert any(f == "mixup.method" and "objective.loss" in m and "supcon" in m for f, m in errors), errors
    errors = _fields(_raw(objective={"loss": "mse"}, mixup={"method": "c_mixup"}))
    assert any(f == "mixup.method" and "dataset" in m and "classification" in m for f, m in errors), errors
    errors = _fields(_raw(dataset={"name": "mnist1d", "size": 300}, model={"encoder": "conv1d"}, mixup={"method": "cutmix"}))
    assert any(f == "mixup.method" and "rank" in m for f, m in errors), errors
    errors = _fields(_raw(dataset=REGRESSION, mixup={"method": "supremix"}))
    assert any(f == "mixup.method" and "objective.views" in m for f, m in errors), errors
    errors = _fields(_raw(objective={"loss": "contrastive"}, mixup={"method": "metrix", "level": "manifold"}))
    assert any(f == "mixup.level" and "metrix" in m for f, m in errors), errors


def test_many_samples_draw_negatives_uniformly_without_a_pairwise_matrix():
    """Metrix's utilization draws a negative for every training row: no (n, n) matrix (2 GB at n = 16,000)."""
    import resource

    from embedmix.core.mixup.mixing import PAIRWISE_NEGATIVES_MAX

    n = 40_000
    y = torch.arange(n) % 4
    y[:10] = 9  # a small class: its rows' partners are spread over all n - 10 other rows
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    u, v = negative_partners(y, torch.Generator().manual_seed(0))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # kB; the matrix would be 12.8 GB
    assert n > PAIRWISE_NEGATIVES_MAX and len(u) == n and (y[u] != y[v]).all()
    partners_of_class_0 = y[v[y[u] == 0]]
    share = torch.bincount(partners_of_class_0, minlength=10).double() / len(partners_of_class_0)
    expected = torch.bincount(y[y != 0], minlength=10).double() / (y != 0).sum()
    assert torch.allclose(share, expected, atol=0.01)
