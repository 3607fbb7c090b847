"""Self-supervised training: embedmix's engine against a plain PyTorch loop on lightly's losses (issue 19).

Three methods, each trained twice on the same encoder, data, views, optimizer, steps and seed:

- ``moco``: MoCo v2. embedmix: the ``ntxent`` loss with the ``moco`` method (momentum key
  encoder, queue of negatives; ``core.mixup.moco``). Peer: ``lightly.loss.NTXentLoss`` with
  ``memory_bank_size=(queue, dim)`` and a momentum copy of the net made with
  ``lightly.models.utils.deactivate_requires_grad`` and updated with ``update_momentum``,
  as lightly's own MoCo example writes it (the update at the start of each step; that gives
  the same key weights at every forward as embedmix's update after each step).
- ``simclr``: NT-Xent over two views. embedmix ``ntxent``, views 2; peer ``NTXentLoss()``.
- ``barlow_twins``: embedmix ``barlow_twins`` with ``standardise: biased_eps`` (biased variance
  + 1e-5 per dimension, what lightly's ``F.batch_norm`` standardisation computes); peer
  ``lightly.loss.BarlowTwinsLoss(lambda_param=...)`` with the same lambda.

What is the same on both sides:

- network: ``core.models.build_net`` on both sides after ``core.loop.seed_everything(seed)``,
  as the engine builds it: the conv1d encoder and the training-only projection head
  (Linear-ReLU-Linear). The initial weights are compared (``initial weights identical``).
  lightly's heads (``MoCoProjectionHead`` etc.) are not used: they import
  ``lightly.models.utils``, whose import needs torchvision (see below), and
  ``BarlowTwinsProjectionHead`` is a different (3-layer, BatchNorm) architecture.
- data: MNIST-1D as embedmix ships it (``dataset.name: mnist1d``), split by embedmix's
  ``load_dataset``; the peer reads the same ``Dataset`` tensors.
- batches and views: every epoch's order is ``core.loop.epoch_order(seed, epoch, n)`` cut into
  ``n // batch`` batches; both views are drawn by embedmix's ``core.data.augment.augment``
  from a generator seeded ``seed + 1`` on the preprocessed batch, view 1 before view 2, as
  the engine draws them. Each side hashes every view it trains on; the parent compares the
  digests (``views identical``). MoCo: the query is view 1, the key view 2 on both sides.
- the MoCo queue starts from the same unit vectors: lightly fills its memory bank with
  ``torch.randn`` from the global RNG; the peer overwrites that with embedmix's seeded
  initial queue, so the first step is the same computation on both sides. Both enqueue the
  normalised keys after the loss, oldest first (``--queue`` a multiple of ``--batch``, or
  lightly drops the part of a batch that wraps around).
- optimizer: AdamW, ``--lr`` constant, weight decay 1e-4 on every parameter, no clipping.
  embedmix uses torch's fused CPU kernel (``core.step.make_optimizer``); the peer
  ``torch.optim.AdamW(params, lr, weight_decay)`` with torch's defaults, as a user writes
  it (one op per tensor on the CPU). The side ``lightly_fused`` (on by default,
  ``--no-peer-fused`` to skip) is the peer with ``fused=True``: the same work as embedmix's
  step, to tell the optimizer's share of the ratio from the rest.
- scoring: one function scores every model: each child embeds the held-out split (queries)
  and the training split (gallery) with ``core.array_train.embed`` (eval mode, the encoder's
  unit embeddings, not the projection head's), and the parent runs
  ``core.evaluate.knn_accuracy`` (k 20, temperature 0.07: the spec's eval defaults) on them.
  The untrained network is scored the same way as a baseline, and embedmix's own final
  evaluation is checked against the parent's figure.

What differs: the loss formulas for SimCLR and Barlow Twins (embedmix: softplus of a
logsumexp over each anchor's negatives, through its weighted-pair machinery; lightly:
cross-entropy over concatenated logits; the same value, see
tests/unit/test_bench_ssl_parity.py and ``loss step 1 |diff|`` below; for MoCo both are now
cross-entropy over [own key; queue], since this bench found embedmix's weighted form 2x
slower), the optimizer kernel (above), and what the engine
does per step besides the step: learning-rate schedule, finiteness check, metric and progress
callbacks, and a checkpoint serialised at every epoch end (all inside its clock, as in a real
job). The loss curves agree to ~1e-6 for the first steps and then drift apart as rounding
grows; ``training loss |diff|`` prints the drift, next to the drift between ``lightly`` and
``lightly_fused`` (the same code, only the AdamW kernel's rounding differs) as the yardstick,
and the same goes for the kNN accuracies reached.

Timing. Each (method, side) runs in a fresh subprocess, one after the other; within a round
the sides alternate which goes first (method by method), over ``--rounds`` rounds; medians
over rounds are reported. ``train s``: embedmix from the call of ``run()`` to its last step's
progress report (the final evaluation and checkpoint after it are not counted); the peer
from its loop's start to the end of its last step. Building the model, the data and the
loss is outside both. steps/s = steps / train s; the ratio is embedmix / lightly (above 1:
embedmix is faster). ``steps/CPU s`` divides by the child's CPU time over the same interval
(``time.process_time``) instead: on a machine other jobs share, it moves less with their load
than the wall clock does. ``--threads`` sets torch's threads in every child (default 1: two
threads on this shared 2-core VM swing the medians, as bench/losses.py notes). ``--tiny``
starts one child per side that trains the three methods in turn (process start-up, ~3 s of
imports, is most of such a run); its peak RSS is then the process's so far and its child
wall s a third of the child's.

Where the sides differ per step, the parent then times each side's own code for those pieces
on the same tensors of the run's shapes, in turns (``per-step pieces``): the loss forward +
backward on given embeddings (embedmix's MoCo through the ``moco`` method's ``batch_loss``,
its queue copy, weights and enqueue included), the key encoder update and the AdamW step.
The network's forward and backward, most of a step, are the same code on both sides.

The peer needs lightly, which embedmix does not depend on. lightly 1.6.0 lists torchvision
and pytorch_lightning as requirements, and torchvision does not import beside this torch,
so it is installed without them:

    .venv/bin/pip install --no-deps lightly==1.6.0

``import lightly.loss`` and ``import lightly.models`` then fail on ``import torchvision``
(``lightly/loss/dense_relational_utils.py``: ``roi_align``; ``lightly/models/utils.py``:
``StochasticDepth``). ``import_lightly()`` therefore registers the packages ``lightly.loss``,
``lightly.models`` and ``lightly.models.modules`` without running their ``__init__`` and
imports only the files the peer uses (``loss/ntx_ent_loss.py``, ``loss/barlow_twins_loss.py``,
``models/modules/memory_bank.py``, ``models/utils.py``, ``utils/dist.py``), lightly's code
unchanged. ``models/utils.py`` imports ``torchvision.ops.StochasticDepth`` at the top and uses
it in one ViT helper only; where torchvision is missing a stand-in ``torchvision.ops`` is put in
``sys.modules`` while that file is imported (and taken out again), whose ``StochasticDepth``
raises if ever built. With a working torchvision installed the real modules are imported.

    .venv/bin/python bench/selfsupervised.py --tiny           # well under a minute: 1 round, 1 epoch, no fused peer
    .venv/bin/python bench/selfsupervised.py [--methods moco,simclr,barlow_twins] [--rounds 3] [--epochs 4]
                                  [--batch 128] [--lr 2e-3] [--size 4000] [--threads 1] [--no-peer-fused]
                                  [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent))  # bench/'s own modules, shadowing nothing installed
from side_by_side import load_average, median  # noqa: E402

METHODS = ("moco", "simclr", "barlow_twins")
SIDES = ("embedmix", "lightly", "lightly_fused")
LABELS = {"embedmix": "embedmix", "lightly": "lightly (plain loop)", "lightly_fused": "lightly, fused AdamW"}
TEMPERATURE = 0.2  # NT-Xent, both methods (recipes/moco.json)
LAMBDA_OFFDIAG = 0.0051  # Barlow Twins (embedmix's default, the paper's)
WEIGHT_DECAY = 1e-4  # embedmix's default


# -- the run both sides train ------------------------------------------------------------

def job_spec(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """The embedmix job spec of ``method``; the peer's loop is written from the same dict."""
    if method == "barlow_twins":
        objective = {"loss": "barlow_twins", "views": 2,
                     "params": {"lambda_offdiag": LAMBDA_OFFDIAG, "standardise": "biased_eps"}}
    else:
        objective = {"loss": "ntxent", "views": 2, "params": {"temperature": TEMPERATURE}}
    spec: dict[str, Any] = {
        "name": f"bench-ssl-{method}",
        "dataset": {"name": "mnist1d", "size": args.size, "split": {"kind": "random", "test_fraction": 0.2}},
        "model": {"encoder": "conv1d", "embedding_dim": 64, "width": 32, "projection_dim": args.projection_dim},
        "objective": objective,
        "train": {"epochs": args.epochs, "batch_size": args.batch, "lr": args.lr, "seed": args.seed, "device": "cpu",
                  "optimizer": "adamw", "weight_decay": WEIGHT_DECAY, "schedule": "constant", "warmup_epochs": 0.0},
        "eval": {"metrics": ["knn_accuracy"], "every_epochs": 0},
    }
    if method == "moco":
        spec["mixup"] = {"method": "moco", "params": {"queue_size": args.queue, "momentum": args.momentum}}
    return spec


