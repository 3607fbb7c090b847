"""A sweep whose controller is killed (kill -9 of the worker process that hosts it) mid-sweep.

Real `embedmix api` and `embedmix worker` processes on PostgreSQL and on the
embedded default's SQLite file, with a Redis server of the test's own. The
worker runs the controller as a thread (worker/sweeps.py) and trains the trial
jobs; it is killed while trials are running, a new worker is started, and the
sweep must end with exactly the requested trials: one job per trial number,
none asked or launched twice, every trial told to the study once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from sqlalchemy import select

from embedmix.store.db import migrate
from embedmix.store.models import Job, Sweep, SweepTrial
from embedmix.store.sweeps import trial_idempotency_key
from tests.chaos.conftest import ADMIN_KEY, JOB_TIMEOUT_S, Stack, wait_for
from tests.conftest import PostgresServer, RedisServer
from embedmix.worker.sweeps import optuna_storage

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
TRIALS = 6
pytestmark = pytest.mark.slow  # processes, training and waits for leases

SWEEP: dict[str, Any] = {
    "name": "killed",
    "spec": {
        "name": "trial",
        "dataset": {"name": "mnist1d", "size": 300},
        "model": {"encoder": "mlp", "width": 16, "embedding_dim": 8},
        "objective": {"loss": "supcon"},
        "train": {"epochs": 3, "batch_size": 32, "seed": 0, "device": "cpu"},
        "eval": {"metrics": ["precision_at_1"]},
        "export": {"formats": ["safetensors"]},
    },
    "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
    "metric": "precision_at_1",
    "direction": "maximize",
    "trials": TRIALS,
    "parallel": 2,
    "seed": 0,
}


@pytest.fixture(params=["sqlite", "postgresql"])
def sweep_stack(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path, dataset_cache: Path
) -> Iterator[Stack]:
    """A stack on a migrated database of each backend; messages nobody took are re-sent within seconds."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'embedmix.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database("sweep")
    migrate(url)
    stack = Stack(url, redis_server, tmp_path, dataset_cache, sweep_poll_s="0.2", lost_message_after_s="2")
    yield stack
    stack.close()
    if request.param == "postgresql":
        server.drop_database(url)


def _sweep(stack: Stack, sweep_id: str) -> tuple[Sweep, list[SweepTrial], list[Job]]:
    with stack.session_factory() as session:
        sweep = session.get_one(Sweep, sweep_id)
        trials = list(session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id).order_by(SweepTrial.number)))
        jobs = list(session.scalars(select(Job).where(Job.idempotency_key.startswith(f"sweep:{sweep_id}:"))))
        return sweep, trials, jobs


def test_kill_9_of_the_controller_mid_sweep_ends_with_exactly_the_trials_asked_for(sweep_stack: Stack) -> None:
    stack = sweep_stack
    (first,) = stack.start("api", "worker")[1:]
    response = httpx.post(f"{stack.api_url}/v1/sweeps", json=SWEEP, headers=AUTH, timeout=30)
    assert response.status_code == 201, response.text
    sweep_id = response.json()["id"]

    def mid_sweep() -> bool:
        sweep, trials, jobs = _sweep(stack, sweep_id)
        assert sweep.status in ("queued", "running"), f"the sweep is already {sweep.status}: the kill came too late"
        return len(trials) >= 3 and any(j.status == "running" for j in jobs)

    wait_for(mid_sweep, JOB_TIMEOUT_S, "the third trial to be launched while one runs", stack.logs)
    first.kill()
    stack.worker("worker-2")

    def ended() -> Sweep | None:
        sweep, _, _ = _sweep(stack, sweep_id)
        return sweep if sweep.status in ("succeeded", "failed", "cancelled") else None

    sweep = wait_for(ended, 3 * JOB_TIMEOUT_S, "the sweep to end", stack.logs)
    _, trials, jobs = _sweep(stack, sweep_id)
    assert sweep.status == "succeeded", sweep.error
    assert [t.number for t in trials] == list(range(TRIALS))
    assert sorted(j.idempotency_key for j in jobs) == sorted(trial_idempotency_key(sweep_id, n) for n in range(TRIALS))
    assert sorted(t.job_id for t in trials) == sorted(j.id for j in jobs)
    assert all(j.status == "succeeded" for j in jobs) and all(t.state == "complete" for t in trials)
    study = optuna.load_study(study_name=sweep_id, storage=optuna_storage(stack.database_url))
    assert [t.number for t in study.trials] == list(range(TRIALS))
    assert [t.value for t in study.trials] == [t.value for t in trials]
    assert sweep.best is not None and sweep.best["value"] == max(j.metrics["precision_at_1"] for j in jobs)
    assert any(j.attempts == 2 for j in jobs), "a trial job was running when the worker died: it resumed"
