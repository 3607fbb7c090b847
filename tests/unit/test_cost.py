"""The memory estimate that admission compares with a worker's memory (core.cost)."""

from __future__ import annotations

import resource

import pytest

from embedmix.core.cost import DataShape, builtin_shape, estimate
from embedmix.core.spec import validate_spec

GIB = 2**30


def _estimate(body: dict):
    spec = validate_spec(body)
    return estimate(spec, builtin_shape(spec))


def test_the_spec_that_killed_a_worker_is_estimated_beyond_what_it_needed() -> None:
    """Issue 13's case: 5M x 100 blobs needed over 6 GB; the estimate must not be below that."""
    cost = _estimate({"dataset": {"name": "blobs", "size": 5_000_000, "params": {"num_features": 100, "num_classes": 4}},
                      "train": {"epochs": 1, "device": "cpu"}})
    assert cost.total > 6 * GIB
    assert cost.largest()[1] == "dataset.size"


def test_a_small_recipe_is_small() -> None:
    cost = _estimate({"dataset": {"name": "mnist1d"}, "model": {"encoder": "conv1d"},
                      "objective": {"loss": "multi_similarity"}, "mixup": {"method": "metrix"}})
    assert cost.total < GIB / 4


@pytest.mark.parametrize(("change", "part", "field"), [
    ({"train": {"batch_size": 32_768}}, "loss", "train.batch_size"),
    ({"model": {"encoder": "mlp", "width": 8192, "params": {"depth": 16}}}, "model", "model.width"),
])
def test_the_largest_part_names_the_field_to_shrink(change: dict, part: str, field: str) -> None:
    cost = _estimate({"dataset": {"name": "mnist1d"}, **change})
    assert cost.largest() == (part, field)


def test_estimating_a_huge_model_allocates_nothing() -> None:
    """Parameters and activations are counted on the meta device: a 15 GB model costs no memory to estimate."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cost = _estimate({"dataset": {"name": "mnist1d"}, "model": {"encoder": "mlp", "width": 8192, "params": {"depth": 16}}})
    assert cost.parts["model"] > 10 * GIB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: far below a gigabyte


def test_each_part_grows_with_what_it_depends_on() -> None:
    base = {"dataset": {"name": "mnist1d"}, "objective": {"loss": "ntxent"}}
    small = _estimate(base).parts
    bigger_batch = _estimate({**base, "train": {"batch_size": 1024}}).parts
    assert bigger_batch["loss"] > small["loss"] and bigger_batch["activations"] > small["activations"]
    assert bigger_batch["data"] == small["data"] and bigger_batch["model"] == small["model"]
    cached = _estimate({**base, "train": {"batch_size": 1024, "grad_cache_chunk": 64}}).parts
    assert cached["activations"] < bigger_batch["activations"]
    queue = _estimate({**base, "mixup": {"method": "moco", "params": {"queue_size": 65_536}}}).parts
    assert queue["loss"] > small["loss"]


def test_uploads_and_text_have_estimates_from_their_shape() -> None:
    upload = validate_spec({"dataset": {"id": "ds_abc"}, "objective": {"loss": "supcon"}})
    assert estimate(upload, DataShape(rows=10_000, input_shape=(3, 32, 32), num_classes=10)).total > \
        estimate(upload, DataShape(rows=100, input_shape=(3, 32, 32), num_classes=10)).total
    text = validate_spec({"dataset": {"id": "ds_abc"}, "model": {"encoder": "minilm", "embedding_dim": 384},
                          "objective": {"loss": "mnrl"}})
    assert estimate(text, DataShape(rows=1000, input_shape=())).parts["model"] > 300 * 2**20
