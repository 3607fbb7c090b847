"""Mixing methods of the seed papers, each selected by `spec.mixup.method`.

`build` returns the method's module; the training loop calls it for every batch
(see `core.mixup.base.MixingMethod`). `METHODS` names every method's class;
`core.catalog.MIXUPS` describes the same names (parameters, defaults, data
needs, paper), and a test keeps the two in step.
"""

from __future__ import annotations

from torch import nn

from embedmix.core.mixup.barlow import MixedBarlowTwins
from embedmix.core.mixup.base import Batch, MixingMethod
from embedmix.core.mixup.c_mixup import CMixup
from embedmix.core.mixup.classification import DecoupledMixup, MixOE, RankMixup
from embedmix.core.mixup.generic import CutMix, EmbeddingMixup, InputMixup, ManifoldMixup
from embedmix.core.mixup.metrix import Metrix
from embedmix.core.mixup.moco import MoCHi, MoCo
from embedmix.core.mixup.supremix import SupReMix
from embedmix.core.spec import JobSpec

METHODS: dict[str, type[MixingMethod]] = {
    "input": InputMixup,
    "manifold": ManifoldMixup,
    "embedding": EmbeddingMixup,
    "cutmix": CutMix,
    "metrix": Metrix,
    "supremix": SupReMix,
    "decoupled_mixup": DecoupledMixup,
    "moco": MoCo,
    "mochi": MoCHi,
    "c_mixup": CMixup,
    "rankmixup": RankMixup,
    "mixed_barlow_twins": MixedBarlowTwins,
    "mixoe": MixOE,
}


def build(spec: JobSpec, base_loss: nn.Module, *, num_classes: int | None, embedding_dim: int) -> MixingMethod | None:
    """The resolved spec's mixing method, or None when the spec mixes nothing."""
    if spec.mixup is None:
        return None
    return METHODS[spec.mixup.method](spec, base_loss, num_classes=num_classes, embedding_dim=embedding_dim)


__all__ = ["Batch", "METHODS", "MixingMethod", "build"]
