"""Mixing methods of the seed papers, each selected by `spec.mixup.method`.

`build` returns the method's module; the training loop calls it for every batch
(see `core.mixup.base.MixingMethod`). A method is registered in METHODS below and
described in `core.catalog.MIXUPS` (parameters, defaults, data needs, paper).
"""

from __future__ import annotations

from torch import nn

from core.mixup.base import Batch, MixingMethod
from core.spec import JobSpec

METHODS: dict[str, type[MixingMethod]] = {}


def build(spec: JobSpec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int) -> MixingMethod | None:
    """The spec's mixing method, or None when the spec mixes nothing."""
    if spec.mixup is None:
        return None
    return METHODS[spec.mixup.method](spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)


__all__ = ["Batch", "METHODS", "MixingMethod", "build"]

# Importing a method's module registers it in METHODS (each module ends with METHODS[name] = ...).
from core.mixup import barlow, c_mixup, classification, generic, metrix, moco, supremix  # noqa: E402,F401
