"""Resolve, then run: validation writes every catalog default into the spec, and training reads the spec.

Each loss and each mixing method goes through validation with an empty params block;
the resolved spec must carry the catalog's values, the modules the trainer builds must
hold them, and a common mixing field (alpha, level, weight) a method does not use is
refused naming it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from embedmix.core import catalog
from embedmix.core.array_train import ArrayTrainer
from embedmix.core.data import load_dataset
from embedmix.core.errors import SpecError
from embedmix.core.mixup import METHODS
from embedmix.core.mixup.metrix import Metrix
from embedmix.core.spec import resolve, validate_spec

COMMON = ("alpha", "level", "weight")


def _dataset(labels: str, input_rank: list[int] | None = None) -> dict[str, Any]:
    if input_rank == [3]:
        return {"name": "digits"}
    return {"name": "diabetes"} if labels == "target" else {"name": "mnist1d", "size": 200}


def loss_body(name: str) -> dict[str, Any]:
    entry = catalog.LOSSES[name]
    views = {"views": 2} if entry.labels == "none" else {}
    dataset = {"name": "paired_modalities", "size": 200} if entry.extra.get("modalities") == 2 else _dataset(entry.labels)
    return {"dataset": dataset, "objective": {"loss": name, "params": {}, **views},
            "train": {"epochs": 1, "batch_size": 32}}


def method_body(method: str, **mixup: Any) -> dict[str, Any]:
    mix = catalog.MIXUPS[method]
    loss = mix.extra["losses"][0]
    views = {"views": 2} if mix.views == 2 or catalog.LOSSES[loss].labels == "none" else {}
    return {"dataset": _dataset(mix.labels, mix.extra.get("input_rank")),
            "model": {"encoder": "conv2d" if mix.extra.get("input_rank") == [3] else "mlp", "embedding_dim": 8},
            "objective": {"loss": loss, **views}, "mixup": {"method": method, "params": {}, **mixup},
            "train": {"epochs": 1, "batch_size": 32}}


def _trainer(spec) -> ArrayTrainer:
    return ArrayTrainer(spec, load_dataset(spec), device=torch.device("cpu"))


@pytest.mark.parametrize("name", sorted(set(catalog.LOSSES) - {"mnrl"}))  # mnrl trains text pairs (test_text_encoder)
def test_every_loss_resolves_to_its_catalog_defaults_and_trains_with_them(name: str) -> None:
    entry = catalog.LOSSES[name]
    spec = validate_spec(loss_body(name))
    assert spec.objective.params == entry.defaults()
    assert spec.objective.views == (2 if entry.labels == "none" else entry.views)
    trainer = _trainer(spec)
    assert {p.name: getattr(trainer.loss, p.name) for p in entry.params} == entry.defaults()


@pytest.mark.parametrize("method", sorted(catalog.MIXUPS))
def test_every_method_resolves_to_its_catalog_defaults(method: str) -> None:
    mix = catalog.MIXUPS[method]
    spec = validate_spec(method_body(method))
    resolved = spec.mixup.model_dump()
    assert resolved == {"method": method, **dict.fromkeys(COMMON), **mix.common_defaults(), "params": mix.defaults(),
                        "until": None}  # mixup.until has no default: a run mixes throughout unless told
    assert spec.mixup.level in (mix.levels() or (None,))


@pytest.mark.parametrize("method", sorted(catalog.MIXUPS))
def test_every_method_trains_with_the_common_fields_of_its_spec(method: str) -> None:
    """The method's module holds what the resolved spec says, not a default of its own or the catalog's."""
    mix = catalog.MIXUPS[method]
    spec = validate_spec(method_body(method))
    moved = {"alpha": 3.5, "weight": 0.25}
    spec = spec.model_copy(update={"mixup": spec.mixup.model_copy(update={k: v for k, v in moved.items()
                                                                            if k in mix.common_defaults()})})
    trainer = _trainer(spec)
    assert isinstance(trainer.method, METHODS[method])
    for name in ("alpha", "weight"):
        if name in mix.common_defaults():
            assert getattr(trainer.method, name) == moved[name], name
    if len(mix.levels()) > 1:
        assert trainer.method.level == spec.mixup.level


def test_metrix_left_at_its_name_trains_with_alpha_2_and_weight_0_4(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: Metrix's stated alpha 2.0 and weight 0.4 reach the mixed term."""
    spec = validate_spec({**method_body("metrix"), "objective": {"loss": "multi_similarity"}})
    draws: list[tuple[float, float]] = []
    import embedmix.core.mixup.metrix as metrix_module

    real_beta = metrix_module.sample_beta

    def spy_beta(a, b, shape, gen, *args, **kwargs):
        draws.append((a, b))
        return real_beta(a, b, shape, gen, *args, **kwargs)

    monkeypatch.setattr(metrix_module, "sample_beta", spy_beta)
    monkeypatch.setattr(Metrix, "loss_parts", lambda self, *a: (torch.tensor(1.0), torch.tensor(10.0)))
    trainer = _trainer(spec)
    loss = trainer.batch_loss(torch.arange(32))
    assert draws == [(2.0, 2.0)]
    assert float(loss) == pytest.approx(1.0 + 0.4 * 10.0)


