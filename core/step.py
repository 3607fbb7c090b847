"""One optimisation step, written once for every modality.

A trainer (arrays, text) supplies the batch loss and, for the cached loss, a
version of it that has already accumulated its gradient; everything else a
step does is here: the learning-rate schedule, zeroing gradients, bf16
autocast on CUDA, the finiteness check, gradient clipping, the optimizer
(fused AdamW on the CPU and CUDA) and the step counter's meaning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from embedmix.core.errors import Diverged
from embedmix.core.spec import JobSpec, TrainSpec


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


def make_optimizer(train: TrainSpec, params: list[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """SGD with momentum, or AdamW; AdamW's fused kernel (CUDA and CPU) updates all parameters in one pass
    instead of a dozen elementwise ops per tensor: on the CPU most of the engine's edge over a plain loop."""
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, fused=device.type in ("cuda", "cpu"))


def autocast_for(spec: JobSpec, device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA when the spec allows it (train.amp); a no-op elsewhere."""
    if device.type == "cuda" and spec.train.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class TrainStep:
    """The optimizer over a run's trainable parameters and the step that drives it."""

    def __init__(self, spec: JobSpec, parameters: list[nn.Parameter], device: torch.device,
                 clipped: list[nn.Parameter] | None = None,
                 reduce_gradients: Callable[[list[nn.Parameter]], None] | None = None) -> None:
        """`clipped`: the parameters whose gradient norm `train.grad_clip` bounds (default: all trained ones).
        `reduce_gradients`: combines the ranks' gradients before clipping and the update (None on one device)."""
        self.spec = spec
        self.reduce_gradients = reduce_gradients
        self.parameters = [p for p in parameters if p.requires_grad]
        self.clipped = self.parameters if clipped is None else [p for p in clipped if p.requires_grad]
        self.opt = make_optimizer(spec.train, self.parameters, device)
        self.autocast = autocast_for(spec, device)
        self.cache_chunk = spec.train.grad_cache_chunk

    def __call__(self, step: int, steps_per_epoch: int, batch_loss: Callable[[], Tensor],
                 cached_loss: Callable[[int], Tensor] | None = None) -> float:
        """Step `step`: `batch_loss()` backpropagated here, or, when the spec asks for the cached loss and the
        trainer offers one, `cached_loss(chunk)` with its gradient already accumulated. Returns the loss."""
        lr = lr_at(self.spec, step, steps_per_epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        if self.cache_chunk is not None and cached_loss is not None:
            loss = cached_loss(self.cache_chunk)
        else:
            loss = batch_loss()
            loss.backward()
        if self.reduce_gradients is not None:
            self.reduce_gradients(self.parameters)
        value = loss.detach().item()
        if not math.isfinite(value):
            raise Diverged(f"loss became {value} at step {step}; lower train.lr or enable train.grad_clip")
        if self.spec.train.grad_clip:
            nn.utils.clip_grad_norm_(self.clipped, self.spec.train.grad_clip)
        self.opt.step()
        return value
