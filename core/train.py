"""Training's entry point: `train(spec, data)` runs a resolved spec with the trainer of its data's modality.

The shared loop is `core.loop`, the step `core.step`; each modality lives in a
module of its own (`core.array_train`, `core.text_train`). Callers (the worker,
the CLI) talk to a run through `core.loop.Callbacks`.
"""

from __future__ import annotations

import torch

from core.array_train import ArrayTrainer
from core.data import Dataset, TextPairs
from core.loop import Callbacks, NullCallbacks, Progress, TrainingLoop, TrainResult, pick_device
from core.spec import JobSpec, resolve_for_task
from core.text_train import TextTrainer

# What callers outside the engine use, in one place.
__all__ = ["ArrayTrainer", "Callbacks", "NullCallbacks", "Progress", "TextTrainer", "TrainResult", "pick_device",
           "train", "trainer_for"]


def trainer_for(spec: JobSpec, data: Dataset | TextPairs, callbacks: Callbacks | None = None,
                device: torch.device | None = None) -> TrainingLoop:
    """The trainer of the data's modality for a resolved spec; metrics the spec leaves to the data are filled here."""
    if isinstance(data, TextPairs):
        return TextTrainer(spec, data, callbacks, device)
    return ArrayTrainer(resolve_for_task(spec, data.task), data, callbacks, device)


def train(spec: JobSpec, data: Dataset | TextPairs, callbacks: Callbacks | None = None, *, resume: bytes | None = None,
          device: torch.device | None = None) -> TrainResult:
    """Train `spec` on `data`; with `resume`, continue from that checkpoint. The result carries the spec that ran."""
    trainer = trainer_for(spec, data, callbacks, device)
    if resume is not None:
        trainer.load_state(resume)
    return trainer.run()
