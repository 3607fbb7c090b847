"""AMCL: float64 references (the official code's top-k loss, the exact likelihood form), its defining property (one head
with a fixed temperature is NT-Xent), training with its heads and temperature network checkpointed, the export."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from embedmix.core import catalog
from embedmix.core.array_train import ArrayTrainer
from embedmix.core.data import load_dataset
from embedmix.core.export import export, load_safetensors
from embedmix.core.losses import build
from embedmix.core.spec import SpecError, validate_spec
from embedmix.core.train import train
from tests.callbacks import StopAt

B, DIM = 5, 6
SMALL = {"head_dim": 4, "head_hidden": 7, "temperature_hidden": 5, "beta": 0.05, "tau_min": 0.05, "tau_max": 2.0}


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def small_amcl(seed: int = 0, **params):
    torch.manual_seed(seed)
    return build("amcl", embedding_dim=DIM, **{**SMALL, **params}).double()


def value_and_grads(fn, module: torch.nn.Module, *inputs: torch.Tensor):
    """fn(*inputs) and its gradient with respect to the inputs and to every parameter of `module`."""
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    module.zero_grad(set_to_none=True)
    value = fn(*leaves)
    value.backward()
    grads = [x.grad for x in leaves] + [p.grad.clone() for p in module.parameters() if p.grad is not None]
    module.zero_grad(set_to_none=True)
    return value.detach(), grads


def assert_same(ours, reference, module, *inputs: torch.Tensor) -> None:
    v1, g1 = value_and_grads(ours, module, *inputs)
    v2, g2 = value_and_grads(reference, module, *inputs)
    torch.testing.assert_close(v1, v2, rtol=1e-10, atol=1e-12)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def pair_tau(loss, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The official TemperatureHead: tau_min + (tau_max - tau_min) sigmoid(-<phi(x), phi(y)>), row by row."""
    score = (loss.phi(x) * loss.phi(y)).sum(-1)
    return loss.tau_min + (loss.tau_max - loss.tau_min) * torch.sigmoid(-score)


