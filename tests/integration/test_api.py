"""The HTTP API in-process (FastAPI's TestClient over ``create_app``) on real parts.

Every test runs on SQLite (a migrated temporary file) and on the real
PostgreSQL (a throwaway database, see conftest), with the real Redis at
127.0.0.1:6379 as broker in database REDIS_DB, which these tests flush. No
worker runs: jobs that must have finished are written directly through the
store functions, with the files of a tiny model trained once per module.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from embedmix.api import create_app
from embedmix.api.uploads import SCRATCH_DIR
from embedmix.core.data import load_dataset
from embedmix.core.export import export
from embedmix.core.spec import validate_spec
from embedmix.core.train import NullCallbacks, train
from embedmix.store import (
    MetricPoint,
    NewEvent,
    add_checkpoint,
    add_events,
    artifact_store_from_url,
    create_job,
    transition,
    update_progress,
    upsert_metrics,
)
from embedmix.store.models import Artifact, Dataset
from embedmix.service.queue import TRAIN_QUEUE, TRAIN_TASK
from embedmix.service.settings import Settings
from tests.conftest import flushed_redis
from tests.integration.conftest import Keys, auth

REDIS_DB = 12
BROKER_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
CLOSED_PORT_BROKER = "redis://127.0.0.1:1/0"
CLOSED_PORT_DATABASE = "postgresql+psycopg2://postgres@127.0.0.1:1/nothing"

DESIGN_EXAMPLE = json.loads((Path(__file__).resolve().parents[2] / "examples/mnist1d-ms-metrix.json").read_text())
SMALL_SPEC: dict[str, Any] = {
    "name": "small",
    "dataset": {"name": "mnist1d", "size": 200},
    "train": {"epochs": 1},
}
FORMATS = ("safetensors", "onnx", "torchscript")


# -- a trained model, once per module -----------------------------------------------------


@dataclass
class Trained:
    spec: dict[str, Any]
    out: Path
    card: dict[str, Any]
    checkpoint: bytes
    checkpoint_step: int
    x_test: np.ndarray


class _KeepCheckpoint(NullCallbacks):
    def __init__(self) -> None:
        self.state, self.step = b"", 0

    def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None:
        self.state, self.step = state, step


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    spec = validate_spec(
        {
            "name": "tiny",
            "dataset": {"name": "mnist1d", "size": 200},
            "model": {"encoder": "conv1d", "embedding_dim": 16, "width": 16},
            "objective": {"loss": "supcon"},
            "train": {"epochs": 1, "batch_size": 64, "device": "cpu"},
            "export": {"formats": list(FORMATS)},
        }
    )
    data = load_dataset(spec)
    callbacks = _KeepCheckpoint()
    result = train(spec, data, callbacks)
    out = tmp_path_factory.mktemp("tiny")
    card = export(result, data, out, training={"steps": result.step})
    return Trained(
        spec=spec.model_dump(mode="json"),
        out=out,
        card=card,
        checkpoint=callbacks.state,
        checkpoint_step=callbacks.step,
        x_test=data.x_test[:7].numpy(),
    )


# -- an application per test (client, db, keys: tests/integration/conftest.py) --------------


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    """The real Redis, database REDIS_DB, empty before and after the test."""
    with flushed_redis(BROKER_URL) as client:
        yield client


def make_settings(database_url: str, scratch: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": BROKER_URL,
        "artifacts": "db",
        "work_dir": str(scratch),
        "admin_key": "em_" + "A" * 40,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def settings(database_url: str, scratch: Path, broker: redis.Redis) -> Settings:
    return make_settings(database_url, scratch)


def submit(
    client: TestClient,
    key: str,
    spec: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    response = client.post(
        "/v1/jobs", json=spec or SMALL_SPEC, headers={**auth(key), **(headers or {})}
    )
    assert response.status_code == 201, response.text
    return response.json()


def queued_messages(broker: redis.Redis, queue: str = TRAIN_QUEUE) -> list[dict[str, Any]]:
    """Celery messages waiting on a train queue (the one-device jobs' by default), decoded: headers plus (args, kwargs)."""
    out = []
    for raw in broker.lrange(queue, 0, -1):
        message = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        out.append({"task": message["headers"]["task"], "args": args, "kwargs": kwargs})
    return out


def assert_error(
    response: Any, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"code", "message", "param"}
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


# -- a finished job, written as a worker would ---------------------------------------------


@dataclass
class Finished:
    job_id: str
    checkpoint_id: str
    checkpoint_sha256: str


def seed_finished_job(
    db: sessionmaker[Session],
    settings: Settings,
    owner_id: int,
    trained: Trained,
    formats: tuple[str, ...] = FORMATS,
) -> Finished:
    artifacts = artifact_store_from_url(settings.artifacts)
    with db() as session:
        job, _ = create_job(session, owner_id, trained.spec, name="tiny")
        assert transition(session, job.id, ["queued"], "running", attempts=1)
        update_progress(session, job.id, step=3, epoch=1, total_steps=4)
        add_events(
            session,
            job.id,
            [
                NewEvent("status", "running", data={"status": "running"}),
                NewEvent("log", "epoch 1 done"),
                NewEvent("warning", "loss is flat", level="warning"),
            ],
        )
        upsert_metrics(
            session,
            job.id,
            [MetricPoint("train/loss", step, 2.0 / (step + 1), epoch=0) for step in range(4)]
            + [MetricPoint("eval/precision_at_1", 3, 0.5, epoch=1)],
        )
        checkpoint_artifact = artifacts.put(session, [trained.checkpoint])
        checkpoint = add_checkpoint(
            session, job.id, step=trained.checkpoint_step, epoch=1, artifact=checkpoint_artifact
        )
        files = {}
        for fmt in formats:
            entry = trained.card["files"][fmt]
            artifact = artifacts.put(session, [(trained.out / entry["file"]).read_bytes()])
            files[fmt] = {
                "artifact_id": artifact.id,
                "bytes": artifact.bytes,
                "sha256": artifact.sha256,
                "file": entry["file"],
            }
        assert transition(
            session,
            job.id,
            ["running"],
            "succeeded",
            step=4,
            model_artifacts=files,
            card=trained.card,
            metrics={"precision_at_1": 0.5},
        )
        session.commit()
        return Finished(job.id, checkpoint.id, checkpoint.sha256)


@pytest.fixture
def finished(
    db: sessionmaker[Session], settings: Settings, keys: Keys, trained: Trained
) -> Finished:
    return seed_finished_job(db, settings, keys.alice_id, trained)


# -- submitting ----------------------------------------------------------------------------


def test_design_example_is_accepted_and_only_its_id_is_enqueued(
    client: TestClient, keys: Keys, broker: redis.Redis
) -> None:
    job = submit(client, keys.alice, DESIGN_EXAMPLE)
    assert job["id"].startswith("job_") and job["status"] == "queued"
    assert job["name"] == "mnist1d-ms-metrix"
    assert job["spec"]["mixup"]["method"] == "metrix" and job["spec"]["train"]["epochs"] == 10
    assert job["progress"] == {"step": 0, "total_steps": None, "epoch": 0, "fraction": 0.0}
    assert job["attempts"] == 0 and job["error"] is None and job["metrics"] == {}
    assert queued_messages(broker) == [{"task": TRAIN_TASK, "args": [job["id"]], "kwargs": {}}]
    again = client.get(f"/v1/jobs/{job['id']}", headers=auth(keys.alice))
    assert again.status_code == 200 and again.json() == job


def test_a_two_device_job_is_sent_to_the_two_device_queue_only(
    client: TestClient, keys: Keys, broker: redis.Redis
) -> None:
    job = submit(client, keys.alice, {**DESIGN_EXAMPLE, "resources": {"devices": 2}})
    assert job["spec"]["resources"]["devices"] == 2
    assert queued_messages(broker, "embedmix.devices-2") == [{"task": TRAIN_TASK, "args": [job["id"]], "kwargs": {}}]
    assert queued_messages(broker) == []  # a one-device worker never sees it


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({**SMALL_SPEC, "train": {"lr": -1}}, "train.lr"),
        ({**SMALL_SPEC, "trian": {}}, "trian"),
        ({**SMALL_SPEC, "dataset": {"name": "imagenet"}}, "dataset.name"),
        ({**SMALL_SPEC, "objective": {"loss": "nope"}}, "objective.loss"),
        (
            {**SMALL_SPEC, "objective": {"loss": "supcon", "params": {"temperature": "hot"}}},
            "objective.params.temperature",
        ),
        ({"name": "x"}, "dataset"),
        ({**SMALL_SPEC, "dataset": {"path": "/etc/passwd"}}, "dataset.path"),
        ({**SMALL_SPEC, "dataset": {"id": "ds_doesnotexist"}}, "dataset.id"),
    ],
)
def test_bad_specs_are_422_naming_the_field(
    client: TestClient, keys: Keys, broker: redis.Redis, spec: dict[str, Any], param: str
) -> None:
    error = assert_error(
        client.post("/v1/jobs", json=spec, headers=auth(keys.alice)), 422, "invalid_spec", param
    )
    assert param in error["message"]
    assert error["details"][0]["field"] == param
    assert queued_messages(broker) == []


