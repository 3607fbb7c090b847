"""JobSpec validation and the catalog: good specs pass with defaults, bad ones name their field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from embedmix.core import catalog
from embedmix.core.spec import EXAMPLE_SPEC, JobSpec, SpecError, load_spec_file, validate_spec

DESIGN_EXAMPLE = json.loads((Path(__file__).resolve().parents[2] / "examples/mnist1d-ms-metrix.json").read_text())


def with_(base: dict, **sections) -> dict:
    """A deep copy of `base` with whole top-level sections replaced or merged one level deep."""
    out = copy.deepcopy(base)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def fields_of(data) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate_spec(data)
    errors = info.value.errors
    assert errors, "SpecError without errors"
    for e in errors:
        assert set(e) == {"field", "message"} and e["message"]
    return [e["field"] for e in errors]


# --- good specs -------------------------------------------------------------------------------


def test_design_example_validates_as_it_stands():
    spec = validate_spec(copy.deepcopy(DESIGN_EXAMPLE))
    assert isinstance(spec, JobSpec)
    assert spec.name == "mnist1d-ms-metrix"
    assert spec.dataset.name == "mnist1d" and spec.dataset.split.kind == "random"
    assert spec.dataset.split.test_fraction == 0.2
    assert spec.model.encoder == "conv1d" and spec.model.embedding_dim == 64
    assert spec.objective.loss == "multi_similarity"
    assert spec.mixup is not None and spec.mixup.method == "metrix"
    assert (spec.mixup.alpha, spec.mixup.level, spec.mixup.weight) == (2.0, "feature", 0.4)
    assert (spec.train.epochs, spec.train.batch_size, spec.train.lr, spec.train.seed) == (10, 256, 0.001, 0)
    assert spec.eval.metrics == ["precision_at_1", "map_at_r", "recall_at_k"]
    assert spec.export.formats == ["safetensors", "onnx"]


def test_design_example_as_json_text_and_bytes():
    text = json.dumps(DESIGN_EXAMPLE)
    assert validate_spec(text) == validate_spec(DESIGN_EXAMPLE)
    assert validate_spec(text.encode()) == validate_spec(DESIGN_EXAMPLE)


def test_defaults_are_filled():
    spec = validate_spec(DESIGN_EXAMPLE)
    # fields the example leaves out take their documented defaults, the catalog's written into the spec
    assert spec.model.width == 64 and spec.model.params == {"depth": 3}
    assert spec.model.projection_dim is None and spec.model.dropout == 0.0
    assert spec.train.weight_decay == 1e-4 and spec.train.optimizer == "adamw" and spec.train.schedule == "cosine"
    assert spec.train.max_attempts == 3 and spec.train.device == "auto"
    assert spec.eval.recall_k == [1, 4] and spec.eval.every_epochs == 1
    assert spec.export.onnx_opset == 18
    assert spec.augment.enabled is False and spec.augment.flip is False
    # the loss's defaults come from the catalog, and views from the loss
    assert spec.objective.params == {"alpha": 2.0, "beta": 50.0, "base": 0.5, "miner_epsilon": 0.1, "miner": True}
    assert spec.objective.views == 1


def test_minimal_spec_gets_working_defaults():
    spec = validate_spec({"dataset": {"name": "blobs"}})
    assert spec.name == "job"
    assert spec.model.encoder == "mlp" and spec.objective.loss == "supcon" and spec.mixup is None
    assert spec.dataset.split.kind == "random" and spec.dataset.split.test_fraction == 0.2
    assert spec.train.epochs == 10 and spec.train.batch_size == 128 and spec.train.lr == 1e-3
    assert spec.export.formats == ["safetensors", "onnx"]


def test_design_example_without_mixup_validates():
    data = copy.deepcopy(DESIGN_EXAMPLE)
    del data["mixup"]
    spec = validate_spec(data)
    assert spec.mixup is None
    assert spec.objective.loss == "multi_similarity"


def test_loss_params_override_defaults_and_views_follow_the_loss():
    spec = validate_spec({"dataset": {"name": "mnist1d"}, "objective": {"loss": "ntxent", "params": {"temperature": 0.5}}})
    assert spec.objective.params == {"temperature": 0.5}
    assert spec.objective.views == 2 and spec.augment.enabled is True
    spec = validate_spec({"dataset": {"name": "mnist1d"}, "objective": {"loss": "ntxent", "views": 1}})
    assert spec.objective.views == 1 and spec.augment.enabled is False


def test_holdout_split_and_upload_and_path_sources_validate():
    spec = validate_spec({"dataset": {"name": "mnist1d", "split": {"kind": "classes", "holdout_classes": [7, 8, 9]}}})
    assert spec.dataset.split.holdout_classes == [7, 8, 9]
    assert validate_spec({"dataset": {"id": "ds_abc123"}}).dataset.id == "ds_abc123"
    assert validate_spec({"dataset": {"path": "/tmp/data.npz"}}).dataset.path == "/tmp/data.npz"


def test_regression_dataset_with_regression_metrics_validates():
    spec = validate_spec({"dataset": {"name": "diabetes"}, "objective": {"loss": "barlow_twins"},
                          "eval": {"metrics": ["mae", "r2", "uniformity"]}})
    assert spec.objective.views == 2 and spec.eval.metrics == ["mae", "r2", "uniformity"]


# --- bad specs name their field ---------------------------------------------------------------

BASE = {"dataset": {"name": "mnist1d"}}

BAD = {
    "unknown top-level": (with_(BASE, colour="blue"), "colour"),
    "unknown nested (train)": (with_(BASE, train={"epocs": 3}), "train.epocs"),
    "unknown nested (dataset)": ({"dataset": {"name": "mnist1d", "bogus": 1}}, "dataset.bogus"),
    "unknown nested (split)": ({"dataset": {"name": "mnist1d", "split": {"kind": "random", "frac": 0.1}}}, "dataset.split.frac"),
    "epochs 0": (with_(BASE, train={"epochs": 0}), "train.epochs"),
    "lr -1": (with_(BASE, train={"lr": -1}), "train.lr"),
    "batch_size 1": (with_(BASE, train={"batch_size": 1}), "train.batch_size"),
    "test_fraction 1.5": ({"dataset": {"name": "mnist1d", "split": {"test_fraction": 1.5}}}, "dataset.split.test_fraction"),
    "test_fraction 0": ({"dataset": {"name": "mnist1d", "split": {"test_fraction": 0}}}, "dataset.split.test_fraction"),
    "embedding_dim 1": (with_(BASE, model={"embedding_dim": 1}), "model.embedding_dim"),
    "split kind unknown": ({"dataset": {"name": "mnist1d", "split": {"kind": "stratified"}}}, "dataset.split.kind"),
    "export format unknown": (with_(BASE, export={"formats": ["pickle"]}), "export.formats.0"),
    "bad job name": (with_(BASE, name="has space"), "name"),
    "unknown encoder": (with_(BASE, model={"encoder": "transformer"}), "model.encoder"),
    "unknown loss": (with_(BASE, objective={"loss": "hinge"}), "objective.loss"),
    "unknown dataset": ({"dataset": {"name": "imagenet"}}, "dataset.name"),
    "unknown metric": (with_(BASE, eval={"metrics": ["precision_at_1", "accuracy"]}), "eval.metrics"),
    "unknown mixup method": (with_(BASE, mixup={"method": "mixmatch"}), "mixup.method"),
    "unknown loss param": (with_(BASE, objective={"loss": "supcon", "params": {"temp": 0.1}}), "objective.params.temp"),
    "loss param too small": (with_(BASE, objective={"loss": "supcon", "params": {"temperature": 0.0}}), "objective.params.temperature"),
    "loss param too large": (with_(BASE, objective={"loss": "arcface", "params": {"margin": 91.0}}), "objective.params.margin"),
    "loss param str for float": (with_(BASE, objective={"loss": "supcon", "params": {"temperature": "hot"}}), "objective.params.temperature"),
    "loss param bool for float": (with_(BASE, objective={"loss": "supcon", "params": {"temperature": True}}), "objective.params.temperature"),
    "loss param int for bool": (with_(BASE, objective={"loss": "multi_similarity", "params": {"miner": 1}}), "objective.params.miner"),
    "loss param bad choice": (with_(BASE, objective={"loss": "triplet", "params": {"triplets": "hardest"}}), "objective.params.triplets"),
    "encoder param out of range": (with_(BASE, model={"encoder": "mlp", "params": {"depth": 0}}), "model.params.depth"),
    "dataset param unknown": ({"dataset": {"name": "blobs", "params": {"classes": 3}}}, "dataset.params.classes"),
    "dataset param out of range": ({"dataset": {"name": "blobs", "params": {"num_classes": 1}}}, "dataset.params.num_classes"),
    "supcon on regression": ({"dataset": {"name": "diabetes"}, "objective": {"loss": "supcon"}}, "objective.loss"),
    "barlow_twins one view": (with_(BASE, objective={"loss": "barlow_twins", "views": 1}), "objective.views"),
    "ntxent one view on regression": ({"dataset": {"name": "diabetes"}, "objective": {"loss": "ntxent", "views": 1}}, "objective.views"),
    "regression metric on classification": (with_(BASE, eval={"metrics": ["precision_at_1", "rmse"]}), "eval.metrics"),
    "classification metric on regression": ({"dataset": {"name": "diabetes"}, "objective": {"loss": "barlow_twins"},
                                             "eval": {"metrics": ["map_at_r"]}}, "eval.metrics"),
    "conv2d on mnist1d": (with_(BASE, model={"encoder": "conv2d"}), "model.encoder"),
    "conv1d on digits": ({"dataset": {"name": "digits"}, "model": {"encoder": "conv1d"}}, "model.encoder"),
    "batch too small for loss": (with_(BASE, objective={"loss": "supcon"}, train={"batch_size": 3}), "train.batch_size"),
    "classes split without holdout": ({"dataset": {"name": "mnist1d", "split": {"kind": "classes"}}}, "dataset.split"),
    "holdout without classes split": ({"dataset": {"name": "mnist1d", "split": {"kind": "random", "holdout_classes": [1]}}}, "dataset.split"),
    "dataset name and id": ({"dataset": {"name": "mnist1d", "id": "ds_abc"}}, "dataset"),
    "dataset without source": ({"dataset": {}}, "dataset"),
    "missing dataset": ({}, "dataset"),
    "bad dataset id": ({"dataset": {"id": "abc"}}, "dataset.id"),
    # found while writing these tests (fixed in core/spec.py)
    "recall_k 0": (with_(BASE, eval={"recall_k": [1, 0]}), "eval.recall_k.1"),
    "negative holdout class": ({"dataset": {"name": "mnist1d", "split": {"kind": "classes", "holdout_classes": [-1]}}},
                               "dataset.split.holdout_classes.0"),
    "size beyond the dataset's range": ({"dataset": {"name": "mnist1d", "size": 5_000_000}}, "dataset.size"),
    "size of a fixed-size dataset": ({"dataset": {"name": "digits", "size": 100}}, "dataset.size"),
    "class mixup on regression": ({"dataset": {"name": "diabetes"}, "objective": {"loss": "barlow_twins"},
                                   "mixup": {"method": "metrix"}}, "mixup.method"),
    "target mixup on classification": (with_(BASE, mixup={"method": "c_mixup"}), "mixup.method"),
    "two-view mixup with one view": (with_(BASE, mixup={"method": "mochi"}), "mixup.method"),
}


@pytest.mark.parametrize("data,field", list(BAD.values()), ids=list(BAD))
def test_bad_spec_names_the_field(data, field):
    assert field in fields_of(data)


def test_every_bad_field_is_reported_not_just_the_first():
    fields = fields_of(with_(BASE, train={"epochs": 0, "lr": -1}, model={"embedding_dim": 0}))
    assert {"train.epochs", "train.lr", "model.embedding_dim"} <= set(fields)


def test_error_message_names_the_allowed_choices():
    with pytest.raises(SpecError) as info:
        validate_spec(with_(BASE, objective={"loss": "hinge"}))
    (err,) = info.value.errors
    assert "hinge" in err["message"] and "supcon" in err["message"]
    assert str(info.value).startswith("objective.loss: ")


def test_unknown_field_message():
    with pytest.raises(SpecError) as info:
        validate_spec(with_(BASE, colour="blue"))
    assert info.value.errors == [{"field": "colour", "message": "unknown field"}]


def test_out_of_range_param_message_gives_the_range():
    with pytest.raises(SpecError) as info:
        validate_spec(with_(BASE, objective={"loss": "supcon", "params": {"temperature": 20}}))
    assert info.value.errors == [{"field": "objective.params.temperature", "message": "must be within [0.001, 10.0]"}]


def test_param_boundaries_are_inclusive():
    ok = validate_spec(with_(BASE, objective={"loss": "supcon", "params": {"temperature": 10.0}}))
    assert ok.objective.params["temperature"] == 10.0
    ok = validate_spec(with_(BASE, objective={"loss": "supcon", "params": {"temperature": 1}}))  # int for float is fine
    assert ok.objective.params["temperature"] == 1
    assert validate_spec(with_(BASE, objective={"loss": "supcon"}, train={"batch_size": 4})).train.batch_size == 4
    assert validate_spec({"dataset": {"name": "mnist1d", "size": 100}}).dataset.size == 100


@pytest.mark.parametrize("text", ["{not json", '{"dataset": {"name": "mnist1d"}', ""])
def test_invalid_json_text_fails_on_field_spec(text):
    assert fields_of(text) == ["spec"]


def test_non_object_json_fails_on_field_spec():
    assert fields_of("[1, 2]") == ["spec"]


def test_load_spec_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(DESIGN_EXAMPLE))
    assert load_spec_file(good) == validate_spec(DESIGN_EXAMPLE)
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(SpecError) as info:
        load_spec_file(bad)
    assert [e["field"] for e in info.value.errors] == ["spec"]
    assert "not valid JSON" in info.value.errors[0]["message"]


def test_spec_error_is_a_value_error():
    with pytest.raises(ValueError):
        validate_spec({"dataset": {"name": "nope"}})


# --- catalog ----------------------------------------------------------------------------------


def test_catalog_json_round_trips_and_lists_every_section():
    data = catalog.catalog_json()
    assert set(data) == {"datasets", "encoders", "losses", "mixups", "metrics", "exports"}
    again = json.loads(json.dumps(data))
    assert again == data
    for section, table in catalog.SECTIONS.items():
        assert [e["name"] for e in data[section]] == list(table)
        kind = {"datasets": "dataset", "encoders": "encoder", "losses": "loss", "mixups": "mixup", "metrics": "metric"}[section]
        assert all(e["kind"] == kind for e in data[section])
    names = {section: {e["name"] for e in entries} for section, entries in data.items()}
    assert {"mnist1d", "digits", "diabetes", "blobs"} <= names["datasets"]
    assert {"mlp", "conv1d", "conv2d"} <= names["encoders"]
    assert {"supcon", "multi_similarity", "ntxent", "barlow_twins"} <= names["losses"]
    assert "metrix" in names["mixups"]
    assert {"precision_at_1", "map_at_r", "recall_at_k", "mae"} <= names["metrics"]
    supcon = next(e for e in data["losses"] if e["name"] == "supcon")
    assert supcon["params"] == [{"name": "temperature", "type": "float", "default": 0.1, "min": 0.001, "max": 10.0,
                                 "choices": None, "help": ""}]
    assert supcon["labels"] == "class" and supcon["min_per_class"] == 2


def test_design_metric_names_are_in_the_catalog():
    for m in ["precision_at_1", "recall_at_k", "map_at_r", "r_precision", "nmi", "ami", "knn_accuracy",
              "linear_probe_accuracy", "alignment", "uniformity", "mae", "rmse", "r2", "spearman"]:
        assert m in catalog.METRICS, m
    for task, metrics in catalog.DEFAULT_METRICS.items():
        assert all(catalog.METRICS[m].task == task for m in metrics)


@pytest.mark.parametrize("section", list(catalog.SECTIONS))
def test_every_default_lies_within_its_own_range(section):
    checked = 0
    for entry in catalog.SECTIONS[section].values():
        for p in entry.params:
            d = p.default
            assert isinstance(d, {"float": (int, float), "int": int, "bool": bool, "str": str}[p.type]), (entry.name, p.name)
            if p.type in ("float", "int"):
                assert not isinstance(d, bool)
                if p.min is not None:
                    assert d >= p.min, (entry.name, p.name)
                if p.max is not None:
                    assert d <= p.max, (entry.name, p.name)
                if p.min is not None and p.max is not None:
                    assert p.min <= p.max
            if p.choices is not None:
                assert d in p.choices, (entry.name, p.name)
            checked += 1
    if section in ("datasets", "encoders", "losses"):
        assert checked > 0


def test_every_loss_default_validates_as_explicit_params():
    """Writing each loss's defaults out explicitly must be accepted by the validator."""
    for name, entry in catalog.LOSSES.items():
        dataset = "diabetes" if entry.labels == "target" else "mnist1d"
        dataset = "paired_modalities" if entry.extra.get("modalities") == 2 else dataset
        views = {"views": 2} if entry.labels == "none" else {}
        data = {"dataset": {"name": dataset}, "objective": {"loss": name, "params": entry.defaults(), **views}}
        spec = validate_spec(data)
        assert spec.objective.params == entry.defaults()


