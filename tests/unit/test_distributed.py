"""N gloo ranks on the CPU compute what one device computes on the concatenated global batch.

For every loss (no mixing), every mixing method (with a loss it combines with) and
the cached (GradCache) path, spawned ranks train a few steps with the network in
float64 (the loss in float32, as the engine casts embeddings) and the test compares, against one
device in this process: each step's loss, every parameter's gradient after the
ranks' reduction (step 1), the weights after the last step, and the MoCo/MoCHi
queue of every rank. The process group is started once per rank count for the
whole module; batches are chosen so the ranks' shares are unequal (padding path).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from embedmix.core import catalog
from embedmix.core.array_train import ArrayTrainer
from embedmix.core.data import load_dataset
from embedmix.core.distributed import Ranks, class_balanced_order, class_groups, shard_rows, shard_sizes
from embedmix.core.launch import exit_rank
from embedmix.core.spec import validate_spec

STEPS = 3
LOSS_DATA = {"class": {"name": "mnist1d", "size": 120}, "optional": {"name": "mnist1d", "size": 120},
             "none": {"name": "mnist1d", "size": 120}, "target": {"name": "diabetes"}}
UNCAST_METHODS = {"c_mixup"}  # hands its output to the loss in the network's dtype
METHOD_PARAMS = {"moco": {"queue_size": 40}, "mochi": {"queue_size": 40, "n_hard": 8, "s": 4, "s_prime": 2}}


def _spec(loss: str, method: str | None = None, batch: int = 30, **train) -> dict:
    """A small float64-friendly spec: SGD (Adam would magnify rounding on near-zero gradients), no dropout."""
    mix = catalog.MIXUPS[method] if method else None
    images = mix is not None and mix.extra.get("input_rank") == [3]
    labels = mix.labels if mix else catalog.LOSSES[loss].labels
    two_view = (mix is not None and mix.views == 2) or catalog.LOSSES[loss].labels == "none"
    common = {k: v for k, v in (("alpha", 1.0), ("weight", 0.5)) if mix and k in mix.common_defaults()}
    spec = {
        "name": f"{method or 'plain'}-{loss}",
        "dataset": {"name": "digits"} if images else LOSS_DATA[labels],
        "model": {"encoder": "conv2d" if images else "mlp", "embedding_dim": 8, "width": 8},
        "objective": {"loss": loss, **({"views": 2} if two_view else {})},
        "train": {"epochs": 1, "batch_size": batch, "seed": 3, "optimizer": "sgd", "lr": 0.1, **train},
        "eval": {"metrics": [], "every_epochs": 0},
        "resources": {"devices": 2},
    }
    if method:
        spec["mixup"] = {"method": method, **common, "params": METHOD_PARAMS.get(method, {})}
    return spec


# A two-modality loss (m3col) refuses resources.devices > 1 at validation (tests/unit/test_m3col.py).
CASES = {f"loss:{name}": _spec(name) for name, e in catalog.LOSSES.items() if e.extra.get("modalities") != 2}
CASES |= {f"mix:{m}": _spec(e.extra["losses"][0], m) for m, e in catalog.MIXUPS.items()}
CASES["cached:supcon"] = _spec("supcon", grad_cache_chunk=7)
CASES["cached:ntxent"] = _spec("ntxent", grad_cache_chunk=7)
CASES["cached:barlow_twins"] = _spec("barlow_twins", grad_cache_chunk=7)
CASES["balanced:multi_similarity"] = _spec("multi_similarity", samples_per_class=3)
# Four ranks on two cores is slow to spawn: one case per kind of cross-rank state (class groups and
# a pair loss, a summed cross-correlation, a queue); every case runs on two ranks above.
FOUR_RANK_CASES = ["balanced:multi_similarity", "loss:barlow_twins", "mix:moco"]


def _run(spec_dict: dict) -> dict:
    """STEPS training steps of a spec in this process (one device, or this rank of the group)."""
    spec = validate_spec(spec_dict)
    data = load_dataset(spec)
    if spec.dataset.name == "digits":
        data.x_train, data.y_train = data.x_train[:96], data.y_train[:96]
    data.x_train, data.x_test = data.x_train.double(), data.x_test.double()
    trainer = ArrayTrainer(spec, data)
    if spec_dict.get("mixup", {}).get("method") not in UNCAST_METHODS:
        trainer.loss.float()  # the engine casts embeddings to float32 for the loss: its weights are float32
        if trainer.method is not None:
            trainer.method.float()
    order = trainer._batch_order(0)
    losses, grads = [], {}
    names = {id(p): n for n, p in [*trainer.net.named_parameters(prefix="net"),
                                   *trainer.loss.named_parameters(prefix="loss"),
                                   *(trainer.method.named_parameters(prefix="method") if trainer.method else [])]}
    for step in range(STEPS):
        idx = order[step * trainer.batch:(step + 1) * trainer.batch]
        losses.append(trainer._train_step(idx))
        if step == 0:
            grads = {names[id(p)]: p.grad.clone() for p in trainer.train_step.parameters if p.grad is not None}
    state = {f"net.{k}": v for k, v in trainer.net.state_dict().items()}
    state |= {f"loss.{k}": v for k, v in trainer.loss.state_dict().items()}
    if trainer.method is not None:
        state |= {f"method.{k}": v for k, v in trainer.method.state_dict().items()}
    return {"losses": losses, "grads": grads, "state": state}


def _rank_main(rank: int, world: int, init_file: str, out_dir: str, cases: list[str]) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {name: _run(CASES[name]) for name in cases}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    exit_rank()  # as the service's ranks leave: the gloo teardown at interpreter exit can abort a finished rank


def _spawn(tmp: Path, world: int, cases: list[str]) -> list[dict]:
    mp.spawn(_rank_main, args=(world, str(tmp / "init"), str(tmp), cases), nprocs=world, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.fixture(scope="module")
def one_device() -> dict[str, dict]:
    """The reference: every case on one device, in float64, in this process."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest and leaves the other core to the ranks' peers
    try:
        return {name: _run(spec) for name, spec in CASES.items()}
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    return _spawn(tmp_path_factory.mktemp("ranks2"), 2, list(CASES))


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory) -> list[dict]:
    return _spawn(tmp_path_factory.mktemp("ranks4"), 4, FOUR_RANK_CASES)