def test_a_body_that_is_not_a_spec_object_is_422(client: TestClient, keys: Keys) -> None:
    assert_error(
        client.post("/v1/jobs", json=[1, 2], headers=auth(keys.alice)), 422, "invalid_request"
    )
    bad_json = client.post(
        "/v1/jobs",
        content=b"{nope",
        headers={**auth(keys.alice), "Content-Type": "application/json"},
    )
    assert_error(bad_json, 422, "invalid_request")


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(
    client: TestClient, keys: Keys, broker: redis.Redis
) -> None:
    headers = {**auth(keys.alice), "Idempotency-Key": "retry-1"}
    first = client.post("/v1/jobs", json=SMALL_SPEC, headers=headers)
    reordered = dict(reversed(list(SMALL_SPEC.items())))
    second = client.post("/v1/jobs", json=reordered, headers=headers)
    assert first.status_code == second.status_code == 201
    assert (
        second.headers["Idempotent-Replayed"] == "true"
        and "Idempotent-Replayed" not in first.headers
    )
    assert second.json()["id"] == first.json()["id"]
    assert len(queued_messages(broker)) == 1
    other = client.post("/v1/jobs", json={**SMALL_SPEC, "name": "other"}, headers=headers)
    assert_error(other, 409, "idempotency_conflict", "idempotency-key")
    # keys are per owner: bob's same key is a new job
    bobs = client.post(
        "/v1/jobs", json=SMALL_SPEC, headers={**auth(keys.bob), "Idempotency-Key": "retry-1"}
    )
    assert bobs.status_code == 201 and bobs.json()["id"] != first.json()["id"]
    listed = client.get("/v1/jobs", headers=auth(keys.alice)).json()["data"]
    assert [j["id"] for j in listed] == [first.json()["id"]]


def test_too_many_active_jobs_is_429_with_retry_after(
    database_url: str, scratch: Path, broker: redis.Redis, keys: Keys
) -> None:
    settings = make_settings(database_url, scratch, max_active_jobs_per_owner=2)
    with TestClient(create_app(settings)) as client:
        first = submit(client, keys.alice, headers={"Idempotency-Key": "a"})
        submit(client, keys.alice)
        response = client.post("/v1/jobs", json=SMALL_SPEC, headers=auth(keys.alice))
        assert_error(response, 429, "too_many_active_jobs")
        assert int(response.headers["Retry-After"]) > 0
        replay = client.post(
            "/v1/jobs", json=SMALL_SPEC, headers={**auth(keys.alice), "Idempotency-Key": "a"}
        )
        assert replay.status_code == 201 and replay.json()["id"] == first["id"]
        client.post(f"/v1/jobs/{first['id']}/cancel", headers=auth(keys.alice))
        submit(client, keys.alice)
        assert client.get("/v1/jobs", headers=auth(keys.alice)).json()["data"].__len__() == 3


def test_submissions_over_the_rate_limit_are_429_until_the_window_turns(
    database_url: str, scratch: Path, broker: redis.Redis, keys: Keys
) -> None:
    settings = make_settings(database_url, scratch, submit_rate_per_minute=2)
    with TestClient(create_app(settings)) as client:
        frozen = time.time()  # one window: a minute's turn mid-test would reset the count
        client.app.state.runtime.submit_rate.clock = lambda: frozen
        submit(client, keys.alice)
        submit(client, keys.alice)
        response = client.post("/v1/jobs", json=SMALL_SPEC, headers=auth(keys.alice))
        assert_error(response, 429, "rate_limited")
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert len(client.get("/v1/jobs", headers=auth(keys.alice)).json()["data"]) == 2
        submit(client, keys.bob)  # the limit is per owner
        broker.flushdb()  # the window's counter gone, as when the minute turns
        submit(client, keys.alice)


