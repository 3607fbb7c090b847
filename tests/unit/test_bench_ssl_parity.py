"""bench/selfsupervised.py's claims that its two sides train the same thing: the peer's loop draws exactly the views
the engine trains on, its MoCo memory bank starts from the engine's initial queue, and lightly's losses
(when lightly is installed: the bench's peer, not a dependency) give embedmix's values and gradients on
the same embeddings, the MoCo queue evolving alike over steps that wrap around it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from embedmix.core import losses
from embedmix.core.array_train import ArrayTrainer
from embedmix.core.data import load_dataset
from embedmix.core.mixup import Batch
from embedmix.core.spec import resolve_for_task, validate_spec
from tests.bench_scripts import bench_script

bench_ssl = bench_script("selfsupervised")

ARGS = SimpleNamespace(size=240, epochs=2, batch=32, lr=1e-3, projection_dim=16, queue=64, momentum=0.9, seed=3)


def _job(method: str):
    """The bench's spec for `method` on a small blobs set instead of MNIST-1D (nothing here depends on which)."""
    raw = bench_ssl.job_spec(method, ARGS)
    raw["dataset"] = {"name": "blobs", "size": ARGS.size, "params": {"num_classes": 4, "num_features": 24},
                      "split": {"kind": "random", "test_fraction": 0.2}}
    job = validate_spec(raw)
    data = load_dataset(job)
    return resolve_for_task(job, data.task), data


@pytest.mark.parametrize("method", ["moco", "simclr", "barlow_twins"])
def test_the_peer_draws_the_views_the_engine_trains_on(method: str) -> None:
    job, data = _job(method)
    trainer = ArrayTrainer(job, data)
    seen: list[torch.Tensor] = []
    view = trainer._view

    def recording(x: torch.Tensor) -> torch.Tensor:
        seen.append(view(x).clone())
        return seen[-1]

    trainer._view = recording  # type: ignore[method-assign]
    trainer.run()
    peer = [v for pair in bench_ssl.peer_views(job, data, trainer.net.encoder.preprocess) for v in pair]
    assert len(seen) == len(peer) == 2 * trainer.total_steps
    assert all(torch.equal(a, b) for a, b in zip(seen, peer))


def test_the_peer_starts_from_the_engines_queue() -> None:
    job, data = _job("moco")
    trainer = ArrayTrainer(job, data)
    assert torch.equal(trainer.method.queue, bench_ssl.initial_queue(job))


@pytest.fixture
def lightly() -> Iterator[SimpleNamespace]:
    pytest.importorskip("lightly", reason="bench/selfsupervised.py's peer: pip install --no-deps lightly")
    before = set(sys.modules)
    yield bench_ssl.import_lightly()
    for name in set(sys.modules) - before:  # the packages registered without their __init__
        if name.startswith("lightly"):
            del sys.modules[name]


def _pair(seed: int, b: int = 24, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g, dtype=torch.float64).requires_grad_(),
            torch.randn(b, d, generator=g, dtype=torch.float64).requires_grad_())


def _value_and_grads(loss: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    return [loss.detach(), *torch.autograd.grad(loss, inputs)]


def test_ntxent_two_views_is_lightlys(lightly: SimpleNamespace) -> None:
    a, b = _pair(0)
    ours = _value_and_grads(losses.build("ntxent", temperature=bench_ssl.TEMPERATURE)(a, b), a, b)
    theirs = _value_and_grads(lightly.NTXentLoss(temperature=bench_ssl.TEMPERATURE)(a, b), a, b)
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_barlow_twins_biased_eps_is_lightlys(lightly: SimpleNamespace) -> None:
    a, b = _pair(1)
    ours = losses.build("barlow_twins", lambda_offdiag=bench_ssl.LAMBDA_OFFDIAG, standardise="biased_eps")(a, b)
    theirs = lightly.BarlowTwinsLoss(lambda_param=bench_ssl.LAMBDA_OFFDIAG)(a, b)
    for x, y in zip(_value_and_grads(ours, a, b), _value_and_grads(theirs, a, b)):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_moco_loss_and_queue_are_lightlys_memory_bank(lightly: SimpleNamespace) -> None:
    job, data = _job("moco")
    method = ArrayTrainer(job, data).method
    out_dim = job.model.projection_dim
    criterion = lightly.NTXentLoss(temperature=bench_ssl.TEMPERATURE, memory_bank_size=(ARGS.queue, out_dim))
    with torch.no_grad():
        criterion.memory_bank.bank.copy_(bench_ssl.initial_queue(job))
    for step in range(3):  # batches of 32 into a queue of 64: the second fills it, the third overwrites the oldest
        q, k = (t.float() for t in _pair(10 + step, b=ARGS.batch, d=out_dim))
        q = q.detach().requires_grad_()
        method.queries_and_keys = lambda net, batch, q=q, k=k: (q, F.normalize(k.detach(), dim=1))
        batch = Batch(x=q, y=None, gen=torch.Generator(), view=lambda q=q: q, step=step, total_steps=3)
        ours = _value_and_grads(method.batch_loss(None, batch), q)
        theirs = _value_and_grads(criterion(q, k.detach()), q)
        for x, y in zip(ours, theirs):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(method.queue, criterion.memory_bank.bank, rtol=1e-6, atol=1e-7)
