"""Manifold mixup's ``block`` is checked against the encoder at validation, not at the first step.

Validation counts an encoder's blocks without building it; these tests build
each encoder at several depths and hold the count to what was built, so a
change to an architecture that the count misses fails here. Before the check,
a block past the last was accepted and the job failed in training as
``internal_error``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from embedmix.core import catalog
from embedmix.core.errors import SpecError
from embedmix.core.models import Standardize, build_encoder
from embedmix.core.spec import validate_spec

IMAGE_ENCODERS = {"conv2d", "resnet18"}  # trained here on digits (1 x 8 x 8); the others on mnist1d (40)


def spec_for(encoder: str, depth: int | None, block: int) -> dict[str, Any]:
    dataset = {"name": "digits"} if encoder in IMAGE_ENCODERS else {"name": "mnist1d", "size": 200}
    model: dict[str, Any] = {"encoder": encoder}
    if depth is not None:
        model["params"] = {"depth": depth}
    return {
        "name": "manifold",
        "dataset": dataset,
        "model": model,
        "mixup": {"method": "manifold", "params": {"block": block}},
        "train": {"device": "cpu"},
    }


def built_blocks(spec: dict[str, Any]) -> int:
    resolved = validate_spec({**spec, "mixup": {"method": "manifold"}})
    shape = tuple(catalog.DATASETS[resolved.dataset.name or ""].extra["input_shape"])
    encoder = build_encoder(resolved.model, shape, Standardize(torch.zeros(1), torch.ones(1)))
    return len(encoder.blocks)


def depths(encoder: str) -> list[int | None]:
    """The smallest, default and largest depth the catalog allows (None: the encoder has no depth)."""
    p = next((p for p in catalog.ENCODERS[encoder].params if p.name == "depth"), None)
    return [None] if p is None else sorted({int(p.min), int(p.default), int(p.max)})


CASES = [(e, d) for e in ("mlp", "conv1d", "conv2d", "resnet18") for d in depths(e)]


@pytest.mark.parametrize(("encoder", "depth"), CASES)
def test_the_last_block_is_accepted_and_one_past_it_is_refused_naming_the_field(
    encoder: str, depth: int | None
) -> None:
    count = built_blocks(spec_for(encoder, depth, -1))
    assert validate_spec(spec_for(encoder, depth, count - 1)).mixup.params["block"] == count - 1
    with pytest.raises(SpecError) as refused:
        validate_spec(spec_for(encoder, depth, count))
    errors = [e for e in refused.value.errors if e["field"] == "mixup.params.block"]
    assert errors and f"has {count} blocks" in errors[0]["message"], refused.value.errors


def test_minus_one_draws_a_block_per_step_and_is_always_accepted() -> None:
    assert validate_spec(spec_for("mlp", 1, -1)).mixup.params["block"] == -1