def test_specs_over_the_service_limits_are_422_naming_each_field(
    database_url: str, scratch: Path, broker: redis.Redis, keys: Keys
) -> None:
    settings = make_settings(database_url, scratch, max_epochs=5, max_batch_size=64, max_model_width=32)
    spec = {
        **SMALL_SPEC,
        "train": {**SMALL_SPEC.get("train", {}), "epochs": 6, "batch_size": 128},
        "model": {**SMALL_SPEC.get("model", {}), "width": 64},
    }
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/jobs", json=spec, headers=auth(keys.alice))
        assert_error(response, 422, "invalid_spec")
        fields = {e["field"] for e in response.json()["error"]["details"]}
        assert {"train.epochs", "train.batch_size", "model.width"} <= fields
        assert client.get("/v1/jobs", headers=auth(keys.alice)).json()["data"] == []


def test_a_broker_that_is_down_leaves_the_job_queued_and_still_answers_201(
    database_url: str, scratch: Path, keys: Keys
) -> None:
    settings = make_settings(database_url, scratch, redis_url=CLOSED_PORT_BROKER)
    with TestClient(create_app(settings)) as client:
        job = submit(client, keys.alice)
        assert (
            client.get(f"/v1/jobs/{job['id']}", headers=auth(keys.alice)).json()["status"]
            == "queued"
        )


# -- reading jobs --------------------------------------------------------------------------


def test_list_pages_newest_first_and_filters_by_status(client: TestClient, keys: Keys) -> None:
    ids = [submit(client, keys.alice, {**SMALL_SPEC, "name": f"j{i}"})["id"] for i in range(5)]
    for job_id in ids[:2]:
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(keys.alice)).status_code == 200
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params, headers=auth(keys.alice)).json()
        assert set(page) == {"data", "has_more", "next_cursor"} and len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == ids[::-1]
    cancelled = client.get(
        "/v1/jobs", params={"status": "cancelled"}, headers=auth(keys.alice)
    ).json()
    assert sorted(j["id"] for j in cancelled["data"]) == sorted(ids[:2])
    assert all(j["status"] == "cancelled" for j in cancelled["data"])
    assert_error(
        client.get("/v1/jobs", params={"status": "done"}, headers=auth(keys.alice)),
        422,
        param="status",
    )
    assert_error(
        client.get("/v1/jobs", params={"limit": 101}, headers=auth(keys.alice)), 422, param="limit"
    )
    assert_error(
        client.get("/v1/jobs", params={"limit": 0}, headers=auth(keys.alice)), 422, param="limit"
    )
    assert_error(
        client.get("/v1/jobs", params={"cursor": "garbage"}, headers=auth(keys.alice)),
        422,
        "invalid_cursor",
        "cursor",
    )
    assert client.get("/v1/jobs", headers=auth(keys.bob)).json() == {
        "data": [],
        "has_more": False,
        "next_cursor": None,
    }


def test_cancel_follows_the_state_machine(
    client: TestClient, keys: Keys, db: sessionmaker[Session], finished: Finished
) -> None:
    queued = submit(client, keys.alice)["id"]
    response = client.post(f"/v1/jobs/{queued}/cancel", headers=auth(keys.alice))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    again = client.post(f"/v1/jobs/{queued}/cancel", headers=auth(keys.alice))
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    running = submit(client, keys.alice)["id"]
    with db() as session:
        assert transition(session, running, ["queued"], "running", attempts=1)
        session.commit()
    response = client.post(f"/v1/jobs/{running}/cancel", headers=auth(keys.alice))
    assert response.status_code == 200 and response.json()["status"] == "cancelling"

    error = assert_error(
        client.post(f"/v1/jobs/{finished.job_id}/cancel", headers=auth(keys.alice)),
        409,
        "invalid_state",
    )
    assert "succeeded" in error["message"]
    assert (
        client.get(f"/v1/jobs/{finished.job_id}", headers=auth(keys.alice)).json()["status"]
        == "succeeded"
    )


def test_finished_job_shows_progress_metrics_events_and_series(
    client: TestClient, keys: Keys, finished: Finished
) -> None:
    job = client.get(f"/v1/jobs/{finished.job_id}", headers=auth(keys.alice)).json()
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["progress"] == {"step": 4, "total_steps": 4, "epoch": 1, "fraction": 1.0}
    assert job["metrics"] == {"precision_at_1": 0.5}
    assert job["started_at"] and job["finished_at"] and job["created_at"].endswith("Z")

    events = client.get(f"/v1/jobs/{finished.job_id}/events", headers=auth(keys.alice)).json()
    assert [e["type"] for e in events["data"]] == ["status", "log", "warning"] and not events[
        "has_more"
    ]
    assert set(events["data"][0]) == {"id", "time", "level", "type", "message", "data"}
    first = client.get(
        f"/v1/jobs/{finished.job_id}/events", params={"limit": 1}, headers=auth(keys.alice)
    ).json()
    assert first["has_more"] and len(first["data"]) == 1
    rest = client.get(
        f"/v1/jobs/{finished.job_id}/events",
        params={"cursor": first["next_cursor"]},
        headers=auth(keys.alice),
    ).json()
    assert [e["type"] for e in rest["data"]] == ["log", "warning"]
    after = client.get(
        f"/v1/jobs/{finished.job_id}/events",
        params={"after": events["data"][1]["id"]},
        headers=auth(keys.alice),
    ).json()
    assert [e["type"] for e in after["data"]] == ["warning"]

    series = client.get(f"/v1/jobs/{finished.job_id}/metrics", headers=auth(keys.alice)).json()
    assert len(series["data"]) == 5 and not series["has_more"]
    assert set(series["data"][0]) == {"name", "step", "epoch", "value", "time"}
    loss = client.get(
        f"/v1/jobs/{finished.job_id}/metrics",
        params={"name": "train/loss", "since_step": 1},
        headers=auth(keys.alice),
    ).json()["data"]
    assert [(p["step"], p["value"]) for p in loss] == [(2, pytest.approx(2 / 3)), (3, 0.5)]
    paged = client.get(
        f"/v1/jobs/{finished.job_id}/metrics", params={"limit": 2}, headers=auth(keys.alice)
    ).json()
    assert paged["has_more"] and paged["next_cursor"] == "1"


