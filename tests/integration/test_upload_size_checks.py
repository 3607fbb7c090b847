"""Data-size problems of an uploaded dataset are a 422 at submit, naming the field, not a failure on a worker.

The upload's info keeps its rows per class; submission works out the split from those
counts (``core.data.split.plan_split``) and refuses a split with an empty side, and
classes with fewer training rows than a pair loss needs (a class of 2 rows whose split
sends one to the test set, say). Each refusal is
checked against the worker's own loading of the same file: it must fail there too, so
the service refuses exactly what a worker would have failed on.

Real parts: the API in-process on SQLite and PostgreSQL, the engine's data loading.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embedmix.api import create_app
from embedmix.core.data import load_dataset
from embedmix.core.errors import DataError
from embedmix.core.spec import validate_spec
from embedmix.service.settings import Settings
from tests.integration.conftest import auth, owner_with_keys


def npz_bytes(y: np.ndarray) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(len(y), 4)).astype(np.float32), y=y)
    return buf.getvalue()


# 10 + 10 + 1 rows: class 2's single row stays in training (round(0.2 x 1) = 0), alone.
SMALL_CLASS = np.array([0] * 10 + [1] * 10 + [2], dtype=np.int64)
TARGETS = np.linspace(0.0, 1.0, 40, dtype=np.float32)

CASES = [
    pytest.param(SMALL_CLASS, {"objective": {"loss": "supcon"}, "train": {"batch_size": 8}}, "objective.loss",
                 "classes [2] have fewer than 2 training samples", id="pair-loss-class-of-one"),
    pytest.param(np.array([0, 0, 1, 1], dtype=np.int64), {"objective": {"loss": "multi_similarity"},
                                                        "train": {"batch_size": 8},
                                                        "split": {"kind": "random", "test_fraction": 0.5}},
                 "objective.loss", "classes [0, 1] have fewer than 2 training samples", id="split-takes-the-pairs"),
    pytest.param(SMALL_CLASS, {"objective": {"loss": "cross_entropy"}, "train": {"batch_size": 4},
                               "split": {"kind": "random", "test_fraction": 0.01}},
                 "dataset.split.test_fraction", "leave the test set empty", id="stratified-test-empty"),
    pytest.param(TARGETS, {"objective": {"loss": "mse"}, "train": {"batch_size": 4},
                           "split": {"kind": "random", "test_fraction": 0.01}},
                 "dataset.split.test_fraction", "leaves the test set empty", id="regression-test-empty"),
    pytest.param(SMALL_CLASS, {"objective": {"loss": "cross_entropy"}, "train": {"batch_size": 4},
                               "split": {"kind": "classes", "holdout_classes": [0, 1, 2]}},
                 "dataset.split.holdout_classes", "leaves the train set empty", id="every-class-held-out"),
    pytest.param(TARGETS, {"objective": {"loss": "mse"}, "train": {"batch_size": 4},
                           "split": {"kind": "random", "test_fraction": 0.2, "validation_fraction": 0.01}},
                 "dataset.split.validation_fraction", "validation share of the 32 training rows is empty",
                 id="validation-empty"),
    pytest.param(SMALL_CLASS, {"objective": {"loss": "cross_entropy"}, "train": {"batch_size": 4},
                               "split": {"kind": "random", "test_fraction": 0.2, "validation_fraction": 0.01}},
                 "dataset.split.validation_fraction", "validation share of the 17 training rows is empty",
                 id="stratified-validation-empty"),
    pytest.param(TARGETS, {"objective": {"loss": "mse"}, "train": {"batch_size": 4},
                           "split": {"kind": "random", "test_fraction": 0.2, "validation_fraction": 0.99}},
                 "dataset.split.validation_fraction", "takes all 32 training rows", id="validation-takes-all"),
]


def job_body(dataset_id: str, case: dict[str, Any]) -> dict[str, Any]:
    dataset = {"id": dataset_id, **({"split": case["split"]} if "split" in case else {})}
    return {"dataset": dataset, "model": {"encoder": "mlp", "width": 8, "embedding_dim": 4},
            "objective": case["objective"], "train": {"epochs": 1, **case["train"]}}


@pytest.mark.parametrize(("y", "case", "field", "words"), CASES)
def test_a_data_size_problem_is_a_422_naming_its_field_and_the_worker_agrees(
    app_settings: Settings, tmp_path: Path, y: np.ndarray, case: dict[str, Any], field: str, words: str
) -> None:
    data = npz_bytes(y)
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    with TestClient(create_app(app_settings)) as client:
        uploaded = client.post("/v1/datasets", files={"file": ("data.npz", data)}, headers=auth(key))
        assert uploaded.status_code == 201, uploaded.text
        body = job_body(uploaded.json()["id"], case)
        refused = client.post("/v1/jobs", json=body, headers=auth(key))
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["param"] == field and words in error["message"], error

    path = tmp_path / "data.npz"  # the same file, as a worker would load it
    path.write_bytes(data)
    local = {**body, "dataset": {**body["dataset"], "id": None, "path": str(path)}}
    local["dataset"].pop("id")
    spec = validate_spec(local)
    with pytest.raises(DataError):
        load_dataset(spec)


def test_an_upload_reports_its_class_counts_and_a_fitting_job_is_accepted(app_settings: Settings) -> None:
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    with TestClient(create_app(app_settings)) as client:
        uploaded = client.post("/v1/datasets", files={"file": ("data.npz", npz_bytes(SMALL_CLASS))}, headers=auth(key))
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["info"]["class_counts"] == [10, 10, 1]
        body = job_body(uploaded.json()["id"], {"objective": {"loss": "cross_entropy"}, "train": {"batch_size": 16}})
        accepted = client.post("/v1/jobs", json=body, headers=auth(key))
    assert accepted.status_code == 201, accepted.text


def _two_modality_npz(second: bool) -> bytes:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    arrays = {"x": rng.normal(size=(40, 6)).astype(np.float32), "y": y}
    if second:
        arrays["x2"] = rng.normal(size=(40, 3)).astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize(("second", "loss", "field"), [(False, "m3col", "dataset.id"), (True, "supcon", "objective.loss")],
                         ids=["two-modality-loss-on-one", "one-modality-loss-on-two"])
def test_a_loss_and_an_upload_of_different_modalities_are_a_422_and_the_worker_agrees(
    app_settings: Settings, tmp_path: Path, second: bool, loss: str, field: str
) -> None:
    data = _two_modality_npz(second)
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    with TestClient(create_app(app_settings)) as client:
        uploaded = client.post("/v1/datasets", files={"file": ("data.npz", data)}, headers=auth(key))
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["info"]["modalities"] == (2 if second else 1)
        body = job_body(uploaded.json()["id"], {"objective": {"loss": loss}, "train": {"batch_size": 8}})
        refused = client.post("/v1/jobs", json=body, headers=auth(key))
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["param"] == field
        if second:  # the right loss on the same upload is taken
            fitting = job_body(uploaded.json()["id"], {"objective": {"loss": "m3col"}, "train": {"batch_size": 8}})
            assert client.post("/v1/jobs", json=fitting, headers=auth(key)).status_code == 201

    path = tmp_path / "data.npz"
    path.write_bytes(data)
    local = {**body, "dataset": {"path": str(path)}}
    with pytest.raises(DataError):
        load_dataset(validate_spec(local))


def test_an_upload_whose_second_modality_does_not_match_x_is_refused(app_settings: Settings) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(40, 6)).astype(np.float32), x2=rng.normal(size=(39, 3)).astype(np.float32),
             y=np.repeat(np.arange(4), 10))
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    with TestClient(create_app(app_settings)) as client:
        response = client.post("/v1/datasets", files={"file": ("data.npz", buf.getvalue())}, headers=auth(key))
    assert response.status_code == 422, response.text
    assert "x2" in response.json()["error"]["message"] and "39 rows" in response.json()["error"]["message"]
