"""The servers under the service fail: Redis restarts empty, PostgreSQL stops for ten seconds.

Both servers are this test's own (a redis-server on a free port, a PostgreSQL
cluster made by initdb), so stopping them disturbs nobody else.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from embedmix.store import DatabaseArtifacts
from embedmix.store.db import migrate
from embedmix.store.models import Artifact, Job
from tests.chaos.conftest import (
    ADMIN_KEY,
    SPEC,
    LocalPostgres,
    RedisServer,
    Stack,
    statuses,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
pytestmark = pytest.mark.slow  # processes, training and waits for leases: tens of seconds each
POSTGRES_OUTAGE_S = 10.0


def test_redis_restart_mid_run_the_worker_reconnects_and_the_job_runs_once(stack: Stack) -> None:
    """Redis comes back empty: the running job carries on, and a queued job whose message
    was lost with it is sent again by the reaper and taken by the reconnected worker."""
    stack.settings["lost_message_after_s"] = "3"
    (worker,) = stack.start("worker")
    running = stack.submit(SPEC, message_id="running-job")
    stack.wait_checkpoint(running)
    waiting = stack.submit({**SPEC, "train": {**SPEC["train"], "epochs": 1}})

    stack.redis.restart()  # every key is gone: the queue with the waiting job's message, the unacked one

    job = stack.wait_status(running, "succeeded")
    assert job.attempts == 1
    assert statuses(stack.events(running)) == ["running", "succeeded"]
    stack.assert_metrics_once(running)
    assert worker.log().count("[running-job] received") == 1
    later = stack.wait_status(waiting, "succeeded")
    assert later.attempts == 1
    assert [e.data["reason"] for e in stack.events(waiting) if e.type == "enqueued"][:1] == ["lost_message"]
    assert worker.alive()


def test_postgres_stopped_for_10s_api_answers_503_and_the_job_keeps_its_progress(
    local_postgres: LocalPostgres, redis_server: RedisServer, tmp_path: Path, dataset_cache: Path
) -> None:
    migrate(local_postgres.url)
    # A lease longer than the outage, as production's 30 s is: the worker rides it out.
    stack = Stack(local_postgres.url, redis_server, tmp_path, dataset_cache, lease_ttl_s="20")
    try:
        _postgres_outage(stack, local_postgres)
    finally:
        stack.close()


def _postgres_outage(stack: Stack, postgres: LocalPostgres) -> None:
    stack.start("api", "worker")
    api = httpx.Client(base_url=stack.api_url, headers=AUTH, timeout=30)
    job_id = api.post("/v1/jobs", json=SPEC).json()["id"]
    before = stack.wait_checkpoint(job_id)[-1].step

    postgres.stop()
    stopped = time.monotonic()
    short = {**SPEC, "train": {**SPEC["train"], "epochs": 1}}
    down = [
        api.get(f"/v1/jobs/{job_id}"),
        api.get("/v1/jobs"),
        api.post("/v1/jobs", json=SPEC),
        api.post("/v1/jobs", json=short, headers={"Idempotency-Key": "during-outage"}),
        api.get("/readyz"),
    ]
    for response in down:
        assert response.status_code == 503, (response.request.url, response.text)
        assert int(response.headers["Retry-After"]) > 0
        assert response.json()["error"]["code"] == "unavailable"
    time.sleep(max(0.0, POSTGRES_OUTAGE_S - (time.monotonic() - stopped)))  # the outage lasts 10 s
    postgres.start()

    wait_for(lambda: api.get("/readyz").status_code == 200, 60, "the API to be ready again", stack.logs)
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200
    with stack.session_factory() as session:  # the refused submissions left nothing behind
        assert session.scalar(select(func.count()).select_from(Job)) == 1
    retried = api.post("/v1/jobs", json=short, headers={"Idempotency-Key": "during-outage"})
    assert retried.status_code == 201
    again = api.post("/v1/jobs", json=short, headers={"Idempotency-Key": "during-outage"})
    assert again.json()["id"] == retried.json()["id"]

    job = stack.wait_status(job_id, "succeeded")
    # The worker kept its progress: the attempt that was running trained through the
    # outage and finished, with no second attempt and no resume.
    resumed = [e for e in stack.events(job_id) if (e.data or {}).get("resumed_from_step") is not None]
    assert job.attempts == 1 and resumed == [], (job.attempts, resumed)
    assert job.step == job.total_steps and before < job.step
    stack.assert_metrics_once(job_id)
    with stack.session_factory() as session:  # no blob was left half-written by the cut connections
        assert session.scalar(select(func.count()).select_from(Artifact).where(Artifact.complete.is_(False))) == 0
        assert all(DatabaseArtifacts().verify(session, c.artifact_id) for c in stack.checkpoints(job_id))
    api.close()