# -- the live stream -----------------------------------------------------------------------


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Messages as {event, data, id}; comments and bare retry hints are kept as their raw lines."""
    messages = []
    for block in text.strip().split("\n\n"):
        message: dict[str, Any] = {"lines": block.splitlines()}
        for line in block.splitlines():
            field, _, value = line.partition(": ")
            if field in ("event", "id"):
                message[field] = value
            elif field == "data":
                message["data"] = json.loads(value)
        messages.append(message)
    return messages


def sse_messages(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The messages of a stream one by one as they arrive, each as :func:`parse_sse` reads it."""
    block: list[str] = []
    for line in lines:
        if line:
            block.append(line)
        elif block:
            yield parse_sse("\n".join(block))[0]
            block = []
    if block:
        yield parse_sse("\n".join(block))[0]


def test_stream_of_a_finished_job_delivers_everything_then_ends_with_its_status(
    client: TestClient, keys: Keys, finished: Finished
) -> None:
    response = client.get(f"/v1/jobs/{finished.job_id}/stream", headers=auth(keys.alice))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    messages = parse_sse(response.text)
    assert "retry: 2000" in messages[0]["lines"]
    kinds = [m.get("event") for m in messages[1:]]
    assert kinds[-1] == "status" and kinds.count("status") == 1
    assert (
        messages[-1]["data"]["status"] == "succeeded"
        and messages[-1]["data"]["id"] == finished.job_id
    )
    assert {"progress", "metrics", "event"} <= set(kinds)
    points = [p for m in messages if m.get("event") == "metrics" for p in m["data"]["points"]]
    assert len(points) == 5
    events = [m for m in messages if m.get("event") == "event"]
    assert [e["data"]["type"] for e in events] == ["status", "log", "warning"]

    resumed = client.get(
        f"/v1/jobs/{finished.job_id}/stream",
        headers={**auth(keys.alice), "Last-Event-ID": events[1]["id"]},
    )
    again = parse_sse(resumed.text)
    assert [m["data"]["type"] for m in again if m.get("event") == "event"] == ["warning"]
    assert not any(m.get("event") == "metrics" for m in again)
    assert_error(
        client.get(
            f"/v1/jobs/{finished.job_id}/stream", headers={**auth(keys.alice), "Last-Event-ID": "x"}
        ),
        422,
        "invalid_cursor",
    )


@pytest.mark.timeout(60)
def test_stream_follows_a_live_job_to_its_end(
    client: TestClient, keys: Keys, db: sessionmaker[Session]
) -> None:
    """The job moves on only once the stream has shown where it is (queued, running, halfway),
    so the stream sees every stage whenever it polls: no stage can be written and overtaken
    between two polls."""
    job_id = submit(client, keys.alice)["id"]
    messages = []
    with client.stream("GET", f"/v1/jobs/{job_id}/stream", headers=auth(keys.alice)) as response, db() as session:
        for message in sse_messages(response.iter_lines()):
            messages.append(message)
            kind, data = message.get("event"), message.get("data")
            if kind == "status" and data["status"] == "queued":
                assert transition(session, job_id, ["queued"], "running", attempts=1)
                session.commit()
            elif kind == "status" and data["status"] == "running":
                update_progress(session, job_id, step=2, epoch=0, total_steps=4)
                add_events(session, job_id, [NewEvent("log", "halfway")])
                upsert_metrics(session, job_id, [MetricPoint("train/loss", 2, 1.0, epoch=0)])
                session.commit()
            elif kind == "event" and data["message"] == "halfway":
                error = {"code": "boom", "message": "diverged"}
                assert transition(session, job_id, ["running"], "failed", error=error)
                session.commit()
    statuses = [m["data"]["status"] for m in messages if m.get("event") == "status"]
    assert statuses == ["queued", "running", "failed"]
    assert messages[-1]["data"]["error"] == {"code": "boom", "message": "diverged"}
    assert {"step": 2, "total_steps": 4, "epoch": 0, "fraction": 0.5} in [
        m["data"] for m in messages if m.get("event") == "progress"
    ]
    assert any(m.get("event") == "event" and m["data"]["message"] == "halfway" for m in messages)


# -- downloads and embedding ---------------------------------------------------------------


def test_checkpoint_download_is_the_stored_bytes_with_their_sha256(
    client: TestClient, keys: Keys, finished: Finished, trained: Trained
) -> None:
    listed = client.get(f"/v1/jobs/{finished.job_id}/checkpoints", headers=auth(keys.alice)).json()
    assert listed["has_more"] is False and len(listed["data"]) == 1
    checkpoint = listed["data"][0]
    assert set(checkpoint) == {"id", "step", "epoch", "bytes", "sha256", "created_at"}
    url = f"/v1/jobs/{finished.job_id}/checkpoints/{checkpoint['id']}/content"
    response = client.get(url, headers=auth(keys.alice))
    assert response.status_code == 200
    assert response.content == trained.checkpoint
    assert (
        hashlib.sha256(response.content).hexdigest()
        == checkpoint["sha256"]
        == response.headers["ETag"].strip('"')
    )
    assert int(response.headers["Content-Length"]) == checkpoint["bytes"] == len(trained.checkpoint)
    cached = client.get(
        url, headers={**auth(keys.alice), "If-None-Match": response.headers["ETag"]}
    )
    assert cached.status_code == 304 and cached.content == b""
    assert_error(
        client.get(
            f"/v1/jobs/{finished.job_id}/checkpoints/ckpt_nope/content", headers=auth(keys.alice)
        ),
        404,
    )


@pytest.mark.parametrize("store", ["db", "fs"])
def test_large_downloads_stream_from_either_artifact_store(
    database_url: str,
    scratch: Path,
    tmp_path: Path,
    broker: redis.Redis,
    keys: Keys,
    db: sessionmaker[Session],
    store: str,
) -> None:
    """Several 1 MiB chunks, read while the response streams (the request's session stays open)."""
    settings = make_settings(
        database_url, scratch, artifacts="db" if store == "db" else str(tmp_path / "blobs")
    )
    payload = os.urandom(2_500_000)
    with db() as session:
        job, _ = create_job(session, keys.alice_id, SMALL_SPEC, name="big")
        artifact = artifact_store_from_url(settings.artifacts).put(session, [payload])
        checkpoint = add_checkpoint(session, job.id, step=1, epoch=0, artifact=artifact)
        session.commit()
    with TestClient(create_app(settings)) as client:
        url = f"/v1/jobs/{job.id}/checkpoints/{checkpoint.id}/content"
        with client.stream("GET", url, headers=auth(keys.alice)) as response:
            assert response.status_code == 200
            received = b"".join(response.iter_bytes())
    assert received == payload
    assert response.headers["ETag"] == f'"{hashlib.sha256(payload).hexdigest()}"'


