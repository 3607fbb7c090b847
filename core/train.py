"""The training loop. Everything outside it (worker, CLI) talks to it through `Callbacks`.

A run is a pure function of (spec, data, seed): the data order of epoch e is a
permutation drawn from a generator seeded by (seed, e), and every other random draw
(augmentation, dropout, mixing) comes from RNGs whose states go into each checkpoint.
So a checkpoint at step s plus the same spec continues exactly the sequence an
uninterrupted run would have taken (bit-exact on CPU).
"""

from __future__ import annotations

import io
import logging
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from core import catalog, losses, mixup
from core.data import Dataset, TextPairs
from core.data.augment import augment
from core.errors import Diverged, UnsupportedSpec
from core.evaluate import USES_TRAIN, evaluate
from core.losses.grad_cache import cached_backward, embedding_loss_grad
from core.mixup import Batch
from core.models import Encoder, build_net
from core.spec import JobSpec

CHECKPOINT_FORMAT = 1
# Share of the free accelerator memory the training data may take before it stays in host memory.
DEVICE_DATA_SHARE = 0.5
log = logging.getLogger(__name__)


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
    encoder: Encoder
    metrics: dict[str, float]
    step: int
    epoch: int
    stopped: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def check_runnable(spec: JobSpec) -> None:
    """Refuse, never ignore, what this engine does not implement yet."""
    if spec.mixup is not None:
        if spec.mixup.method not in mixup.METHODS:
            raise UnsupportedSpec(f"mixup.method: {spec.mixup.method!r} is in the catalog but not implemented by this engine yet; "
                                  "remove the mixup block to train without mixing")