def batch_indices(spec: Any, n: int) -> Iterator[Any]:
    """The rows of every step, as the engine takes them: each epoch's seeded order cut into n // batch batches."""
    from embedmix.core.loop import epoch_order

    batch = min(spec.train.batch_size, n)
    for epoch in range(spec.train.epochs):
        order = epoch_order(spec.train.seed, epoch, n)
        for i in range(max(1, n // batch)):
            yield order[i * batch:(i + 1) * batch]


def view_generator(spec: Any) -> Any:
    """The generator the engine draws views from (ArrayTrainer.gen): seeded seed + 1."""
    import torch

    return torch.Generator().manual_seed(spec.train.seed + 1)


def peer_views(spec: Any, data: Any, preprocess: Any) -> Iterator[tuple[Any, Any]]:
    """(view 1, view 2) of every step for the peer: the engine's batches, preprocessing and augment() draws."""
    from embedmix.core.data.augment import augment

    gen = view_generator(spec)
    for idx in batch_indices(spec, len(data.x_train)):
        x = preprocess(data.x_train[idx])
        v1 = augment(x, spec.augment, gen)
        v2 = augment(x, spec.augment, gen)
        yield v1, v2


def initial_queue(spec: Any) -> Any:
    """embedmix's initial MoCo queue (core.mixup.moco.MoCo.__init__), drawn the same way."""
    import torch
    import torch.nn.functional as F

    out_dim = spec.model.projection_dim or spec.model.embedding_dim
    g = torch.Generator().manual_seed(spec.train.seed + 7919)
    return F.normalize(torch.randn(int(spec.mixup.params["queue_size"]), out_dim, generator=g), dim=1)


def state_digest(module: Any) -> str:
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ViewHash:
    """A running digest of every view a side trains on."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.count = 0

    def add(self, view: Any) -> Any:
        self.h.update(view.detach().contiguous().numpy().tobytes())
        self.count += 1
        return view


# -- lightly without torchvision ---------------------------------------------------------

def import_lightly() -> types.SimpleNamespace:
    """lightly's NTXentLoss, BarlowTwinsLoss, update_momentum and deactivate_requires_grad (module docstring)."""
    import lightly

    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or present and broken beside this torch
        pass
    else:
        from lightly.loss import BarlowTwinsLoss, NTXentLoss
        from lightly.models.utils import deactivate_requires_grad, update_momentum

        return types.SimpleNamespace(NTXentLoss=NTXentLoss, BarlowTwinsLoss=BarlowTwinsLoss, update_momentum=update_momentum,
                                     deactivate_requires_grad=deactivate_requires_grad, version=lightly.__version__)

    class StochasticDepth:  # lightly/models/utils.py imports it for a ViT helper the bench never calls
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("torchvision is not installed: this is bench/selfsupervised.py's stand-in StochasticDepth")

    vision, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    vision.__path__ = []  # type: ignore[attr-defined]
    vision.ops, ops.StochasticDepth = ops, StochasticDepth  # type: ignore[attr-defined]
    root = Path(lightly.__file__).parent
    for name in ("lightly.loss", "lightly.models", "lightly.models.modules"):
        if name not in sys.modules:  # the package without its __init__, which imports what needs torchvision
            module = types.ModuleType(name)
            module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]  # type: ignore[attr-defined]
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, module)
    sys.modules.update({"torchvision": vision, "torchvision.ops": ops})
    try:
        ntx = importlib.import_module("lightly.loss.ntx_ent_loss")
        barlow = importlib.import_module("lightly.loss.barlow_twins_loss")
        utils = importlib.import_module("lightly.models.utils")
    finally:  # lightly's modules keep the name they imported; nothing else in the process sees a torchvision
        del sys.modules["torchvision"], sys.modules["torchvision.ops"]
    return types.SimpleNamespace(NTXentLoss=ntx.NTXentLoss, BarlowTwinsLoss=barlow.BarlowTwinsLoss,
                                 update_momentum=utils.update_momentum,
                                 deactivate_requires_grad=utils.deactivate_requires_grad, version=lightly.__version__)


