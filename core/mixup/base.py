"""The contract between the training loop and a mixing method.

A method replaces the loop's default "embed the batch, apply the loss" with its own
batch loss, may own parameters (a classification head) and state (a queue, a
momentum encoder) that are trained and checkpointed with the run, may act after
each optimizer step (momentum update), and may add metrics at evaluation (ECE,
utilization, AUROC). Every random draw must come from the generator it is given,
so a fixed seed gives the same mixing twice and resume stays bit-exact.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from embedmix.core.models import Encoder, TrainingNet
from embedmix.core.spec import JobSpec


@dataclass
class Batch:
    """One training batch as a method sees it.

    `x` is the preprocessed input (B, ...); `y` the labels or targets (None when
    unlabelled); `view()` draws a fresh augmented view of `x` from `gen` (the
    identity when augmentation is off).
    """

    x: Tensor
    y: Tensor | None
    gen: torch.Generator
    view: Callable[[], Tensor]
    step: int
    total_steps: int


class MixingMethod(nn.Module, ABC):
    """Base class: `batch_loss` is required, the hooks default to doing nothing."""

    def __init__(self, spec: JobSpec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int):
        super().__init__()
        self.spec = spec
        # Kept out of this module's submodules: the loop already optimises and checkpoints
        # the loss's parameters (a class-weight loss's proxies), and registering it here too
        # would put them into the optimizer twice.
        object.__setattr__(self, "base_loss", base_loss)
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim

    @abstractmethod
    def batch_loss(self, net: TrainingNet, batch: Batch) -> Tensor:
        """The loss of one batch, mixing included (the loop backpropagates it)."""

    def after_step(self, net: TrainingNet) -> None:
        """Called after each optimizer step (e.g. a momentum encoder's EMA update)."""

    def extra_metrics(self, encoder: Encoder, data, device: torch.device) -> dict[str, float]:
        """Metrics only this method can compute (they need its head or its training set view)."""
        return {}