def _assert_same_run(ranked: dict, single: dict) -> None:
    assert ranked["losses"] == pytest.approx(single["losses"], abs=1e-6, rel=0)
    assert ranked["grads"].keys() == single["grads"].keys()
    for name, grad in single["grads"].items():
        torch.testing.assert_close(ranked["grads"][name], grad, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
    assert ranked["state"].keys() == single["state"].keys()
    for name, value in single["state"].items():
        if value.is_floating_point():
            torch.testing.assert_close(ranked["state"][name], value, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")
        else:
            assert torch.equal(ranked["state"][name], value), name


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_device(case, two_ranks, one_device):
    for rank_results in two_ranks:
        _assert_same_run(rank_results[case], one_device[case])


@pytest.mark.parametrize("case", FOUR_RANK_CASES)
def test_four_ranks_equal_one_device(case, four_ranks, one_device):
    for rank_results in four_ranks:
        _assert_same_run(rank_results[case], one_device[case])


@pytest.mark.parametrize("case", ["mix:moco", "mix:mochi"])
def test_queue_is_identical_on_every_rank(case, two_ranks):
    queues = [r[case]["state"]["method.queue"] for r in two_ranks]
    pointers = [r[case]["state"]["method.queue_ptr"] for r in two_ranks]
    assert all(torch.equal(q, queues[0]) for q in queues)
    assert all(torch.equal(p, pointers[0]) for p in pointers)
    assert int(pointers[0]) == STEPS * 30 % 40  # every step enqueued the whole global batch's keys


def test_shares_cover_the_global_batch_once_in_rank_order():
    batch = torch.arange(30)
    for world in (1, 2, 4, 7):
        shares = [shard_rows(batch, Ranks(r, world)) for r in range(world)]
        assert torch.equal(torch.cat(shares), batch)
        assert [len(s) for s in shares] == shard_sizes(30, world)


def test_class_balanced_batches_hold_whole_groups_of_each_class():
    labels = torch.randint(0, 7, (200,), generator=torch.Generator().manual_seed(0))
    per_class, batch = 3, 12
    order = class_balanced_order(labels, per_class, seed=5, epoch=0)
    assert len(order) == class_groups(labels, per_class) and len(set(order.tolist())) == len(order)
    for lo in range(0, len(order) - batch + 1, batch):
        counts = torch.bincount(labels[order[lo:lo + batch]])
        assert ((counts == 0) | (counts >= per_class)).all()
        for r, world in ((0, 2), (1, 2)):  # a rank's share is its block of the global batch
            assert torch.equal(shard_rows(order[lo:lo + batch], Ranks(r, world)), order[lo + 6 * r:lo + 6 * r + 6])
    assert torch.equal(order, class_balanced_order(labels, per_class, seed=5, epoch=0))
    assert not torch.equal(order, class_balanced_order(labels, per_class, seed=5, epoch=1))