@pytest.mark.parametrize("fmt", FORMATS)
def test_model_download_in_each_format_has_its_sha256_as_etag(
    client: TestClient, keys: Keys, finished: Finished, trained: Trained, fmt: str
) -> None:
    response = client.get(
        f"/v1/jobs/{finished.job_id}/model", params={"format": fmt}, headers=auth(keys.alice)
    )
    assert response.status_code == 200
    sha256 = hashlib.sha256(response.content).hexdigest()
    assert response.headers["ETag"] == f'"{sha256}"'
    assert sha256 == trained.card["files"][fmt]["sha256"]
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert trained.card["files"][fmt]["file"] in response.headers["Content-Disposition"]


def test_model_of_an_unfinished_job_is_409_and_an_unexported_format_404(
    client: TestClient, keys: Keys, db: sessionmaker[Session], settings: Settings, trained: Trained
) -> None:
    queued = submit(client, keys.alice)["id"]
    for path in ("model", "model/card"):
        assert_error(
            client.get(f"/v1/jobs/{queued}/{path}", headers=auth(keys.alice)), 409, "invalid_state"
        )
    embed = client.post(
        f"/v1/jobs/{queued}/embed", json={"inputs": [[0.0] * 40]}, headers=auth(keys.alice)
    )
    assert_error(embed, 409, "invalid_state")
    only_onnx = seed_finished_job(db, settings, keys.alice_id, trained, formats=("onnx",))
    response = client.get(
        f"/v1/jobs/{only_onnx.job_id}/model",
        params={"format": "torchscript"},
        headers=auth(keys.alice),
    )
    assert "onnx" in assert_error(response, 404, "not_found", "format")["message"]
    assert_error(
        client.get(
            f"/v1/jobs/{only_onnx.job_id}/model",
            params={"format": "pickle"},
            headers=auth(keys.alice),
        ),
        422,
        param="format",
    )


def test_model_card_is_the_exported_card(
    client: TestClient, keys: Keys, finished: Finished, trained: Trained
) -> None:
    card = client.get(f"/v1/jobs/{finished.job_id}/model/card", headers=auth(keys.alice)).json()
    assert card == json.loads(json.dumps(trained.card))
    assert card["input"]["shape"] == [40] and card["embedding_dim"] == 16


def test_embed_equals_onnxruntime_on_the_downloaded_model(
    client: TestClient, keys: Keys, finished: Finished, trained: Trained
) -> None:
    onnx_bytes = client.get(
        f"/v1/jobs/{finished.job_id}/model", params={"format": "onnx"}, headers=auth(keys.alice)
    ).content
    session = ort.InferenceSession(onnx_bytes)
    expected = session.run(None, {"input": trained.x_test.astype(np.float32)})[0]
    for _ in range(2):  # the second request is served by the cached encoder
        response = client.post(
            f"/v1/jobs/{finished.job_id}/embed",
            json={"inputs": trained.x_test.tolist()},
            headers=auth(keys.alice),
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["embedding_dim"] == 16 and body["model"] == finished.job_id
        np.testing.assert_allclose(np.array(body["embeddings"]), expected, atol=1e-4)


def test_embed_in_base64_gives_the_float_route_s_vectors_bit_for_bit(
    client: TestClient, keys: Keys, finished: Finished, trained: Trained
) -> None:
    """The batch's float32 bytes in, the embedding matrix's float32 bytes out: the same
    numbers as the JSON lists, which carry each float32 exactly (as a float64)."""
    x = trained.x_test.astype(np.float32)
    url = f"/v1/jobs/{finished.job_id}/embed"
    as_lists = client.post(url, json={"inputs": x.tolist()}, headers=auth(keys.alice)).json()
    packed = base64.b64encode(x.astype("<f4").tobytes()).decode()
    response = client.post(
        url, json={"inputs_base64": packed, "encoding_format": "base64"}, headers=auth(keys.alice)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["embedding_dim"] == 16 and body["model"] == finished.job_id
    matrix = np.frombuffer(base64.b64decode(body["embeddings"]), dtype="<f4").reshape(len(x), 16)
    np.testing.assert_array_equal(matrix, np.array(as_lists["embeddings"], dtype=np.float32))
    mixed = client.post(url, json={"inputs_base64": packed}, headers=auth(keys.alice)).json()
    assert mixed["embeddings"] == as_lists["embeddings"]  # base64 in, float lists out
    lists_in = client.post(
        url, json={"inputs": x.tolist(), "encoding_format": "base64"}, headers=auth(keys.alice)
    ).json()
    assert lists_in["embeddings"] == body["embeddings"]


def _packed(values: list[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"inputs": [[0.0] * 39]}, "inputs", "shape [40]"),
        ({"inputs": [0.0] * 40}, "inputs", "single sample"),
        ({"inputs": [[0.0] * 40, [0.0] * 39]}, "inputs", "ragged"),
        ({"inputs": [["a"] * 40]}, "inputs", "ragged or non-numeric"),
        ({"inputs": []}, "inputs", "at least one"),
        ({"inputs": [[0.0] * 40] * 6}, "inputs", "at most 5"),
        ({"inputs_base64": "not base64!"}, "inputs_base64", "not valid base64"),
        ({"inputs_base64": "AAAA\u00e9AAA"}, "inputs_base64", "not valid base64"),
        ({"inputs_base64": _packed([0.0] * 39)}, "inputs_base64", "156 bytes, not a whole number of samples of shape [40]"),
        ({"inputs_base64": ""}, "inputs_base64", "0 bytes"),
        ({"inputs_base64": _packed([0.0] * 40 * 6)}, "inputs_base64", "at most 5"),
        ({"inputs_base64": _packed([0.0] * 40 + [0.0] * 39 + [float("nan")])}, "inputs_base64.1", "NaN"),
        ({"inputs": [[0.0] * 40], "inputs_base64": _packed([0.0] * 40)}, "inputs", "not both"),
        ({}, "inputs", "give inputs"),
    ],
)
def test_embed_refuses_inputs_that_do_not_fit_the_model(
    database_url: str,
    scratch: Path,
    broker: redis.Redis,
    keys: Keys,
    db: sessionmaker[Session],
    trained: Trained,
    body: dict[str, Any],
    param: str,
    fragment: str,
) -> None:
    """JSON inputs and their float32 bytes alike: a 422 naming the field (and the input) at fault."""
    settings = make_settings(database_url, scratch, max_embed_inputs=5)
    job = seed_finished_job(db, settings, keys.alice_id, trained, formats=("safetensors",))
    with TestClient(create_app(settings)) as client:
        response = client.post(f"/v1/jobs/{job.job_id}/embed", json=body, headers=auth(keys.alice))
    assert fragment in assert_error(response, 422, "invalid_inputs", param)["message"]


