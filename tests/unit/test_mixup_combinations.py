"""Every mixing method trains end to end with every loss the catalog says it combines with."""

from __future__ import annotations

import pytest

from embedmix.core import catalog
from embedmix.core.data import load_dataset
from embedmix.core.spec import SpecError, validate_spec
from embedmix.core.train import train

DATA = {
    "class": {"name": "mnist1d", "size": 200},
    "target": {"name": "diabetes"},
    "none": {"name": "mnist1d", "size": 200},
}
IMAGES = {"name": "digits"}


def _spec(method: str, loss: str) -> dict:
    mix = catalog.MIXUPS[method]
    dataset = IMAGES if mix.extra.get("input_rank") == [3] else DATA[mix.labels]
    encoder = "conv2d" if dataset is IMAGES else "mlp"
    two_view = mix.views == 2 or catalog.LOSSES[loss].labels == "none"
    params = {"queue_size": 64, "n_hard": 8, "s": 4, "s_prime": 2} if method == "mochi" else (
        {"queue_size": 64} if method == "moco" else {})
    common = {name: value for name, value in (("alpha", 1.0), ("weight", 0.5)) if name in mix.common_defaults()}
    return {
        "name": f"{method}-{loss}",
        "dataset": dataset,
        "model": {"encoder": encoder, "embedding_dim": 8, "width": 8},
        "objective": {"loss": loss, **({"views": 2} if two_view else {})},
        "mixup": {"method": method, **common, "params": params},
        "train": {"epochs": 1, "batch_size": 32, "seed": 1},
        "eval": {"metrics": [], "every_epochs": 0},
    }


COMBINATIONS = [(m, loss) for m, e in catalog.MIXUPS.items() for loss in e.extra["losses"]]


@pytest.mark.parametrize(("method", "loss"), COMBINATIONS, ids=[f"{m}+{l}" for m, l in COMBINATIONS])
def test_valid_combination_trains(method, loss):
    spec = validate_spec(_spec(method, loss))
    data = load_dataset(spec)
    if spec.dataset.name == "digits":
        data.x_train, data.y_train = data.x_train[:200], data.y_train[:200]
    result = train(spec, data)
    assert result.step >= 1 and not result.stopped


@pytest.mark.parametrize("method", sorted(catalog.MIXUPS))
def test_invalid_combination_names_both_fields(method):
    allowed = set(catalog.MIXUPS[method].extra["losses"])
    loss = next(name for name in ("triplet", "cross_entropy", "barlow_twins", "mse") if name not in allowed)
    spec = _spec(method, next(iter(allowed)))
    spec["objective"] = {"loss": loss}
    with pytest.raises(SpecError) as err:
        validate_spec(spec)
    text = str(err.value)
    assert "mixup.method" in text and repr(loss) in text