def pick_device(spec: JobSpec) -> torch.device:
    if spec.train.device == "cuda" or (spec.train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UnsupportedSpec("train.device: 'cuda' was asked for but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def lr_at(spec: JobSpec, step: int, steps_per_epoch: int) -> float:
    """Learning rate at a step: linear warm-up, then cosine, step decay or constant."""
    t = spec.train
    total = t.epochs * steps_per_epoch
    warmup = int(t.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return t.lr * (step + 1) / warmup
    if t.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if t.schedule == "step":
        return t.lr * t.step_gamma ** (step // steps_per_epoch // t.step_epochs)
    return t.lr


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of an epoch, a function of (seed, epoch) alone so resume needs no state for it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@torch.no_grad()
def embed(encoder: Encoder, x: torch.Tensor, device: torch.device, batch: int = 1024) -> torch.Tensor:
    """Normalised embeddings of raw inputs, in eval mode, in batches; returned on the CPU."""
    was_training = encoder.training
    encoder.eval()
    out = [encoder(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)]
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, encoder.embedding_dim)


def data_fits(nbytes: int, device: torch.device) -> bool:
    """Whether training arrays of `nbytes` should live on `device` (always on the CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_DATA_SHARE * free


def configure_gpu(net: nn.Module, device: torch.device) -> bool:
    """TF32 matmuls and convolutions on CUDA; channels_last when the net has 2-D convolutions. Returns the latter."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    if any(isinstance(m, nn.Conv2d) for m in net.modules()):
        net.to(memory_format=torch.channels_last)
        return True
    return False


class CompiledForward:
    """`torch.compile(net)` that falls back to eager `net` (once, calling `on_fallback`) when compilation fails.

    Compilation can fail when the model is compiled or at any call that triggers a
    (re)compile; either way the run continues eagerly rather than dying on an
    optimisation it did not need.
    """

    def __init__(self, net: nn.Module, on_fallback: Callable[[BaseException], None]):
        self.net, self.on_fallback = net, on_fallback
        self.compiled: Callable[..., torch.Tensor] | None = None
        try:
            self.compiled = torch.compile(net)
        except Exception as exc:  # noqa: BLE001 - any failure to compile means: run eagerly
            self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        self.compiled = None
        self.on_fallback(exc)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as exc:  # noqa: BLE001
                self._fall_back(exc)
        return self.net(x)


class TrainingLoop(ABC):
    """The loop every trainer shares: epochs of seeded batch orders, loss logging, progress,
    periodic evaluation and checkpoints, stopping on request. A subclass owns the model and
    the data and says how to take one step, evaluate, and serialise its state; the loop is
    written once so that array and text runs report, checkpoint and resume alike.

    A subclass sets ``spec``, ``device``, ``cb``, ``opt``, ``batch``, ``steps_per_epoch``,
    ``total_steps``, ``step``, ``last_loss`` and ``history``.
    """

    spec: JobSpec
    device: torch.device
    cb: Callbacks
    opt: torch.optim.Optimizer
    batch: int
    steps_per_epoch: int
    total_steps: int
    step: int
    last_loss: float
    history: list[dict[str, Any]]

    @abstractmethod
    def _train_step(self, idx: torch.Tensor) -> float:
        """One optimisation step on rows ``idx``; advances ``step``; returns the loss."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]: ...

    @abstractmethod
    def _own_state(self) -> dict[str, Any]:
        """The subclass's part of a checkpoint: its modules' state dicts and any RNG of its own."""

    @abstractmethod
    def _load_own_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_own_state` saved."""

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

    @abstractmethod
    def _batch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the training rows, where the rows live."""

    @abstractmethod
    def _trained_encoder(self) -> nn.Module:
        """Switch the model to training mode and return the encoder the result hands back."""

    def _checkpoint(self) -> None:
        self.cb.on_checkpoint(self.state_bytes(), self.step, self.step // self.steps_per_epoch)

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
        return TrainResult(encoder, metrics, self.step, self.step // self.steps_per_epoch, stopped,
                           time.perf_counter() - start, self.history)

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



class Trainer(TrainingLoop):
    """One run's state; `run()` trains from the current step to the end or a stop."""

    def __init__(self, spec: JobSpec, data: Dataset, callbacks: Callbacks | None = None, device: torch.device | None = None):
        check_runnable(spec)
        self.spec, self.data = spec, data
        self.cb = callbacks or NullCallbacks()
        self.device = device or pick_device(spec)
        seed_everything(spec.train.seed)
        self.net = build_net(spec.model, data.x_train).to(self.device)
        out_dim = spec.model.projection_dim or spec.model.embedding_dim
        self.loss = losses.build(spec.objective.loss, num_classes=data.num_classes, embedding_dim=out_dim,
                                 **spec.objective.params).to(self.device)
        self.views = spec.views()
        self.use_labels = catalog.LOSSES[spec.objective.loss].labels != "none" and not (self.views == 2 and self.loss.two_view)
        aug = spec.augment.enabled
        self.augment = self.views == 2 if aug is None else aug
        self.channels_last = configure_gpu(self.net, self.device)
        self._place_data(data)
        n = len(self.x)
        self.batch = min(spec.train.batch_size, n)
        self.steps_per_epoch = max(1, n // self.batch)
        self.total_steps = spec.train.epochs * self.steps_per_epoch
        if hasattr(self.loss, "fit_targets"):
            self.loss.fit_targets(data.y_train)
        self.method = mixup.build(spec, self.loss, num_classes=data.num_classes, embedding_dim=out_dim)
        if self.method is not None:
            self.method.to(self.device)
        params = list(self.net.parameters()) + list(self.loss.parameters())
        params += list(self.method.parameters()) if self.method is not None else []
        self.opt = _optimizer(spec, params, self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(spec.train.seed + 1)
        self.step = 0
        self.last_loss = float("nan")
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" and spec.train.amp
                         else nullcontext())
        self.history: list[dict[str, Any]] = []
        self.cache_chunk = spec.train.grad_cache_chunk
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.net
        if spec.train.compile:
            self.forward = CompiledForward(self.net, self._compile_failed)

    def _place_data(self, data: Dataset) -> None:
        """Training arrays on the device when they fit, so batches are drawn by index there; otherwise in host memory."""
        nbytes = data.x_train.nbytes + (data.y_train.nbytes if data.y_train is not None else 0)
        self.data_on_device = data_fits(nbytes, self.device)
        home = self.device if self.data_on_device else torch.device("cpu")
        self.x = data.x_train.to(home)
        self.y = data.y_train.to(home) if data.y_train is not None else None

    def _fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch's inputs and labels on the device (idx lives where the data does).

        From host memory a batch is gathered into pinned memory (only the batch: pinning
        a data set too large for the GPU would tie up as much page-locked RAM) and copied
        without blocking, so the copy overlaps the work already queued on the GPU.
        """
        x = self.x[idx]
        y = self.y[idx] if self.y is not None else None
        if not self.data_on_device:
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True) if y is not None else None
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _compile_failed(self, exc: BaseException) -> None:
        """Report through the callbacks (a metric the caller stores) and the log, then carry on eagerly."""
        log.warning("train.compile: torch.compile failed (%s: %s); training continues without compilation",
                    type(exc).__name__, exc)
        self.cb.on_metrics(self.step, self.step // self.steps_per_epoch, {"train/compile_fallback": 1.0})

    # -- checkpoints -------------------------------------------------------------
    def _own_state(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "loss": self.loss.state_dict(),
            "method": self.method.state_dict() if self.method is not None else {},
            "rng_gen": self.gen.get_state(),
        }

    def _load_own_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.loss.load_state_dict(state["loss"])
        if self.method is not None:
            self.method.load_state_dict(state["method"])
        self.gen.set_state(state["rng_gen"].cpu() if self.device.type == "cpu" else state["rng_gen"])

    def _batch_order(self, epoch: int) -> torch.Tensor:
        return epoch_order(self.spec.train.seed, epoch, len(self.x)).to(self.x.device)

    def _trained_encoder(self) -> nn.Module:
        self.net.train()
        return self.net.encoder

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        return augment(x, self.spec.augment, self.gen) if self.augment else x

    def _batch_loss(self, idx: torch.Tensor) -> torch.Tensor:
        x, y = self._fetch(idx)
        x = self.net.encoder.preprocess(x)
        if self.method is not None:
            batch = Batch(x=x, y=y, gen=self.gen, view=lambda: self._view(x), step=self.step, total_steps=self.total_steps)
            with self.autocast:
                return self.method.batch_loss(self.net, batch).float()
        xs = [self._view(x) for _ in range(self.views)]
        with self.autocast:
            zs = [self.forward(v).float() for v in xs]
        if not self.use_labels:
            return self.loss(zs[0], zs[1])
        if len(zs) == 2:
            return self.loss(torch.cat(zs), torch.cat([y, y]))
        return self.loss(zs[0], y)

    def _autocast_forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return self.forward(x)

    def _cached_loss(self, idx: torch.Tensor) -> torch.Tensor:
        """The plain objective's loss with its gradient already accumulated, `cache_chunk` rows at a time.

        The views are drawn for the whole batch first, as the plain path draws
        them, so the cached run sees the same inputs.
        """
        x, y = self._fetch(idx)
        x = self.net.encoder.preprocess(x)
        inputs = torch.cat([self._view(x) for _ in range(self.views)])
        labels = y.repeat(self.views) if self.use_labels else None
        return cached_backward(self.net, self._autocast_forward, inputs, self.cache_chunk,
                               lambda z: embedding_loss_grad(self.loss, z, labels, self.cache_chunk))

    def _train_step(self, idx: torch.Tensor) -> float:
        lr = lr_at(self.spec, self.step, self.steps_per_epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        if self.cache_chunk is not None and self.method is None:
            loss = self._cached_loss(idx)
        else:
            loss = self._batch_loss(idx)
            loss.backward()
        value = loss.detach().item()
        if not math.isfinite(value):
            raise Diverged(f"loss became {value} at step {self.step}; lower train.lr or enable train.grad_clip")
        if self.spec.train.grad_clip:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.spec.train.grad_clip)
        self.opt.step()
        if self.method is not None:
            self.method.after_step(self.net)
        self.step += 1
        return value

    def evaluate(self) -> dict[str, float]:
        asked = self.spec.eval.metrics or catalog.DEFAULT_METRICS.get(self.data.task or "", ["uniformity"])
        # Metrics a mixing method owns (ECE of its head, utilization, ...) come from the method.
        names = [m for m in asked if not catalog.METRICS[m].extra.get("from_methods")]
        train = None
        if USES_TRAIN & set(names):
            train = (embed(self.net.encoder, self.data.x_train, self.device), self.data.y_train)
        test_emb = embed(self.net.encoder, self.data.x_test, self.device)
        values = evaluate(names, train=train, test=(test_emb, self.data.y_test),
                          recall_k=tuple(self.spec.eval.recall_k), knn_k=self.spec.eval.knn_k,
                          knn_temperature=self.spec.eval.knn_temperature, seed=self.spec.train.seed)
        if self.method is not None:
            values |= self.method.extra_metrics(self.net.encoder, self.data, self.device)
        return values

def _optimizer(spec: JobSpec, params: list[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    t = spec.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    # The fused kernel (CUDA and CPU) updates all parameters in one pass instead of a dozen
    # elementwise ops per tensor; on the CPU that is most of the engine's edge over a plain loop.
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=device.type in ("cuda", "cpu"))


def seed_everything(seed: int) -> None:
    """Model initialisation and any incidental numpy/python randomness follow the spec's seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(spec: JobSpec, data: Dataset | TextPairs, callbacks: Callbacks | None = None, *, resume: bytes | None = None,
          device: torch.device | None = None) -> TrainResult:
    """Train `spec` on `data`; with `resume`, continue from that checkpoint. Text pairs train in `core.text_train`."""
    if isinstance(data, TextPairs):
        from core.text_train import (
            train_text,  # imported here: core.text_train builds on this module
        )

        return train_text(spec, data, callbacks, resume=resume, device=device)
    trainer = Trainer(spec, data, callbacks, device)
    if resume is not None:
        trainer.load_state(resume)
    return trainer.run()