# -- the children --------------------------------------------------------------------------

def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _load(work: Path, method: str) -> tuple[Any, Any]:
    from embedmix.core.data import load_dataset
    from embedmix.core.spec import resolve_for_task, validate_spec

    spec = validate_spec(json.loads((work / f"{method}.spec.json").read_text()))
    data = load_dataset(spec)
    return resolve_for_task(spec, data.task), data


def _save_embeddings(work: Path, name: str, encoder: Any, data: Any) -> None:
    import torch

    from embedmix.core.array_train import embed

    cpu = torch.device("cpu")
    np.savez(work / f"{name}.npz", train=embed(encoder, data.x_train, cpu).numpy(), test=embed(encoder, data.x_test, cpu).numpy())


def child_embedmix(work: Path, method: str) -> dict[str, Any]:
    from embedmix.core.array_train import ArrayTrainer
    from embedmix.core.loop import NullCallbacks, Progress

    spec, data = _load(work, method)

    class Record(NullCallbacks):
        def __init__(self) -> None:
            self.last = self.last_cpu = float("nan")
            self.losses: list[float] = []

        def on_progress(self, progress: Progress) -> None:
            self.last, self.last_cpu = time.perf_counter(), time.process_time()

        def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
            if "train/loss" in values:
                self.losses.append(values["train/loss"])

    cb = Record()
    trainer = ArrayTrainer(spec, data, cb)  # what core.train.trainer_for builds for array data (spec resolved in _load)
    initial = state_digest(trainer.net)
    views = ViewHash()
    view = trainer._view
    trainer._view = lambda x: views.add(view(x))  # type: ignore[method-assign]
    start, start_cpu = time.perf_counter(), time.process_time()
    result = trainer.run()
    train_s, cpu_s = cb.last - start, cb.last_cpu - start_cpu
    rss = _max_rss_mib()
    _save_embeddings(work, f"{method}.embedmix", trainer.net.encoder, data)
    assert len(cb.losses) == result.step, "one train/loss per step (log_every 1) is what the loss check compares"
    return {"steps": result.step, "train_s": train_s, "steps_per_s": result.step / train_s, "cpu_s": cpu_s,
            "steps_per_cpu_s": result.step / cpu_s, "rss_mib": rss,
            "losses": cb.losses, "views": views.h.hexdigest(), "view_count": views.count, "initial": initial,
            "own_knn": result.metrics.get("knn_accuracy"), "optimizer": type(trainer.opt).__name__,
            "fused": bool(trainer.opt.defaults.get("fused"))}


