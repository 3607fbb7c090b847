"""The spec the service runs is the spec it shows: `embedmix validate`, `GET /v1/jobs/{id}` and the
model card of the finished job carry the same resolved spec, every catalog default written in.

Real parts: the API in-process on SQLite and PostgreSQL, the worker's task body on the same
database, the CLI through typer's runner.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from embedmix.api import create_app
from embedmix.cli.main import app as cli_app
from embedmix.core import catalog
from embedmix.service.settings import Settings
from embedmix.store import DatabaseArtifacts
from tests.integration.conftest import auth, owner_with_keys
from embedmix.worker.context import WorkerContext
from embedmix.worker.train_task import run_job

# Metrix with nothing but its name: alpha, level, weight and its own parameters come from the catalog.
SPEC: dict[str, Any] = {
    "name": "resolved",
    "dataset": {"name": "mnist1d", "size": 300},
    "model": {"encoder": "mlp", "embedding_dim": 8},
    "objective": {"loss": "multi_similarity"},
    "mixup": {"method": "metrix"},
    "train": {"epochs": 1, "batch_size": 64, "device": "cpu"},
}


def _validated_by_the_cli(tmp_path: Path, body: dict[str, Any]) -> dict[str, Any]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(body))
    result = CliRunner().invoke(cli_app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_validate_the_job_and_its_model_card_show_one_resolved_spec(
    app_settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    shown = _validated_by_the_cli(tmp_path, SPEC)
    metrix = catalog.MIXUPS["metrix"]
    assert shown["mixup"] == {"method": "metrix", **metrix.common_defaults(), "params": metrix.defaults(), "until": None}
    assert shown["mixup"]["alpha"] == 2.0 and shown["mixup"]["weight"] == 0.4 and shown["mixup"]["level"] == "feature"
    assert shown["objective"]["params"] == catalog.LOSSES["multi_similarity"].defaults()
    assert shown["model"]["width"] == 256 and shown["model"]["params"] == {"depth": 2}
    assert shown["eval"]["metrics"] == catalog.DEFAULT_METRICS["classification"]

    _, [(_, key)] = owner_with_keys(app_settings, 1)
    with TestClient(create_app(app_settings)) as client:
        submitted = client.post("/v1/jobs", json=SPEC, headers=auth(key))
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        assert submitted.json()["spec"] == shown
        context = WorkerContext(app_settings, session_factory, DatabaseArtifacts())
        assert run_job(job_id, context) == "succeeded"
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        card = client.get(f"/v1/jobs/{job_id}/model/card", headers=auth(key)).json()
    assert job["spec"] == shown
    assert card["spec"] == shown


def test_a_common_field_the_method_does_not_use_is_422_naming_it(app_settings: Settings) -> None:
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    body = {**SPEC, "objective": {"loss": "supcon"}, "mixup": {"method": "input", "weight": 0.01}}
    with TestClient(create_app(app_settings)) as client:
        response = client.post("/v1/jobs", json=body, headers=auth(key))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "mixup.weight" and "'input' does not use weight" in error["message"]


def test_an_upload_job_stores_the_metrics_of_its_data(app_settings: Settings) -> None:
    """The task of an uploaded file is known once the upload is bound: its default metrics are stored."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(40, 3)).astype(np.float32), y=rng.normal(size=40).astype(np.float32))
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    with TestClient(create_app(app_settings)) as client:
        uploaded = client.post("/v1/datasets", files={"file": ("targets.npz", buf.getvalue())}, headers=auth(key))
        assert uploaded.status_code == 201, uploaded.text
        body = {"dataset": {"id": uploaded.json()["id"]}, "objective": {"loss": "mse"}}
        submitted = client.post("/v1/jobs", json=body, headers=auth(key))
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["spec"]["eval"]["metrics"] == catalog.DEFAULT_METRICS["regression"]


@pytest.mark.parametrize("method", sorted(catalog.MIXUPS))
def test_what_the_cli_shows_validates_to_itself(method: str, tmp_path: Path) -> None:
    """A stored spec is validated again by the worker: resolution must be a fixed point."""
    mix = catalog.MIXUPS[method]
    loss = mix.extra["losses"][0]
    dataset = {"name": "digits"} if mix.extra.get("input_rank") == [3] else (
        {"name": "diabetes"} if mix.labels == "target" else {"name": "mnist1d", "size": 300})
    views = {"views": 2} if mix.views == 2 or catalog.LOSSES[loss].labels == "none" else {}
    body = {"dataset": dataset, "objective": {"loss": loss, **views}, "mixup": {"method": method}}
    shown = _validated_by_the_cli(tmp_path, body)
    assert _validated_by_the_cli(tmp_path, shown) == shown