def test_embed_runs_either_export_alone(
    client: TestClient, keys: Keys, db: sessionmaker[Session], settings: Settings, trained: Trained
) -> None:
    """Each file alone serves the same vectors; a job with neither gets a 404 naming what to export."""
    x = trained.x_test.astype(np.float32)
    served = {}
    for formats in (("onnx",), ("safetensors",)):
        job = seed_finished_job(db, settings, keys.alice_id, trained, formats=formats)
        response = client.post(f"/v1/jobs/{job.job_id}/embed", json={"inputs": x.tolist()}, headers=auth(keys.alice))
        assert response.status_code == 200, response.text
        served[formats[0]] = np.array(response.json()["embeddings"])
    expected = ort.InferenceSession(str(trained.out / "model.onnx")).run(None, {"input": x})[0]
    np.testing.assert_array_equal(served["onnx"], expected)  # the very graph a user downloads
    np.testing.assert_allclose(served["safetensors"], expected, atol=1e-5)
    job = seed_finished_job(db, settings, keys.alice_id, trained, formats=("torchscript",))
    response = client.post(
        f"/v1/jobs/{job.job_id}/embed", json={"inputs": [[0.0] * 40]}, headers=auth(keys.alice)
    )
    assert "safetensors" in assert_error(response, 404, "not_found", "format")["message"]


# -- datasets ------------------------------------------------------------------------------


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def classification_npz(rows: int = 60) -> bytes:
    rng = np.random.default_rng(0)
    return npz_bytes(x=rng.normal(size=(rows, 8)).astype(np.float32), y=np.arange(rows) % 3)


def upload(client: TestClient, key: str, filename: str, content: bytes, **fields: str) -> Any:
    return client.post(
        "/v1/datasets", files={"file": (filename, content)}, data=fields, headers=auth(key)
    )


def test_npz_and_csv_uploads_are_validated_listed_used_and_deleted(
    client: TestClient, keys: Keys, db: sessionmaker[Session], broker: redis.Redis
) -> None:
    content = classification_npz()
    response = upload(client, keys.alice, "points.npz", content)
    assert response.status_code == 201, response.text
    npz = response.json()
    assert (
        npz["id"].startswith("ds_") and npz["filename"] == "points.npz" and npz["format"] == "npz"
    )
    assert (
        npz["sha256"] == hashlib.sha256(content).hexdigest()
        and npz["bytes"] == len(content)
        and npz["rows"] == 60
    )
    assert npz["info"] == {
        "task": "classification",
        "input_shape": [8],
        "num_classes": 3,
        "class_names": None,
        "class_counts": [20, 20, 20],
        "test_class_counts": None,
        "has_test": False,
        "train_rows": 60,
        "test_rows": 0,
        "label_column": None,
        "modalities": 1,
    }

    table = "f1,f2,kind,split\n" + "".join(
        f"{i * 0.1},{i % 5},{'ab'[i % 2]},{'test' if i % 4 == 0 else 'train'}\n" for i in range(40)
    )
    response = upload(client, keys.alice, "table.csv", table.encode(), label_column="kind")
    assert response.status_code == 201, response.text
    csv = response.json()
    assert csv["format"] == "csv" and csv["rows"] == 40
    assert csv["info"]["class_names"] == ["a", "b"] and csv["info"]["has_test"] is True
    assert csv["info"]["label_column"] == "kind" and csv["info"]["test_rows"] == 10

    listed = client.get("/v1/datasets", headers=auth(keys.alice)).json()
    assert [d["id"] for d in listed["data"]] == [csv["id"], npz["id"]]
    assert client.get(f"/v1/datasets/{npz['id']}", headers=auth(keys.alice)).json() == npz
    page = client.get("/v1/datasets", params={"limit": 1}, headers=auth(keys.alice)).json()
    assert page["has_more"] and [d["id"] for d in page["data"]] == [csv["id"]]

    spec = {
        "name": "mine",
        "dataset": {"id": csv["id"], "split": {"kind": "given"}},
        "model": {"encoder": "mlp"},
    }
    job = submit(client, keys.alice, spec)
    assert job["spec"]["dataset"]["label_column"] == "kind"  # the worker reads the file with it
    assert_error(
        client.delete(f"/v1/datasets/{csv['id']}", headers=auth(keys.alice)), 409, "dataset_in_use"
    )
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(keys.alice))

    for dataset in (npz, csv):
        deleted = client.delete(f"/v1/datasets/{dataset['id']}", headers=auth(keys.alice))
        assert deleted.status_code == 204 and deleted.content == b""
        assert_error(
            client.get(f"/v1/datasets/{dataset['id']}", headers=auth(keys.alice)), 404, "not_found"
        )
    with db() as session:
        assert session.scalars(select(func.count()).select_from(Artifact)).one() == 0


def regression_npz() -> bytes:
    rng = np.random.default_rng(1)
    return npz_bytes(x=rng.normal(size=(30, 4)), y=rng.normal(size=30))


BARLOW = {"objective": {"loss": "barlow_twins", "views": 2}}


@pytest.mark.parametrize(
    ("data", "split", "spec", "caller", "param"),
    [
        pytest.param("regression", {}, {"objective": {"loss": "supcon"}}, "alice", "objective.loss",
                     id="metric-loss-without-classes"),
        pytest.param("regression", {"split": {"kind": "given"}}, BARLOW, "alice", "dataset.split.kind",
                     id="given-split-without-one"),
        pytest.param("regression", {}, {**BARLOW, "model": {"encoder": "conv2d"}}, "alice", "model.encoder",
                     id="conv2d-on-flat-rows"),
        pytest.param("classes", {"split": {"kind": "classes", "holdout_classes": [7]}}, {}, "alice",
                     "dataset.split.holdout_classes", id="holdout-of-a-missing-class"),
        # someone else's dataset does not exist for the caller
        pytest.param("classes", {}, {}, "bob", "dataset.id", id="another-owners-dataset"),
    ],
)
def test_specs_are_checked_against_the_uploaded_data(
    client: TestClient, keys: Keys, data: str, split: dict[str, Any], spec: dict[str, Any], caller: str, param: str
) -> None:
    """Alice uploads a regression set or a classification set; a spec that does not fit it is a 422 naming the field."""
    if data == "regression":
        dataset = upload(client, keys.alice, "reg.npz", regression_npz()).json()
        assert dataset["info"]["task"] == "regression"
    else:
        dataset = upload(client, keys.alice, "c.npz", classification_npz()).json()
    body = {"name": "checked", "model": {"encoder": "mlp"}, **spec, "dataset": {"id": dataset["id"], **split}}
    assert_error(
        client.post("/v1/jobs", json=body, headers=auth(getattr(keys, caller))), 422, "invalid_spec", param
    )