@pytest.mark.parametrize("method", sorted(catalog.MIXUPS))
def test_a_common_field_the_method_does_not_use_is_refused_naming_it(method: str) -> None:
    mix = catalog.MIXUPS[method]
    unused = [name for name in COMMON if name not in mix.common_defaults()]
    for name in unused:
        value = "input" if name == "level" else 0.5
        with pytest.raises(SpecError) as info:
            validate_spec(method_body(method, **{name: value}))
        assert {e["field"] for e in info.value.errors} == {f"mixup.{name}"}
        assert f"{method!r} does not use {name}" in str(info.value)


def test_input_mixup_refuses_a_weight_instead_of_ignoring_it() -> None:
    with pytest.raises(SpecError, match="mixup.weight"):
        validate_spec(method_body("input", weight=0.01))


def test_the_registry_and_the_catalog_name_the_same_methods() -> None:
    assert set(METHODS) == set(catalog.MIXUPS)


def test_resolution_fills_encoder_width_and_depth_augmentation_and_metrics() -> None:
    spec = validate_spec({"dataset": {"name": "digits"}, "model": {"encoder": "conv2d"},
                          "objective": {"loss": "ntxent"}})
    assert spec.model.width == catalog.ENCODERS["conv2d"].extra["default_width"]
    assert spec.model.params == catalog.ENCODERS["conv2d"].defaults()
    assert spec.objective.views == 2 and spec.augment.enabled is True
    assert spec.eval.metrics == catalog.DEFAULT_METRICS["classification"]
    assert spec.dataset.size is None  # digits has a fixed size
    blobs = validate_spec({"dataset": {"name": "blobs", "params": {"num_classes": 4}}})
    assert blobs.dataset.size == 2000 and blobs.dataset.params == {"num_classes": 4, "num_features": 32, "cluster_std": 1.0}


def test_resolution_is_a_fixed_point_and_leaves_unknown_tasks_to_the_data() -> None:
    spec = validate_spec({"dataset": {"name": "mnist1d"}, "mixup": {"method": "manifold"}})
    assert resolve(spec) == spec and validate_spec(spec.model_dump()) == spec
    upload = validate_spec({"dataset": {"id": "ds_abc"}})
    assert upload.eval.metrics is None  # filled once the upload's task is known (api) or the file is read (train)
    assert upload.objective.params == catalog.LOSSES["supcon"].defaults()


def test_a_size_given_twice_is_refused() -> None:
    with pytest.raises(SpecError, match="dataset.params.size"):
        validate_spec({"dataset": {"name": "mnist1d", "size": 300, "params": {"size": 400}}})


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"dataset": {"name": "mnist1d"}, "train": {"batch_size": 100, "samples_per_class": 8}},
     "train.samples_per_class", "must be a multiple of it"),
    ({"dataset": {"name": "diabetes"}, "objective": {"loss": "ntxent"}, "train": {"batch_size": 64, "samples_per_class": 8}},
     "train.samples_per_class", "need class labels"),
])
def test_batching_a_run_cannot_do_is_refused_at_validation(body: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError) as raised:
        validate_spec(body)
    assert any(e["field"] == field and words in e["message"] for e in raised.value.errors), raised.value.errors
    ok = {**body, "dataset": {"name": "mnist1d"}, "train": {"batch_size": 64, "samples_per_class": 8}}
    ok.pop("objective", None)
    validate_spec(ok)


def test_a_text_job_on_several_devices_is_refused() -> None:
    body = {"dataset": {"id": "ds_pairs"}, "model": {"encoder": "minilm", "embedding_dim": 384},
            "objective": {"loss": "mnrl"}, "resources": {"devices": 2}}
    with pytest.raises(SpecError) as raised:
        validate_spec(body)
    assert [e["field"] for e in raised.value.errors] == ["resources.devices"]
    validate_spec({**body, "resources": {"devices": 1}})
