"""The cached (GradCache) loss gives the plain loss's value and gradients, chunk by chunk."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from embedmix.core.data import load_dataset
from embedmix.core.losses import build
from embedmix.core.losses.grad_cache import cached_backward, embedding_loss_grad
from embedmix.core.spec import SpecError, validate_spec
from embedmix.core.array_train import ArrayTrainer

ATOL = 1e-5


def _embeddings(n: int = 60, d: int = 16, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def _plain(loss: nn.Module, z: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = z.clone().requires_grad_()
    value = loss(*leaf.chunk(2)) if labels is None else loss(leaf, labels)
    value.backward()
    return value.detach(), leaf.grad


@pytest.mark.parametrize("name,two_view", [("supcon", False), ("ntxent", True), ("ntxent", False),
                                           ("decoupled_softmax", False), ("multi_similarity", False)])
def test_embedding_gradient_equals_plain(name, two_view):
    """Row blocks of 7 anchors (uneven last block) add up to the whole batch's value and gradient."""
    z, labels = _embeddings()
    loss = build(name)
    target = None if two_view else labels
    value, grad = _plain(loss, z, target)
    cached_value, cached_grad = embedding_loss_grad(loss, z, target, block=7)
    assert torch.allclose(cached_value, value, atol=ATOL)
    assert torch.allclose(cached_grad, grad, atol=ATOL)
    assert grad.abs().max() > 1e-3  # a gradient that is there to compare


def test_loss_parameters_get_their_gradient():
    """A class-weight loss goes through the whole-matrix path; its proxies are trained as in the plain loss."""
    z, labels = _embeddings()
    plain_loss = build("proxy_anchor", num_classes=5, embedding_dim=16)
    cached_loss = build("proxy_anchor", num_classes=5, embedding_dim=16)
    cached_loss.load_state_dict(plain_loss.state_dict())
    _, grad = _plain(plain_loss, z, labels)
    _, cached_grad = embedding_loss_grad(cached_loss, z, labels, block=7)
    assert torch.allclose(cached_grad, grad, atol=ATOL)
    for p, q in zip(plain_loss.parameters(), cached_loss.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=ATOL)


def _net(batch_norm: bool, dropout: float) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(12, 32)]
    layers += [nn.BatchNorm1d(32)] if batch_norm else []
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 16)]
    return nn.Sequential(*layers)


def _grads(net: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in net.parameters()]


def test_model_gradient_equals_plain_whole_batch():
    """Without batch-coupled layers or randomness, chunks of 16 give the gradient of one batch of 100."""
    x, labels = torch.randn(100, 12), torch.randint(0, 6, (100,))
    loss = build("supcon")
    net = _net(batch_norm=False, dropout=0.0)
    loss(net(x), labels).backward()
    plain = _grads(net)
    net.zero_grad()
    value = cached_backward(net, net, x, 16, lambda z: embedding_loss_grad(loss, z, labels, 16))
    assert torch.allclose(value, loss(net(x), labels), atol=ATOL)
    for g, c in zip(plain, _grads(net)):
        assert torch.allclose(c, g, atol=ATOL)


def test_dropout_and_batch_norm_are_replayed_per_chunk():
    """The second pass sees the first pass's dropout masks, and BatchNorm statistics move once per chunk.

    The reference is the plain loss over the same chunks run once with a graph,
    from the same random state: BatchNorm then sees the same chunks and dropout
    draws the same masks. Without the replay the masks of the second pass differ.
    """
    x, labels = torch.randn(96, 12), torch.randint(0, 6, (96,))
    loss = build("ntxent")
    net = _net(batch_norm=True, dropout=0.3)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    z = torch.cat([net(part) for part in x.split(32)])
    loss(z, labels).backward()
    plain, plain_state = _grads(net), {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(start)
    net.zero_grad()
    torch.manual_seed(123)
    cached_backward(net, net, x, 32, lambda z: embedding_loss_grad(loss, z, labels, 32))
    after = torch.rand(1)
    for g, c in zip(plain, _grads(net)):
        assert torch.allclose(c, g, atol=ATOL)
    for key, value in plain_state.items():
        assert torch.allclose(net.state_dict()[key].float(), value.float(), atol=ATOL), key
    torch.manual_seed(123)
    with torch.no_grad():
        [net(part) for part in x.split(32)]  # the plain path's draws: the generator ends where it would have
    assert torch.equal(after, torch.rand(1))


def _spec(**train):
    return validate_spec({
        "name": "gc",
        "dataset": {"name": "blobs", "size": 200, "params": {"num_classes": 5, "num_features": 12}},
        "model": {"encoder": "mlp", "embedding_dim": 16, "width": 32, "dropout": 0.1},
        "objective": {"loss": "ntxent", "views": 2},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.1, "optimizer": "sgd", "momentum": 0.0, "seed": 1, **train},
        "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    })


def test_trainer_cached_step_equals_plain_step():
    """Two views of 64, one view per chunk: BatchNorm sees what it sees in the plain step, so the update is the same.

    SGD without momentum, so parameters differ by lr x the gradient difference (AdamW's first step
    is lr x sign(g), which turns rounding noise on a zero gradient into a full step).
    """
    spec, cached_spec = _spec(), _spec(grad_cache_chunk=64)
    data = load_dataset(spec)
    plain, cached = ArrayTrainer(spec, data), ArrayTrainer(cached_spec, data)
    idx = torch.arange(64)
    torch.manual_seed(9)  # both steps draw their dropout masks from the same state
    plain_loss = plain._train_step(idx)
    torch.manual_seed(9)
    assert cached._train_step(idx) == pytest.approx(plain_loss, abs=ATOL)
    for (name, p), q in zip(plain.net.named_parameters(), cached.net.parameters()):
        assert torch.allclose(p, q, atol=ATOL), name
    for (name, b), c in zip(plain.net.named_buffers(), cached.net.buffers()):
        assert torch.allclose(b.float(), c.float(), atol=ATOL), name


def test_spec_refuses_cached_loss_with_a_mixing_method():
    with pytest.raises(SpecError) as err:
        validate_spec({"dataset": {"name": "mnist1d"}, "objective": {"loss": "ntxent", "views": 2},
                       "mixup": {"method": "moco"}, "train": {"grad_cache_chunk": 64}})
    assert any(e["field"] == "train.grad_cache_chunk" for e in err.value.errors)
    with pytest.raises(SpecError):
        validate_spec({"dataset": {"name": "mnist1d"}, "train": {"grad_cache_chunk": 1}})