def _stored_nothing(db: sessionmaker[Session], scratch: Path) -> None:
    with db() as session:
        assert session.scalars(select(func.count()).select_from(Dataset)).one() == 0
        assert session.scalars(select(func.count()).select_from(Artifact)).one() == 0
    assert [p for p in scratch.rglob("*") if p != scratch / SCRATCH_DIR] == []


def multipart(
    filename: str, content: bytes, boundary: str = "embedmixboundary"
) -> tuple[bytes, str]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_oversized_uploads_are_413_and_leave_nothing_behind(
    database_url: str, scratch: Path, broker: redis.Redis, keys: Keys, db: sessionmaker[Session]
) -> None:
    settings = make_settings(database_url, scratch, max_upload_bytes=100_000)
    # over the file limit but within the body limit (file + multipart allowance): the parser refuses it
    medium, medium_type = multipart(
        "medium.npz", npz_bytes(x=np.zeros((700, 40), dtype=np.float32))
    )
    # over the body limit as well: refused before the parser sees it
    big, big_type = multipart("big.npz", npz_bytes(x=np.zeros((2000, 40), dtype=np.float32)))
    assert 100_000 < len(medium) < 150_000 < len(big)

    def chunked(
        body: bytes,
    ) -> Iterator[bytes]:  # no Content-Length: limits must hold while streaming
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]

    with TestClient(create_app(settings)) as client:
        for body, content_type in ((medium, medium_type), (big, big_type)):
            headers = {**auth(keys.alice), "Content-Type": content_type}
            assert_error(
                client.post("/v1/datasets", content=body, headers=headers), 413, "too_large"
            )
            streamed = client.post("/v1/datasets", content=chunked(body), headers=headers)
            error = assert_error(streamed, 413, "too_large")
            assert ("the file" in error["message"]) == (body is medium)
        assert client.get("/v1/datasets", headers=auth(keys.alice)).json()["data"] == []
    _stored_nothing(db, scratch)


def test_pickled_and_nan_files_are_422_with_the_reason(
    client: TestClient, keys: Keys, db: sessionmaker[Session], scratch: Path
) -> None:
    pickled = npz_bytes(x=np.array([{"a": 1}] * 10, dtype=object), y=np.zeros(10))
    error = assert_error(
        upload(client, keys.alice, "evil.npz", pickled), 422, "invalid_dataset", "file"
    )
    assert "pickled" in error["message"] and "evil.npz" in error["message"]
    nan = "a,b,label\n1,2,0\nnan,3,1\n4,5,0\n"
    error = assert_error(
        upload(client, keys.alice, "holes.csv", nan.encode()), 422, "invalid_dataset", "file"
    )
    assert "NaN" in error["message"]
    not_npz = assert_error(upload(client, keys.alice, "fake.npz", b"hello"), 422, "invalid_dataset")
    assert "npz" in not_npz["message"]
    assert (
        "unsupported"
        in assert_error(upload(client, keys.alice, "data.txt", b"1,2"), 422, "invalid_upload")[
            "message"
        ]
    )
    no_file = client.post(
        "/v1/datasets", files={"label_column": (None, "y")}, headers=auth(keys.alice)
    )
    assert "no 'file' part" in assert_error(no_file, 422, "invalid_upload")["message"]
    other_field = client.post(
        "/v1/datasets", files={"data": ("d.npz", classification_npz())}, headers=auth(keys.alice)
    )
    assert_error(other_field, 422, "invalid_upload", "data")
    form = client.post("/v1/datasets", data={"label_column": "y"}, headers=auth(keys.alice))
    assert_error(form, 415, "unsupported_media_type")
    assert_error(
        client.post("/v1/datasets", json={"x": 1}, headers=auth(keys.alice)),
        415,
        "unsupported_media_type",
    )
    _stored_nothing(db, scratch)


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("uploads/2026/points.npz", "points.npz"),
        ("C:\\fakepath\\points.npz", "points.npz"),
        ("my data (1).NPZ", "my_data_1_.npz"),
        (".hidden.npz", "hidden.npz"),
        ("100%25 sure.npz", "100_sure.npz"),
    ],
)
def test_uploaded_filenames_are_sanitised(
    client: TestClient, keys: Keys, sent: str, stored: str
) -> None:
    """Harmless names are tidied (names with '..' or header characters are refused: tests/security)."""
    response = upload(client, keys.alice, sent, classification_npz())
    assert response.status_code == 201, response.text
    filename = response.json()["filename"]
    assert filename == stored
    assert filename.endswith(".npz") and not filename.startswith(".")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in filename)
    assert response.json()["format"] == "npz"


# -- who may see what ----------------------------------------------------------------------

OWNED_ROUTES = [
    ("GET", "/v1/jobs/{job}"),
    ("POST", "/v1/jobs/{job}/cancel"),
    ("GET", "/v1/jobs/{job}/events"),
    ("GET", "/v1/jobs/{job}/metrics"),
    ("GET", "/v1/jobs/{job}/stream"),
    ("GET", "/v1/jobs/{job}/checkpoints"),
    ("GET", "/v1/jobs/{job}/checkpoints/{checkpoint}/content"),
    ("GET", "/v1/jobs/{job}/model"),
    ("GET", "/v1/jobs/{job}/model/card"),
    ("POST", "/v1/jobs/{job}/embed"),
    ("GET", "/v1/datasets/{dataset}"),
    ("DELETE", "/v1/datasets/{dataset}"),
]
LIST_AND_CREATE_ROUTES = [
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/datasets"),
    ("POST", "/v1/datasets"),
]