def official_topk(loss, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
    """LeiWangR/cl amcl/losses.py AMCLNTXentLoss.forward, as read, on the heads' outputs (B, C, d) of our heads.

    Per head and direction: negatives are the other samples of the anchor's own view then of the other view,
    the k most similar kept; -s_pos/tau_pos + mean_k s/tau + beta Omega(tau_pos) - beta sum_k (log tau + 1/tau);
    mean over anchors, mean of the two directions, sum over heads.
    """
    z1 = torch.stack([head(view_a) for head in loss.projections], dim=1)
    z2 = torch.stack([head(view_b) for head in loss.projections], dim=1)
    b, c, d = z1.shape
    beta = loss.beta

    def direction(anchor, positive, negatives):
        anchor, positive, negatives = (F.normalize(t, dim=-1) for t in (anchor, positive, negatives))
        pos_sim = (anchor * positive).sum(-1)
        tau_pos = pair_tau(loss, anchor, positive)
        sim_neg = (anchor[:, None, :] * negatives).sum(-1)
        tau_neg = pair_tau(loss, anchor[:, None, :].expand_as(negatives), negatives)
        k = min(loss.top_k, negatives.size(1))
        vals, idx = sim_neg.topk(k=k, dim=1, largest=True, sorted=False)
        tau_top = tau_neg.gather(1, idx)
        neg = (vals / tau_top).mean(dim=1)
        reg_pos = beta * (0.5 * d * torch.log(tau_pos) + 1 / tau_pos)
        reg_neg = beta * (torch.log(tau_top).sum(dim=1) + (1 / tau_top).sum(dim=1))
        return (-pos_sim / tau_pos + neg + reg_pos - reg_neg).mean()

    eye = torch.eye(b, dtype=torch.bool)
    losses = []
    for h in range(c):
        a, p = z1[:, h], z2[:, h]
        same_view = a.unsqueeze(0).expand(b, -1, -1)[~eye].view(b, b - 1, d)
        other_view = p.unsqueeze(0).expand(b, -1, -1)[~eye].view(b, b - 1, d)
        losses.append(direction(a, p, torch.cat([same_view, other_view], dim=1)))
        losses.append(direction(p, a, torch.cat([other_view, same_view], dim=1)))
    return torch.stack(losses).view(c, 2).mean(dim=1).sum()


def exact_reference(loss, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
    """The likelihood form, anchor by anchor: -log of the positive's share of exp(s/tau - beta Omega(tau)) over
    the positive and the 2B - 2 negatives; each direction's mean over anchors, halved, summed over heads."""
    d = loss.head_dim
    total = torch.zeros((), dtype=view_a.dtype)
    for head in loss.projections:
        a, b = F.normalize(head(view_a), dim=1), F.normalize(head(view_b), dim=1)
        for anchors, partners in ((a, b), (b, a)):
            terms = []
            for i in range(len(anchors)):
                others = [j for j in range(len(anchors)) if j != i]
                candidates = torch.stack([partners[i]] + [partners[j] for j in others] + [anchors[j] for j in others])
                tau = pair_tau(loss, anchors[i].expand_as(candidates), candidates)
                logits = candidates @ anchors[i] / tau - loss.beta * (0.5 * d * torch.log(tau) + 1 / tau)
                terms.append(torch.logsumexp(logits, dim=0) - logits[0])
            total = total + torch.stack(terms).mean() / 2
    return total


def test_top_k_loss_equals_the_official_code():
    loss = small_amcl(heads=2, top_k=3)
    assert_same(loss, lambda a, b: official_topk(loss, a, b), loss, randn(B, DIM), randn(B, DIM, seed=1))


def test_top_k_beyond_the_negatives_keeps_them_all():
    loss = small_amcl(heads=1, top_k=100)
    assert_same(loss, lambda a, b: official_topk(loss, a, b), loss, randn(B, DIM, seed=2), randn(B, DIM, seed=3))


def test_exact_loss_equals_the_likelihood_reference_with_pair_temperatures_that_vary():
    loss = small_amcl(heads=2, top_k=0)
    with torch.no_grad():
        loss.phi[2].weight.mul_(5.0)  # pair scores of a few units: temperatures that differ by a factor of 2
    a, b = randn(B, DIM, seed=4), randn(B, DIM, seed=5)
    u = F.normalize(loss.projections[0](a), dim=1)
    tau = loss.temperatures(u, u).detach()
    assert float(tau.max() / tau.min()) > 1.5  # the check is not about a constant temperature
    assert_same(loss, lambda x, y: exact_reference(loss, x, y), loss, a, b)


def test_one_head_with_a_fixed_temperature_is_ntxent():
    a, b = randn(B, DIM, seed=6), randn(B, DIM, seed=7)
    ntxent = build("ntxent", temperature=0.3)
    fixed = small_amcl(heads=1, adaptive=False, temperature=0.3)
    assert fixed.phi is None and not any(n.startswith("phi") for n in fixed.state_dict())
    head = fixed.projections[0]
    assert_same(fixed, lambda x, y: ntxent(head(x), head(y)), fixed, a, b)
    # The adaptive path at a constant temperature: the regulariser is one constant and cancels, whatever beta.
    adaptive = small_amcl(heads=1, beta=0.5)
    torch.nn.init.zeros_(adaptive.phi[2].weight)
    torch.nn.init.zeros_(adaptive.phi[2].bias)
    middle = (adaptive.tau_min + adaptive.tau_max) / 2
    head = adaptive.projections[0]
    torch.testing.assert_close(adaptive(a, b), build("ntxent", temperature=middle)(head(a), head(b)), rtol=1e-10, atol=1e-12)


def test_heads_are_summed():
    single = small_amcl(heads=1)
    double = small_amcl(heads=2)
    double.projections[1].load_state_dict(single.projections[0].state_dict())
    double.projections[0].load_state_dict(single.projections[0].state_dict())
    double.phi.load_state_dict(single.phi.state_dict())
    a, b = randn(B, DIM, seed=8), randn(B, DIM, seed=9)
    torch.testing.assert_close(double(a, b), 2 * single(a, b), rtol=1e-10, atol=1e-12)


def test_catalog_entry_and_builder_agree():
    entry = catalog.LOSSES["amcl"]
    loss = build("amcl", embedding_dim=DIM)
    assert entry.paper and entry.source and entry.labels == "none" and entry.views == 2
    for param, default in entry.defaults().items():
        assert getattr(loss, param) == default, param
    with pytest.raises(ValueError, match="embedding_dim"):
        build("amcl")
    with pytest.raises(ValueError, match="tau_min"):
        build("amcl", embedding_dim=DIM, tau_min=1.0, tau_max=0.5)


BLOBS = {"name": "blobs", "size": 200, "params": {"num_classes": 4, "num_features": 8}}
TINY = {"heads": 2, "head_dim": 8, "head_hidden": 16, "temperature_hidden": 8}


def _spec(formats: tuple[str, ...] = ("safetensors",), **params):
    return validate_spec({
        "name": "amcl",
        "dataset": BLOBS,
        "model": {"encoder": "mlp", "embedding_dim": 8, "width": 16},
        "objective": {"loss": "amcl", "params": {**TINY, **params}},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "seed": 3, "device": "cpu"},
        "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
        "export": {"formats": list(formats)},
    })


def fields_of(spec: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "x", "dataset": BLOBS, **spec})
    return [e["field"] for e in info.value.errors]