def test_catalog_names_match_their_keys_and_datasets_declare_shapes():
    for table in catalog.SECTIONS.values():
        for key, entry in table.items():
            assert key == entry.name
    for entry in catalog.DATASETS.values():
        assert entry.task in ("classification", "regression")
        assert isinstance(entry.extra["input_shape"], list) and entry.extra["input_shape"]
    for entry in catalog.ENCODERS.values():
        assert entry.extra["input_rank"] == "any" or all(isinstance(r, int) for r in entry.extra["input_rank"])


def test_the_api_docs_example_is_the_design_example():
    assert EXAMPLE_SPEC == DESIGN_EXAMPLE


@pytest.mark.parametrize(("body", "field"), [
    ('{"dataset": {"name": "blobs", "params": {"cluster_std": NaN}}}', "dataset.params.cluster_std"),
    ('{"dataset": {"name": "mnist1d"}, "objective": {"params": {"temperature": Infinity}}}', "objective.params.temperature"),
    ('{"dataset": {"name": "mnist1d"}, "objective": {"loss": "multi_similarity"}, "mixup": {"method": "metrix", "params": {"x": -Infinity}}}',
     "mixup.params.x"),
    ('{"dataset": {"name": "mnist1d"}, "train": {"lr": NaN}}', "train.lr"),
    ('{"dataset": {"name": "mnist1d"}, "mixup": {"method": "input", "alpha": 1e999}}', "mixup.alpha"),
])
def test_nan_and_infinities_are_refused_in_every_number(body, field):
    """A range check is false for NaN, so NaN must be refused by type, in params blocks too (JSONB cannot store it)."""
    with pytest.raises(SpecError) as info:
        validate_spec(body)
    assert info.value.errors == [{"field": field, "message": "Input should be a finite number"}]