def test_every_job_and_dataset_route_needs_a_valid_key_and_hides_other_owners(
    client: TestClient, keys: Keys, finished: Finished
) -> None:
    dataset = upload(client, keys.alice, "d.npz", classification_npz()).json()["id"]
    ids = {"job": finished.job_id, "checkpoint": finished.checkpoint_id, "dataset": dataset}
    for method, template in OWNED_ROUTES + LIST_AND_CREATE_ROUTES:
        url = template.format(**ids)
        body = {"json": {"inputs": [[0.0] * 40]}} if url.endswith("/embed") else {}
        for headers in (
            {},
            auth(keys.revoked),
            auth("em_not-a-key"),
            {"Authorization": "Basic YWxpY2U6eA=="},
        ):
            response = client.request(method, url, headers=headers, **body)
            assert_error(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"] == "Bearer", (method, url)
        if (method, template) in OWNED_ROUTES:
            assert_error(
                client.request(method, url, headers=auth(keys.bob), **body), 404, "not_found"
            )
    # nothing was changed by bob's attempts
    assert (
        client.get(f"/v1/jobs/{finished.job_id}", headers=auth(keys.alice)).json()["status"]
        == "succeeded"
    )
    assert client.get(f"/v1/datasets/{dataset}", headers=auth(keys.alice)).status_code == 200
    assert client.get("/v1/datasets", headers=auth(keys.bob)).json()["data"] == []


def test_keys_are_made_by_admins_and_revoked_by_their_owner_or_an_admin(
    client: TestClient, keys: Keys
) -> None:
    made = client.post("/v1/keys", json={"name": "carol"}, headers=auth(keys.admin))
    assert made.status_code == 201, made.text
    carol = made.json()
    assert carol["key"].startswith(carol["prefix"]) and carol["revoked_at"] is None
    assert client.get("/v1/jobs", headers=auth(carol["key"])).status_code == 200
    second = client.post(
        "/v1/keys", json={"owner_id": carol["owner_id"]}, headers=auth(keys.admin)
    ).json()
    assert second["owner_id"] == carol["owner_id"] and second["key"] != carol["key"]

    assert_error(
        client.post("/v1/keys", json={"name": "mallory"}, headers=auth(keys.alice)),
        403,
        "forbidden",
    )
    assert_error(client.post("/v1/keys", json={"name": "x"}), 401)
    assert_error(client.post("/v1/keys", json={}, headers=auth(keys.admin)), 422)
    assert_error(
        client.delete(f"/v1/keys/{carol['id']}", headers=auth(keys.alice)), 404, "not_found"
    )

    revoked = client.delete(f"/v1/keys/{carol['id']}", headers=auth(carol["key"]))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert_error(client.get("/v1/jobs", headers=auth(carol["key"])), 401)
    assert (
        client.delete(f"/v1/keys/{second['id']}", headers=auth(keys.admin)).json()["revoked_at"]
        is not None
    )
    assert_error(client.get("/v1/jobs", headers=auth(second["key"])), 401)


# -- limits, operations, the rest ----------------------------------------------------------


def test_json_bodies_over_the_request_limit_are_413(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    huge = {"inputs": [[0.0] * 40] * (settings.max_request_bytes // 100)}
    response = client.post("/v1/jobs/job_x/embed", json=huge, headers=auth(keys.alice))
    assert_error(response, 413, "too_large")


def test_operations_endpoints_respond(client: TestClient, keys: Keys) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "artifacts": "ok"},
    }
    submit(client, keys.alice)
    client.get("/v1/jobs", headers=auth(keys.alice))
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert (
        'embedmix_jobs{status="queued"} 1.0' in text
        and 'embedmix_jobs{status="succeeded"} 0.0' in text
    )
    assert 'embedmix_http_requests_total{method="POST",route="/v1/jobs",status="201"} 1.0' in text
    assert (
        'embedmix_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/jobs"}'
        in text
    )
    assert client.get("/docs").status_code == 200 and "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}/stream",
        "/v1/datasets",
        "/v1/catalog",
        "/readyz",
    } <= set(paths)
    catalog = client.get("/v1/catalog")
    assert catalog.status_code == 200
    assert {"datasets", "encoders", "losses", "mixups", "metrics"} <= set(catalog.json())
    assert any(entry["name"] == "metrix" for entry in catalog.json()["mixups"])
    exports = {entry["name"]: entry["text_only"] for entry in catalog.json()["exports"]}  # the dashboard's format boxes
    assert exports["onnx_int8"] is False and exports["sentence_transformers"] is True
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.delete("/v1/catalog"), 405, "method_not_allowed")


def test_readyz_is_503_when_the_broker_is_down(database_url: str, scratch: Path) -> None:
    settings = make_settings(database_url, scratch, redis_url=CLOSED_PORT_BROKER)
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
        assert_error(response, 503, "unavailable")
        assert response.json()["checks"]["database"] == "ok"
        assert response.json()["checks"]["broker"].startswith("error")
        assert int(response.headers["Retry-After"]) > 0
        assert client.get("/healthz").status_code == 200


def test_a_database_that_is_down_is_503_with_retry_after(scratch: Path) -> None:
    settings = make_settings(CLOSED_PORT_DATABASE, scratch)
    with TestClient(create_app(settings)) as client:
        response = client.get("/v1/jobs", headers=auth("em_" + "x" * 40))
        assert_error(response, 503, "unavailable")
        assert int(response.headers["Retry-After"]) > 0
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200


def test_cors_is_closed_unless_origins_are_listed(
    database_url: str, scratch: Path, broker: redis.Redis
) -> None:
    preflight = {
        "Origin": "https://ui.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    with TestClient(create_app(make_settings(database_url, scratch))) as client:
        assert (
            "access-control-allow-origin"
            not in client.options("/v1/jobs", headers=preflight).headers
        )
        assert (
            "access-control-allow-origin"
            not in client.get("/healthz", headers={"Origin": "https://ui.example"}).headers
        )
    settings = make_settings(database_url, scratch, cors_origins=["https://ui.example"])
    with TestClient(create_app(settings)) as client:
        allowed = client.options("/v1/jobs", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
        other = client.options("/v1/jobs", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_the_admin_key_setting_works_on_a_fresh_database(client: TestClient, keys: Keys) -> None:
    mine = submit(client, keys.admin)
    assert client.get(f"/v1/jobs/{mine['id']}", headers=auth(keys.admin)).status_code == 200
    assert_error(client.get(f"/v1/jobs/{mine['id']}", headers=auth(keys.alice)), 404)