def child_lightly(work: Path, method: str, fused: bool) -> dict[str, Any]:
    import torch

    from embedmix.core.loop import seed_everything
    from embedmix.core.models import build_net

    spec, data = _load(work, method)
    ll = import_lightly()
    seed_everything(spec.train.seed)  # then the net, as ArrayTrainer builds it: the same initial weights
    net = build_net(spec.model, data.x_train)
    net.train()
    initial = state_digest(net)
    out_dim = spec.model.projection_dim or spec.model.embedding_dim
    key_net = None
    if method == "moco":
        criterion = ll.NTXentLoss(temperature=spec.objective.params["temperature"],
                                  memory_bank_size=(int(spec.mixup.params["queue_size"]), out_dim))
        with torch.no_grad():
            criterion.memory_bank.bank.copy_(initial_queue(spec))
        key_net = copy.deepcopy(net)
        ll.deactivate_requires_grad(key_net)
        momentum = float(spec.mixup.params["momentum"])
    elif method == "simclr":
        criterion = ll.NTXentLoss(temperature=spec.objective.params["temperature"])
    else:
        criterion = ll.BarlowTwinsLoss(lambda_param=spec.objective.params["lambda_offdiag"])
    opt = torch.optim.AdamW(net.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay,
                            **({"fused": True} if fused else {}))
    views = ViewHash()
    losses: list[float] = []
    steps = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    for v1, v2 in peer_views(spec, data, net.encoder.preprocess):
        views.add(v1)
        views.add(v2)
        if key_net is not None:
            ll.update_momentum(net, key_net, m=momentum)
            query = net(v1)
            key = key_net(v2).detach()
            loss = criterion(query, key)
        else:
            loss = criterion(net(v1), net(v2))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        steps += 1
    train_s, cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    rss = _max_rss_mib()
    _save_embeddings(work, f"{method}.{'lightly_fused' if fused else 'lightly'}", net.encoder, data)
    return {"steps": steps, "train_s": train_s, "steps_per_s": steps / train_s, "cpu_s": cpu_s,
            "steps_per_cpu_s": steps / cpu_s, "rss_mib": rss, "losses": losses,
            "views": views.h.hexdigest(), "view_count": views.count, "initial": initial, "lightly": ll.version,
            "optimizer": type(opt).__name__, "fused": bool(opt.defaults.get("fused"))}


