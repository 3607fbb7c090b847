"""`model.init_from`: a job starts from a succeeded job's encoder, fetched by the worker from the artifact store.

Real parts: the API in-process over HTTP (TestClient) on SQLite and PostgreSQL, the
worker's task body on the same database and the database artifact store.
B's model is compared tensor for tensor with the run the engine makes from A's
downloaded file, so it must have started from exactly those weights; every
refusal is a 422 naming the field, and a job that others start from is kept.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from embedmix.api import create_app
from embedmix.core.data import load_dataset
from embedmix.core.export import read_encoder_weights
from embedmix.core.spec import validate_spec
from embedmix.core.train import train
from embedmix.service.settings import Settings
from embedmix.store import DatabaseArtifacts
from embedmix.store.models import Job
from tests.integration.conftest import auth, owner_with_keys
from embedmix.worker.context import WorkerContext
from embedmix.worker.train_task import run_job

SPEC: dict[str, Any] = {
    "name": "source",
    "dataset": {"name": "mnist1d", "size": 300},
    "model": {"encoder": "mlp", "width": 16, "embedding_dim": 8},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 1, "batch_size": 32, "seed": 0, "device": "cpu"},
    "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    "export": {"formats": ["safetensors"]},
}


def _from(job_id: str, **model: Any) -> dict[str, Any]:
    """SPEC (seed 1, another name) starting from ``job_id``, with ``model`` fields changed."""
    return {**SPEC, "name": "tuned", "train": {**SPEC["train"], "seed": 1},
            "model": {**SPEC["model"], **model, "init_from": {"job": job_id}}}


def _weights(client: TestClient, key: str, job_id: str) -> dict[str, torch.Tensor]:
    response = client.get(f"/v1/jobs/{job_id}/model", params={"format": "safetensors"}, headers=auth(key))
    assert response.status_code == 200, response.text
    return read_encoder_weights(response.content)


def _refused(client: TestClient, key: str, body: dict[str, Any], says: str) -> None:
    response = client.post("/v1/jobs", json=body, headers=auth(key))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "model.init_from.job", error
    assert says in error["message"], error


def test_a_job_starts_from_another_jobs_model_and_refuses_what_it_must(
    app_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    _, [(_, alice)] = owner_with_keys(app_settings, 1)
    _, [(_, bob)] = owner_with_keys(app_settings, 1)
    context = WorkerContext(app_settings, session_factory, DatabaseArtifacts())
    with TestClient(create_app(app_settings)) as client:
        a = client.post("/v1/jobs", json=SPEC, headers=auth(alice)).json()["id"]
        queued = client.post("/v1/jobs", json=SPEC, headers=auth(alice)).json()["id"]
        bobs = client.post("/v1/jobs", json=SPEC, headers=auth(bob)).json()["id"]
        _refused(client, alice, _from(a), f"job {a} is queued")  # not finished yet
        assert run_job(a, context) == "succeeded"

        _refused(client, alice, _from(queued), f"job {queued} is queued")
        _refused(client, alice, _from(bobs), "no such job of yours")  # another owner's reads as none
        _refused(client, alice, _from("job_" + "z" * 20), "no such job of yours")
        _refused(client, alice, _from("job_123"), "is not a job id")
        _refused(client, alice, _from(a, width=24), "model.width 16")
        _refused(client, alice, {**_from(a), "dataset": {"name": "blobs", "size": 300}}, "inputs of shape [40]")
        path = {**SPEC, "model": {**SPEC["model"], "init_from": {"path": "model.safetensors"}}}
        response = client.post("/v1/jobs", json=path, headers=auth(alice))
        assert response.status_code == 422 and response.json()["error"]["param"] == "model.init_from.path"

        submitted = client.post("/v1/jobs", json=_from(a), headers=auth(alice))
        assert submitted.status_code == 201, submitted.text
        b = submitted.json()["id"]
        assert submitted.json()["spec"]["model"]["init_from"] == {"job": a, "path": None}
        deleting = client.delete(f"/v1/jobs/{a}", headers=auth(alice))
        assert deleting.status_code == 409 and b in deleting.json()["error"]["message"], deleting.text
        assert run_job(b, context) == "succeeded"
        events = client.get(f"/v1/jobs/{b}/events", headers=auth(alice)).json()["data"]
        assert any(e["message"].startswith(f"training from the model of job {a}") for e in events)

        source, tuned = _weights(client, alice, a), _weights(client, alice, b)
        spec = validate_spec(_from(a))
        data = load_dataset(spec)
        expected = train(spec, data, init_weights=source).encoder.state_dict()
        assert tuned.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.equal(tuned[name], value), name
        fresh = train(validate_spec({**_from(a), "model": SPEC["model"]}), data).encoder.state_dict()
        assert any(not torch.equal(tuned[name], fresh[name]) for name in fresh), "B must not be a fresh run"

        # the source's file goes missing behind the API's back: the job that starts from it fails saying so
        c = client.post("/v1/jobs", json=_from(a), headers=auth(alice)).json()["id"]
        with session_factory() as session:
            DatabaseArtifacts().delete(session, session.get_one(Job, a).model_artifacts["safetensors"]["artifact_id"])
            session.commit()
        assert run_job(c, context) == "failed"
        error = client.get(f"/v1/jobs/{c}", headers=auth(alice)).json()["error"]
        assert error["code"] == "invalid_spec" and a in error["message"], error
        client.post(f"/v1/jobs/{queued}/cancel", headers=auth(alice))
        assert client.delete(f"/v1/jobs/{a}", headers=auth(alice)).status_code == 204  # no unfinished job needs it now


@pytest.mark.parametrize("given", [{"job": "job_" + "a" * 20, "path": "x.safetensors"}, {}])
def test_init_from_takes_exactly_one_source(app_settings: Settings, given: dict[str, Any]) -> None:
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    body = {**SPEC, "model": {**SPEC["model"], "init_from": given}}
    with TestClient(create_app(app_settings)) as client:
        response = client.post("/v1/jobs", json=body, headers=auth(key))
    assert response.status_code == 422 and response.json()["error"]["param"] == "model.init_from", response.text