@pytest.mark.parametrize("spec,field", [
    ({"objective": {"loss": "amcl", "params": {"tau_min": 0.5, "tau_max": 0.1}}}, "objective.params.tau_max"),
    ({"objective": {"loss": "amcl", "params": {"heads": 0}}}, "objective.params.heads"),
    ({"objective": {"loss": "amcl", "params": {"adaptive": "yes"}}}, "objective.params.adaptive"),
    ({"objective": {"loss": "amcl", "views": 1}}, "objective.views"),
    ({"objective": {"loss": "amcl"}, "mixup": {"method": "moco"}}, "mixup.method"),
], ids=["tau-order", "no-heads", "adaptive-type", "one-view", "mixup"])
def test_bad_specs_name_the_field(spec, field):
    assert field in fields_of(spec)


def test_training_trains_the_heads_and_resumes_exactly():
    spec = _spec()
    data = load_dataset(spec)
    straight = ArrayTrainer(spec, data)
    start = {k: v.clone() for k, v in straight.loss.state_dict().items()}
    result = straight.run()
    assert math.isfinite(result.metrics["precision_at_1"])
    assert all(not torch.equal(start[k], v) for k, v in straight.loss.state_dict().items())  # heads and phi learn

    stop = StopAt(5)  # mid-epoch: 6 steps an epoch
    assert ArrayTrainer(spec, data, stop).run().stopped
    saved = torch.load(io.BytesIO(stop.checkpoints[-1]), weights_only=True)["loss"]
    assert {k.split(".")[0] for k in saved} == {"projections", "phi"}
    resumed = ArrayTrainer(spec, data)
    resumed.load_state(stop.checkpoints[-1])
    resumed.run()
    for part in ("net", "loss"):
        ours, theirs = getattr(straight, part).state_dict(), getattr(resumed, part).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), part


def test_the_export_is_the_trunk_alone(tmp_path):
    spec = _spec(top_k=10)
    data = load_dataset(spec)
    result = train(spec, data)
    export(result, data, tmp_path)
    loaded = load_safetensors(tmp_path / "model.safetensors")
    assert set(loaded.state_dict()) == set(result.encoder.state_dict())
    assert not any(k.startswith(("projections", "phi")) for k in loaded.state_dict())
    x = data.x_test[:16].float()
    result.encoder.eval()
    with torch.no_grad():
        trunk = result.encoder(x)
        torch.testing.assert_close(loaded(x), trunk)
    assert trunk.shape == (16, spec.model.embedding_dim)