def run_child(side: str, methods: list[str], work: Path, threads: int) -> dict[str, dict[str, Any]]:
    """One fresh process training ``methods`` in turn on ``side``; each method's figures."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", side, "--methods", ",".join(methods),
                           "--work", str(work), "--threads", str(threads)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{side} child ({', '.join(methods)}) failed with exit code {proc.returncode}")
    results = {}
    for method in methods:
        result = json.loads((work / f"{method}.{side}.json").read_text())
        result["wall_s"] = wall / len(methods)
        result["knn"] = knn_of(work / f"{method}.{side}.npz", work)
        results[method] = result
    return results


# -- the scoring: one function for every model --------------------------------------------

def knn_of(path: Path, work: Path) -> float:
    import torch

    from embedmix.core.evaluate import knn_accuracy

    labels = np.load(work / "labels.npz")
    with np.load(path) as z:
        return knn_accuracy(torch.from_numpy(z["train"]), torch.from_numpy(labels["train"]),
                            torch.from_numpy(z["test"]), torch.from_numpy(labels["test"]), k=KNN_K, temperature=KNN_T)


KNN_K, KNN_T = 20, 0.07  # the spec's eval defaults (EvalSpec.knn_k, knn_temperature)


# -- the per-step pieces, timed side by side -------------------------------------------------

def _interleaved_ms(ours: Any, theirs: Any, repeats: int, inner: int = 20) -> tuple[float, float]:
    """Median ms per call of each, timed in turns (each going first in every other repeat) after a warm-up."""
    for fn in (ours, theirs):
        for _ in range(3):
            fn()
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(repeats):
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            fn = (ours, theirs)[k]
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[k].append((time.perf_counter() - start) / inner * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def piece_timings(work: Path, methods: list[str], repeats: int) -> list[tuple[str, float, float]]:
    """(piece, embedmix ms, peer ms): each side's own code for the parts of a step where the two differ, on the
    same tensors of the run's shapes: the loss forward + backward on given embeddings (embedmix's MoCo through
    the moco method's batch_loss, queue and enqueue included), the key encoder update, and the AdamW step."""
    import torch
    import torch.nn.functional as F

    from embedmix.core import losses, mixup
    from embedmix.core.mixup import Batch
    from embedmix.core.models import build_net
    from embedmix.core.step import make_optimizer

    ll = import_lightly()
    rows: list[tuple[str, float, float]] = []
    for method in methods:
        spec, data = _load(work, method)
        b, d = spec.train.batch_size, spec.model.projection_dim or spec.model.embedding_dim
        g = torch.Generator().manual_seed(spec.train.seed)
        z1, z2 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
        base = losses.build(spec.objective.loss, embedding_dim=d, **spec.objective.params)
        if method == "moco":
            method_module = mixup.build(spec, base, num_classes=data.num_classes, embedding_dim=d)
            k = F.normalize(z2, dim=1)
            criterion = ll.NTXentLoss(temperature=spec.objective.params["temperature"],
                                      memory_bank_size=(int(spec.mixup.params["queue_size"]), d))

            def ours() -> None:
                q = z1.clone().requires_grad_()
                method_module.queries_and_keys = lambda net, batch: (q, k)  # the embeddings, instead of the nets
                method_module.batch_loss(None, Batch(x=q, y=None, gen=g, view=lambda: q, step=0, total_steps=1)).backward()

            def theirs() -> None:
                q = z1.clone().requires_grad_()
                criterion(q, z2).backward()
        else:
            peer = (ll.NTXentLoss(temperature=spec.objective.params["temperature"]) if method == "simclr"
                    else ll.BarlowTwinsLoss(lambda_param=spec.objective.params["lambda_offdiag"]))

            def ours() -> None:
                a, c = z1.clone().requires_grad_(), z2.clone().requires_grad_()
                base(a, c).backward()

            def theirs() -> None:
                a, c = z1.clone().requires_grad_(), z2.clone().requires_grad_()
                peer(a, c).backward()

        rows.append((f"{method} loss, forward + backward", *_interleaved_ms(ours, theirs, repeats)))
        if method == "moco":
            net = build_net(spec.model, data.x_train)
            method_module._key_encoder(net)  # the key encoder, as the first batch makes it
            key = copy.deepcopy(net)
            ll.deactivate_requires_grad(key)
            momentum = float(spec.mixup.params["momentum"])
            rows.append(("moco key encoder update", *_interleaved_ms(lambda: method_module.after_step(net),
                                                                     lambda: ll.update_momentum(net, key, m=momentum),
                                                                     repeats)))
    net = build_net(spec.model, data.x_train)
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    fused = make_optimizer(spec.train, list(net.parameters()), torch.device("cpu"))
    plain = torch.optim.AdamW(net.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay)
    rows.append(("AdamW step (embedmix fused, peer torch's default)", *_interleaved_ms(fused.step, plain.step, repeats)))
    return rows


