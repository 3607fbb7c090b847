"""Training's entry point: `train(spec, data)` runs a resolved spec with the trainer of its data's modality.

The shared loop is `core.loop`, the step `core.step`; each modality lives in a
module of its own (`core.array_train`, `core.text_train`). Callers (the worker,
the CLI) talk to a run through `core.loop.Callbacks`.
"""

from __future__ import annotations

import torch

from embedmix.core.array_train import ArrayTrainer
from embedmix.core.data import Dataset, TextPairs
from embedmix.core.loop import Callbacks, InitWeights, NullCallbacks, Progress, TrainingLoop, TrainResult, pick_device
from embedmix.core.spec import JobSpec, resolve_for_task
from embedmix.core.text_train import TextTrainer

# What callers outside the engine use, in one place.
__all__ = ["ArrayTrainer", "Callbacks", "InitWeights", "NullCallbacks", "Progress", "TextTrainer", "TrainResult",
           "pick_device", "train", "trainer_for"]


def trainer_for(spec: JobSpec, data: Dataset | TextPairs, callbacks: Callbacks | None = None,
                device: torch.device | None = None, *, init_weights: InitWeights | None = None) -> TrainingLoop:
    """The trainer of the data's modality for a resolved spec; metrics the spec leaves to the data are filled here.

    `init_weights` (an encoder's state dict, as `core.export.read_encoder_weights` gives it) is what the
    encoder starts from instead of a fresh initialisation (see `core.loop.load_init_weights`).
    """
    if isinstance(data, TextPairs):
        return TextTrainer(spec, data, callbacks, device, init_weights)
    return ArrayTrainer(resolve_for_task(spec, data.task), data, callbacks, device, init_weights)


def train(spec: JobSpec, data: Dataset | TextPairs, callbacks: Callbacks | None = None, *, resume: bytes | None = None,
          init_weights: InitWeights | None = None, device: torch.device | None = None) -> TrainResult:
    """Train `spec` on `data`; with `resume`, continue from that checkpoint. The result carries the spec that ran.

    The encoder starts from `init_weights` when given; a checkpoint already holds the weights the
    run had reached, so with `resume` the starting weights are not loaded at all.
    """
    trainer = trainer_for(spec, data, callbacks, device, init_weights=None if resume is not None else init_weights)
    if resume is not None:
        trainer.load_state(resume)
    return trainer.run()
