"""The loop every trainer shares, and how it talks to its caller (`Callbacks`).

A run is a pure function of (spec, data, seed): the data order of epoch e is a
permutation drawn from a generator seeded by (seed, e), and every other random draw
(augmentation, dropout, mixing) comes from RNGs whose states go into each checkpoint.
So a checkpoint at step s plus the same spec continues exactly the sequence an
uninterrupted run would have taken (bit-exact on CPU).
"""

from __future__ import annotations

import io
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from embedmix.core.distributed import Ranks, current_ranks
from embedmix.core.errors import SpecError, UnsupportedSpec
from embedmix.core.export import ExportInputs
from embedmix.core.spec import INIT_FROM_FIELD, JobSpec
from embedmix.core.step import TrainStep

CHECKPOINT_FORMAT = 1
# The metric point (value 1) a run reports at the step where mixing stops (spec.mixup.until), once per run.
MIXING_STOPPED = "train/mixup_stopped"


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: int
    epochs: int
    loss: float
    lr: float
    elapsed_s: float
    eta_s: float
    samples_per_s: float

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 1.0


class Callbacks(Protocol):
    """How the loop reports to its caller; each method must return quickly."""

    def on_progress(self, progress: Progress) -> None: ...
    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None: ...
    def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None: ...
    def should_stop(self) -> bool: ...


class NullCallbacks:
    def on_progress(self, progress: Progress) -> None:
        pass

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None:
        pass

    def should_stop(self) -> bool:
        return False


@dataclass
class TrainResult:
    """How a run ended; `spec` is the resolved spec it ran, `export_inputs` what exporting its encoder needs."""

    encoder: nn.Module
    spec: JobSpec
    export_inputs: ExportInputs
    metrics: dict[str, float]
    step: int
    epoch: int
    stopped: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1  # ranks that trained it together (core.distributed)