# -- the parent ----------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of " + ", ".join(METHODS))
    parser.add_argument("--size", type=int, default=4000, help="MNIST-1D samples (80%% train, 20%% held out)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--projection-dim", type=int, default=64)
    parser.add_argument("--queue", type=int, default=1024, help="MoCo queue; a multiple of --batch")
    parser.add_argument("--momentum", type=float, default=0.99, help="MoCo key encoder momentum")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-peer-fused", action="store_true", help="skip the peer run with fused AdamW")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: 1 round, 1 epoch, no fused peer")
    parser.add_argument("--json", type=Path, help="write every child's figures here")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        for method in args.methods.split(","):
            out = (child_embedmix(args.work, method) if args.child == "embedmix"
                   else child_lightly(args.work, method, fused=args.child == "lightly_fused"))
            (args.work / f"{method}.{args.child}.json").write_text(json.dumps(out))
        return

    if args.tiny:
        args.rounds, args.epochs, args.no_peer_fused = 1, 1, True
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; use {', '.join(METHODS)}")
    if "moco" in methods and args.queue % args.batch:
        parser.error("--queue must be a multiple of --batch (lightly's memory bank drops the part of a batch that wraps)")
    sides = [s for s in SIDES if not (s == "lightly_fused" and args.no_peer_fused)]

    import torch

    torch.set_num_threads(args.threads)
    from embedmix.core.array_train import embed
    from embedmix.core.data import load_dataset
    from embedmix.core.loop import seed_everything
    from embedmix.core.models import build_net
    from embedmix.core.spec import validate_spec

    with tempfile.TemporaryDirectory(prefix="bench-ssl-") as tmp:
        work = Path(tmp)
        for method in methods:
            (work / f"{method}.spec.json").write_text(json.dumps(job_spec(method, args)))
        spec = validate_spec(job_spec(methods[0], args))
        data = load_dataset(spec)
        np.savez(work / "labels.npz", train=data.y_train.numpy(), test=data.y_test.numpy())
        seed_everything(spec.train.seed)
        untrained = build_net(spec.model, data.x_train).encoder  # the encoder every method starts from
        cpu = torch.device("cpu")
        np.savez(work / "untrained.npz", train=embed(untrained, data.x_train, cpu).numpy(),
                 test=embed(untrained, data.x_test, cpu).numpy())
        baseline = knn_of(work / "untrained.npz", work)
        steps = args.epochs * (len(data.x_train) // min(args.batch, len(data.x_train)))
        print(f"MNIST-1D {len(data.x_train)} train / {len(data.x_test)} held out; conv1d width 32, embedding 64, "
              f"projection {args.projection_dim}; batch {args.batch}, {args.epochs} epoch(s) = {steps} steps, "
              f"AdamW lr {args.lr} constant, wd {WEIGHT_DECAY}, seed {args.seed}; torch {torch.__version__}, "
              f"{args.threads} thread(s), {args.rounds} round(s); load average at start {load_average()}", flush=True)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {s: [] for s in sides} for m in methods}
        for r in range(args.rounds):
            # --tiny: one child per side trains every method (start-up, not training, is most of a small run);
            # otherwise one fresh child per (method, side), the sides' order alternating method by method.
            groups = [methods] if args.tiny else [[m] for m in methods]
            for j, group in enumerate(groups):
                for side in sides if (r + j) % 2 == 0 else sides[::-1]:
                    for method, result in run_child(side, group, work, args.threads).items():
                        runs[method][side].append(result)
                        print(f"round {r + 1} {method:12s} {side:13s} {result['steps_per_s']:7.2f} steps/s  "
                              f"train {result['train_s']:6.2f} s  kNN {result['knn']:.4f}  "
                              f"(load average {load_average()})", flush=True)
        pieces = piece_timings(work, methods, repeats=3 if args.tiny else 15)
        report(args, runs, methods, sides, baseline, pieces)
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "baseline_knn": baseline, "pieces": pieces,
                                             "runs": runs}, indent=1))


