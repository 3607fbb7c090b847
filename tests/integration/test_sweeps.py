"""Sweeps on the embedded default (SQLite) and on a real PostgreSQL: the API, the controller, Optuna's study.

The controller (``worker.sweeps.SweepController``) runs in the test's process,
pass by pass, and the trial jobs it sends are run by the real task body
(``worker.train_task.run_job``): synchronously one after another where the
test judges the bookkeeping, or by runner threads while the controller polls
where the test needs jobs running while it decides (pruning). Jobs are tiny
(mnist1d, an mlp of width 16 or 32, a few epochs). A kill -9 of a real worker
process, which hosts the controller, is in tests/chaos/test_sweep_kill.py.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from service.settings import Settings
from store.artifacts import DatabaseArtifacts
from store.models import Job, Sweep, SweepTrial
from store.sweeps import active_trial_jobs
from tests.conftest import RedisServer, wait_for
from tests.integration.conftest import Keys, auth
from worker.context import WorkerContext
from worker.sweeps import SweepController, optuna_storage
from worker.train_task import run_job

ADMIN_KEY = "em_" + "S" * 40
SWEEP_TIMEOUT_S = 300.0

TINY: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "mnist1d", "size": 300},
    "model": {"encoder": "mlp", "width": 16, "embedding_dim": 8},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 1, "batch_size": 32, "seed": 0, "device": "cpu"},
    "eval": {"metrics": ["precision_at_1"]},
    "export": {"formats": ["safetensors"]},
}
# Large enough to learn something in an epoch (precision_at_1 about 0.3 at lr 0.03, 0.13 at lr 10),
# and long enough (20 epochs) that a controller polling every 0.1 s sees a bad trial's first epochs.
LEARNS: dict[str, Any] = {
    **TINY,
    "dataset": {"name": "mnist1d", "size": 1500},
    "model": {"encoder": "mlp", "width": 32, "embedding_dim": 8},
    "train": {**TINY["train"], "epochs": 20},
}
LR_SWEEP: dict[str, Any] = {
    "name": "lr",
    "spec": TINY,
    "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
    "metric": "precision_at_1",
    "direction": "maximize",
    "trials": 8,
    "parallel": 2,
    "sampler": "tpe",
    "seed": 0,
}


@pytest.fixture
def settings(database_url: str, redis_server: RedisServer, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url, redis_url=redis_server.url, artifacts="db", work_dir=str(tmp_path),
        admin_key=ADMIN_KEY, metrics_flush_s=0.1, cancel_poll_s=0.1, checkpoint_min_interval_s=30.0,
        lease_ttl_s=15.0, sweep_poll_s=0.1,
    )


@pytest.fixture
def context(settings: Settings, db: sessionmaker[Session]) -> WorkerContext:
    return WorkerContext(settings, db, DatabaseArtifacts())


class Sent:
    """The controller's outbox: the job ids it sent, as a broker would hold them."""

    def __init__(self) -> None:
        self.ids: queue.Queue[str] = queue.Queue()

    def __call__(self, job_id: str) -> None:
        self.ids.put(job_id)

    def drain(self) -> list[str]:
        out = []
        while not self.ids.empty():
            out.append(self.ids.get_nowait())
        return out


def submit(client: TestClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/sweeps", json=body, headers=auth(key))
    assert response.status_code == 201, response.text
    return response.json()


def sweep_status(db: sessionmaker[Session], sweep_id: str) -> str:
    with db() as session:
        return session.get_one(Sweep, sweep_id).status


def drive_in_turns(controller: SweepController, sent: Sent, context: WorkerContext, sweep_id: str,
                   check: Callable[[], None] = lambda: None) -> None:
    """Pass, run every job the pass sent to its end, repeat until the sweep is over."""
    for _ in range(100):
        controller.run_once()
        check()
        for job_id in sent.drain():
            assert run_job(job_id, context) == "succeeded"
        if sweep_status(context.session_factory, sweep_id) in ("succeeded", "failed", "cancelled"):
            return
    raise AssertionError("the sweep did not end within 100 passes")


def trial_jobs(db: sessionmaker[Session], sweep_id: str) -> list[Job]:
    with db() as session:
        query = select(Job).join(SweepTrial, SweepTrial.job_id == Job.id).where(SweepTrial.sweep_id == sweep_id)
        return list(session.scalars(query))


def test_a_sweep_of_8_trials_2_at_a_time_ends_with_8_jobs_and_the_best_of_them(
    client: TestClient, keys: Keys, db: sessionmaker[Session], settings: Settings, context: WorkerContext
) -> None:
    sweep = submit(client, keys.alice, LR_SWEEP)
    assert sweep["status"] == "queued" and sweep["trial_states"] == {"running": 0, "complete": 0, "pruned": 0, "failed": 0}
    sent = Sent()
    controller = SweepController(settings, sent, db)
    most_at_once = []

    def at_most_two() -> None:
        with db() as session:
            active = len(active_trial_jobs(session, sweep["id"]))
        assert active <= 2
        most_at_once.append(active)

    drive_in_turns(controller, sent, context, sweep["id"], at_most_two)
    assert max(most_at_once) == 2

    done = client.get(f"/v1/sweeps/{sweep['id']}", headers=auth(keys.alice)).json()
    assert done["status"] == "succeeded", done
    assert done["trial_states"] == {"running": 0, "complete": 8, "pruned": 0, "failed": 0}
    jobs = trial_jobs(db, sweep["id"])
    assert len(jobs) == 8 and len({j.id for j in jobs}) == 8
    assert all(j.status == "succeeded" for j in jobs)
    best_job = max(jobs, key=lambda j: j.metrics["precision_at_1"])
    assert done["best"]["value"] == best_job.metrics["precision_at_1"]
    assert done["best"]["spec"] == next(j.spec for j in jobs if j.id == done["best"]["job_id"])
    assert done["best"]["spec"]["train"]["lr"] == done["best"]["params"]["train.lr"]
    assert best_job.metrics["precision_at_1"] == next(j.metrics["precision_at_1"] for j in jobs if j.id == done["best"]["job_id"])

    trials = client.get(f"/v1/sweeps/{sweep['id']}/trials", headers=auth(keys.alice)).json()["data"]
    assert [t["number"] for t in trials] == list(range(8))
    assert len({t["params"]["train.lr"] for t in trials}) == 8
    assert all(t["state"] == "complete" and t["intermediate"] for t in trials)
    study = optuna.load_study(study_name=sweep["id"], storage=optuna_storage(settings.database_url))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 8
    assert study.best_value == done["best"]["value"]