def pick_device(spec: JobSpec) -> torch.device:
    if spec.train.device == "cuda" or (spec.train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UnsupportedSpec("train.device: 'cuda' was asked for but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of an epoch, a function of (seed, epoch) alone so resume needs no state for it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def seed_everything(seed: int) -> None:
    """Model initialisation and any incidental numpy/python randomness follow the spec's seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mixing_stop_step(spec: JobSpec, steps_per_epoch: int, total_steps: int) -> int | None:
    """The first step that trains unmixed under `spec.mixup.until`; None when nothing stops mixing.

    A function of the spec and the run's length alone, so a resumed run knows from its step
    counter which side of the switch it is on: no state to checkpoint.
    """
    until = spec.mixup.until if spec.mixup is not None else None
    if until is None:
        return None
    if until.epoch is not None:
        return until.epoch * steps_per_epoch
    # mix while step < fraction x total steps, the fraction read as written (0.3 x 10 is 3, not 3.0000000000000004)
    return math.ceil(Fraction(str(until.fraction)) * total_steps)


InitWeights = dict[str, torch.Tensor]


def load_init_weights(encoder: nn.Module, weights: InitWeights) -> None:
    """Start ``encoder`` from exactly ``weights`` (its full state dict), or say which key does not fit.

    Called before the optimizer, the mixing method and any momentum copy exist, so
    everything built from the encoder afterwards starts from these weights too. A
    partial or reshaped match is refused rather than half-loaded: a run that
    silently trained some layers from scratch would not be the run asked for.
    """
    own = encoder.state_dict()
    problem = _first_misfit(own, weights)
    if problem is not None:
        raise SpecError([{"field": INIT_FROM_FIELD, "message": f"the starting weights do not fit this model: {problem}"}])
    encoder.load_state_dict(weights, strict=True)


def _first_misfit(own: dict[str, torch.Tensor], weights: InitWeights) -> str | None:
    """The first key (in the model's order, then the weights') whose tensor is missing, extra or of another shape."""
    for key, tensor in own.items():
        given = weights.get(key)
        if not isinstance(given, torch.Tensor):
            return f"{key!r} is missing from them"
        if given.shape != tensor.shape:
            return f"{key!r} has shape {tuple(given.shape)} there and {tuple(tensor.shape)} here"
    extra = next((key for key in weights if key not in own), None)
    return None if extra is None else f"they hold {extra!r}, which this model does not have"


class TrainingLoop(ABC):
    """Epochs of seeded batch orders, one `TrainStep` per batch, loss logging, progress,
    periodic evaluation and checkpoints, stopping on request: written once, so that every
    modality reports, checkpoints and resumes alike.

    A modality (a subclass) owns the model and the data. It sets ``spec`` (resolved),
    ``device``, ``cb``, ``batch``, ``steps_per_epoch``, ``total_steps`` and ``rows``, calls
    ``_start(trainable)`` once its modules exist, and supplies the batch loss, evaluation,
    its part of a checkpoint, its batch order, its encoder and what exporting it needs.
    """

    spec: JobSpec
    device: torch.device
    cb: Callbacks
    batch: int
    steps_per_epoch: int
    total_steps: int

    def _start(self, trainable: list[nn.Parameter], clipped: list[nn.Parameter] | None = None,
               reduce_gradients: Callable[[list[nn.Parameter]], None] | None = None) -> None:
        self.train_step = TrainStep(self.spec, trainable, self.device, clipped, reduce_gradients)
        self.opt = self.train_step.opt
        self.autocast = self.train_step.autocast
        self.step = 0
        self.last_loss = float("nan")
        self.history: list[dict[str, Any]] = []
        self.mixing_stop = mixing_stop_step(self.spec, self.steps_per_epoch, self.total_steps)

    # -- what a modality supplies --------------------------------------------------
    @abstractmethod
    def batch_loss(self, idx: torch.Tensor) -> torch.Tensor:
        """The loss of the rows ``idx`` (forward passes under ``self.autocast``)."""

    def cached_loss(self, idx: torch.Tensor, chunk: int) -> torch.Tensor:
        """The loss of ``idx`` with its gradient already accumulated, ``chunk`` rows at a time (train.grad_cache_chunk)."""
        raise UnsupportedSpec("train.grad_cache_chunk: this run cannot use the cached loss")

    def after_step(self) -> None:
        """Called after each optimizer step (a mixing method's momentum update)."""

    def mixing(self) -> bool:
        """Whether the step being taken uses the mixing method: until `spec.mixup.until`, then the plain loss."""
        return self.mixing_stop is None or self.step < self.mixing_stop

    @abstractmethod
    def evaluate(self) -> dict[str, float]: ...

    @abstractmethod
    def _own_state(self) -> dict[str, Any]:
        """The modality's part of a checkpoint: its modules' state dicts and any RNG of its own."""

    @abstractmethod
    def _load_own_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_own_state` saved."""

    @abstractmethod
    def _batch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the training rows, where the rows live."""

    @abstractmethod
    def _trained_encoder(self) -> nn.Module:
        """Switch the model to training mode and return the encoder the result hands back."""

    @abstractmethod
    def export_inputs(self) -> ExportInputs:
        """What `core.export.export` needs to write this modality's encoder and its card section."""

    # -- checkpoints ---------------------------------------------------------------
    def state_bytes(self) -> bytes:
        """Everything a resumed run needs to continue bit-exactly: step, optimizer, RNG states, modules."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            **self._own_state(),
            "optimizer": self.opt.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def load_state(self, blob: bytes) -> None:
        """Restore a checkpoint; weights_only=True so a tampered blob cannot run code."""
        state = torch.load(io.BytesIO(blob), map_location=self.device, weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')} is not {CHECKPOINT_FORMAT}")
        self._load_own_state(state)
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.step = int(state["step"])

    def _checkpoint(self) -> None:
        self.cb.on_checkpoint(self.state_bytes(), self.step, self.step // self.steps_per_epoch)

    # -- the loop ------------------------------------------------------------------
    def _train_step(self, idx: torch.Tensor) -> float:
        value = self.train_step(self.step, self.steps_per_epoch, lambda: self.batch_loss(idx),
                                lambda chunk: self.cached_loss(idx, chunk))
        self.after_step()
        self.step += 1
        if self.step == self.mixing_stop and self.step < self.total_steps:
            self.cb.on_metrics(self.step, self.step // self.steps_per_epoch, {MIXING_STOPPED: 1.0})
        return value

    def _report_eval(self, epoch: int) -> dict[str, float]:
        values = self.evaluate()
        self.cb.on_metrics(self.step, epoch, {f"eval/{k}": v for k, v in values.items()})
        self.history.append({"step": self.step, "epoch": epoch, **{f"eval/{k}": v for k, v in values.items()}})
        return values

    def run(self) -> TrainResult:
        t = self.spec.train
        start, start_step = time.perf_counter(), self.step
        log_every = max(1, self.total_steps // 1000)
        checkpoint_every = t.checkpoint_every_steps or self.steps_per_epoch
        every_epochs = self.spec.eval.every_epochs
        encoder = self._trained_encoder()
        running, count, metrics, stopped = 0.0, 0, {}, False
        order_epoch, order = -1, torch.empty(0, dtype=torch.long)
        while self.step < self.total_steps:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            if epoch != order_epoch:
                order_epoch, order = epoch, self._batch_order(epoch)
            idx = order[offset * self.batch:(offset + 1) * self.batch]
            self.last_loss = self._train_step(idx)
            running += self.last_loss
            count += 1
            done_epoch = self.step % self.steps_per_epoch == 0
            epoch_now = self.step // self.steps_per_epoch
            if self.step % log_every == 0 or self.step == self.total_steps:
                self.cb.on_metrics(self.step, epoch_now, {"train/loss": running / count})
                running, count = 0.0, 0
            self._progress(start, start_step)
            if done_epoch and every_epochs and epoch_now % every_epochs == 0 and self.step < self.total_steps:
                self._report_eval(epoch_now)
            if self.step % checkpoint_every == 0 and self.step < self.total_steps:
                self._checkpoint()
            if self.cb.should_stop():
                stopped = True
                self._checkpoint()
                break
        if not stopped:
            metrics = self._report_eval(self.step // self.steps_per_epoch)
            self._checkpoint()
        return TrainResult(encoder, self.spec, self.export_inputs(), metrics, self.step,
                           self.step // self.steps_per_epoch, stopped, time.perf_counter() - start, self.history,
                           current_ranks().world_size)

    def _progress(self, start: float, start_step: int) -> None:
        elapsed = time.perf_counter() - start
        done = self.step - start_step
        rate = done / elapsed if elapsed > 0 else 0.0
        self.cb.on_progress(Progress(
            step=self.step, total_steps=self.total_steps, epoch=self.step // self.steps_per_epoch,
            epochs=self.spec.train.epochs, loss=self.last_loss,
            lr=self.opt.param_groups[0]["lr"], elapsed_s=elapsed,
            eta_s=(self.total_steps - self.step) / rate if rate else float("inf"), samples_per_s=rate * self.batch,
        ))


class GroupCallbacks:
    """Rank 0 reports (metrics, progress, checkpoints) for the group; the others stay silent.

    The stop request is rank 0's, broadcast every step, so a cancel reaches every
    rank at the same step and the group stops together (rank 0 checkpoints).
    """

    def __init__(self, inner: Callbacks, ranks: Ranks):
        self.inner, self.ranks = inner, ranks
        self.lead = ranks.rank == 0

    def on_progress(self, progress: Progress) -> None:
        if self.lead:
            self.inner.on_progress(progress)

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        if self.lead:
            self.inner.on_metrics(step, epoch, values)

    def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None:
        if self.lead:
            self.inner.on_checkpoint(state, step, epoch)

    def should_stop(self) -> bool:
        flag = torch.tensor([1 if self.lead and self.inner.should_stop() else 0])
        dist.broadcast(flag, src=0)
        return bool(flag.item())