def _drift(a: list[float], b: list[float]) -> str:
    """|a - b| of two loss curves at a few steps: how far two runs have drifted apart."""
    n = min(len(a), len(b))
    steps = sorted({s for s in (1, 10, n // 4, n // 2, n) if 1 <= s <= n})
    return ", ".join(f"step {s} {abs(a[s - 1] - b[s - 1]):.1e}" for s in steps)


def report(args: argparse.Namespace, runs: dict[str, dict[str, list[dict[str, Any]]]], methods: list[str],
           sides: list[str], baseline: float, pieces: list[tuple[str, float, float]]) -> None:
    print("\nchecks:")
    for method in methods:
        base = runs[method]["embedmix"][0]
        for side in sides[1:]:
            peer = runs[method][side]
            views = all(r["views"] == base["views"] and r["view_count"] == base["view_count"]
                        for r in peer + runs[method]["embedmix"])
            initial = all(r["initial"] == base["initial"] for r in peer + runs[method]["embedmix"])
            diff = abs(peer[0]["losses"][0] - base["losses"][0])
            print(f"  {method}, embedmix vs {side}: views identical {views} ({base['view_count']} views, "
                  f"{base['steps']} steps); initial weights identical {initial}; loss step 1 |diff| {diff:.2e} "
                  f"(embedmix {base['losses'][0]:.6f}); optimizer {peer[0]['optimizer']} fused={peer[0]['fused']}")
            print(f"    training loss |diff| {_drift(base['losses'], peer[0]['losses'])}")
        if "lightly_fused" in sides:
            print(f"    rounding alone, lightly vs lightly_fused (the same code, another AdamW kernel): training loss "
                  f"|diff| {_drift(runs[method]['lightly'][0]['losses'], runs[method]['lightly_fused'][0]['losses'])}")
        own = [r["own_knn"] for r in runs[method]["embedmix"]]
        ours = [r["knn"] for r in runs[method]["embedmix"]]
        print(f"  {method}: embedmix's own final kNN accuracy equals the bench's score of its embeddings: "
              f"{all(abs(a - b) < 1e-12 for a, b in zip(own, ours))}; optimizer "
              f"{base['optimizer']} fused={base['fused']}")
    lightly_version = next((runs[m][s][0].get("lightly") for m in methods for s in sides[1:]), None)
    print(f"  lightly {lightly_version}; kNN accuracy of the untrained network (k {KNN_K}, T {KNN_T}): {baseline:.4f}")

    print("\n| method | side | steps/s | steps/CPU s | train s | kNN accuracy | loss step 1 | loss last step | peak RSS MiB | child wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method in methods:
        for side in sides:
            rs = runs[method][side]
            knn = statistics.median(r["knn"] for r in rs)
            print(f"| {method} | {LABELS[side]} | {median(rs, 'steps_per_s'):.2f} | {median(rs, 'steps_per_cpu_s'):.2f} | "
                  f"{median(rs, 'train_s'):.2f} | {knn:.4f} | {rs[0]['losses'][0]:.4f} | "
                  f"{statistics.median(r['losses'][-1] for r in rs):.4f} | {median(rs, 'rss_mib'):.0f} | {median(rs, 'wall_s'):.1f} |")
    print()
    for method in methods:
        ours = runs[method]["embedmix"]
        for side in sides[1:]:
            peer = runs[method][side]
            per_round = [a["steps_per_s"] / b["steps_per_s"] for a, b in zip(ours, peer)]
            cpu = median(ours, "steps_per_cpu_s") / median(peer, "steps_per_cpu_s")
            knn_diff = statistics.median(r["knn"] for r in ours) - statistics.median(r["knn"] for r in peer)
            print(f"{method}: embedmix / {LABELS[side]} steps/s {median(ours, 'steps_per_s') / median(peer, 'steps_per_s'):.2f} "
                  f"(per round {', '.join(f'{x:.2f}' for x in per_round)}; per CPU second {cpu:.2f}); "
                  f"kNN accuracy embedmix - peer {knn_diff:+.4f}")
    print("\nper-step pieces where the sides' code differs, each side's own on the same tensors, timed in turns "
          "in the parent (ms per call, median):")
    print("| piece | embedmix ms | lightly ms | lightly / embedmix |")
    print("|---|---:|---:|---:|")
    for piece, ours_ms, theirs_ms in pieces:
        print(f"| {piece} | {ours_ms:.3f} | {theirs_ms:.3f} | {theirs_ms / ours_ms:.2f} |")
    if "lightly_fused" in sides:
        print("kNN accuracy lightly - lightly_fused (the same code, rounding alone): "
              + ", ".join(f"{m} {statistics.median(r['knn'] for r in runs[m]['lightly']) - statistics.median(r['knn'] for r in runs[m]['lightly_fused']):+.4f}"
                          for m in methods))
    spread = {m: {s: sorted({round(r["knn"], 4) for r in runs[m][s]}) for s in sides} for m in methods}
    print(f"kNN accuracy over rounds: {spread}")
    print(f"load average at the end {load_average()}")


if __name__ == "__main__":
    main()
