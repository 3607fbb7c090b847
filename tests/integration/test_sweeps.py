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

import math
import queue
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from embedmix.service.settings import Settings
from embedmix.store.artifacts import DatabaseArtifacts
from embedmix.store.models import Job, Sweep, SweepTrial, utcnow
from embedmix.store.sweeps import active_trial_jobs, settle_trial, trial_idempotency_key
from tests.conftest import RedisServer, wait_for
from tests.integration.conftest import Keys, auth
from embedmix.worker.callbacks import EVAL_PREFIX, StoreCallbacks
from embedmix.worker.context import WorkerContext
from embedmix.worker.sweeps import SweepController, optuna_storage, run_controller
from embedmix.worker.train_task import run_job

ADMIN_KEY = "em_" + "S" * 40
SWEEP_TIMEOUT_S = 900.0  # generous: a loaded two-core machine trains slowly; the tests judge outcomes

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
# with epochs enough (4) for a pruned trial to stop before its last.
LEARNS: dict[str, Any] = {
    **TINY,
    "dataset": {"name": "mnist1d", "size": 1500},
    "model": {"encoder": "mlp", "width": 32, "embedding_dim": 8},
    "train": {**TINY["train"], "epochs": 4},
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
        lease_ttl_s=15.0, sweep_poll_s=0.5,
    )


@pytest.fixture
def context(settings: Settings, db: sessionmaker[Session]) -> WorkerContext:
    return WorkerContext(settings, db, DatabaseArtifacts())


class Sent:
    """The controller's outbox: the job ids it sent, as a broker would hold them."""

    def __init__(self) -> None:
        self.ids: queue.Queue[str] = queue.Queue()

    def __call__(self, job_id: str, devices: int) -> None:
        assert devices == 1  # the sweeps here train on one device: the one-device queue
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


def run_in_background(sent: Sent, context: WorkerContext, stop: threading.Event) -> threading.Thread:
    """A worker: runs each job the controller sends, one at a time, until stopped."""

    def work() -> None:
        while not stop.is_set():
            try:
                job_id = sent.ids.get(timeout=0.1)
            except queue.Empty:
                continue
            run_job(job_id, context)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


class ControllerPasses:
    """Holds a trial job after each epoch's eval values until the controller has made a whole pass after them.

    Without it the test is a race: on a fast machine a job trains all its epochs between two
    of the controller's polls, and the pruner's cancel finds it exporting.
    """

    def __init__(self) -> None:
        self.count: float = 0
        self.changed = threading.Condition()

    def passed(self) -> None:
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def wait_for_one(self) -> None:
        with self.changed:
            seen = self.count + 2  # the pass under way may have read the metrics before they were written
            assert self.changed.wait_for(lambda: self.count >= seen, timeout=SWEEP_TIMEOUT_S)

    def release(self) -> None:
        """Let every held job go on: the controller has stopped, no pass will come."""
        with self.changed:
            self.count = math.inf
            self.changed.notify_all()

    def hold_jobs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        run_once, on_metrics = SweepController.run_once, StoreCallbacks.on_metrics

        def counted(controller: SweepController) -> None:
            run_once(controller)
            self.passed()

        def held(callbacks: StoreCallbacks, step: int, epoch: int, values: dict[str, float]) -> None:
            on_metrics(callbacks, step, epoch, values)
            if any(name.startswith(EVAL_PREFIX) for name in values):
                callbacks.flush()
                self.wait_for_one()

        monkeypatch.setattr(SweepController, "run_once", counted)
        monkeypatch.setattr(StoreCallbacks, "on_metrics", held)


def test_a_median_pruner_stops_a_clearly_bad_trial_early(
    client: TestClient, keys: Keys, db: sessionmaker[Session], settings: Settings, context: WorkerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lr 10 ruins training (precision_at_1 about 0.13 against 0.3): such a trial is cut before the last of its epochs.

    Each job waits after an epoch's eval values until the controller has looked at them
    (ControllerPasses), so the pruner sees a bad trial's first epoch while its job still runs.
    """
    spec = LEARNS
    body = {
        **LR_SWEEP,
        "spec": spec,
        "space": {"train.lr": {"type": "categorical", "choices": [0.03, 10.0]},
                  "train.seed": {"type": "categorical", "choices": [0, 1]}},
        # Seed 4 orders this grid good, good, bad, bad (Optuna's grid sampler, seeded): the median
        # pruner has two finished trials to judge the bad ones by. One trial at a time.
        "trials": 4, "parallel": 1, "sampler": "grid", "pruner": "median", "seed": 4,
    }
    passes = ControllerPasses()
    passes.hold_jobs(monkeypatch)
    sweep = submit(client, keys.alice, body)
    sent, stop = Sent(), threading.Event()
    worker = run_in_background(sent, context, stop)
    controller = threading.Thread(target=run_controller, args=(settings, stop, sent), daemon=True)
    controller.start()  # the loop a worker runs, polling every sweep_poll_s
    try:
        wait_for(lambda: sweep_status(db, sweep["id"]) != "queued" and sweep_status(db, sweep["id"]) != "running",
                 SWEEP_TIMEOUT_S, "the sweep to end")
    finally:
        stop.set()
        controller.join()
        passes.release()
        worker.join()
    assert sweep_status(db, sweep["id"]) == "succeeded"
    trials = client.get(f"/v1/sweeps/{sweep['id']}/trials", headers=auth(keys.alice)).json()["data"]
    pruned_bad = [t for t in trials if t["state"] == "pruned" and t["params"]["train.lr"] == 10.0]
    assert pruned_bad, trials
    jobs = {j.id: j for j in trial_jobs(db, sweep["id"])}
    for trial in pruned_bad:
        job = jobs[trial["job_id"]]
        assert job.status == "cancelled" and job.epoch < spec["train"]["epochs"], (job.status, job.epoch)
        # its value is the one it was pruned on; the stopping job may rewrite a point after that, so only
        # its presence is judged here
        assert trial["value"] is not None and trial["intermediate"]
    assert all(t["state"] in ("complete", "pruned") for t in trials)
    assert sorted((t["params"]["train.lr"], t["params"]["train.seed"]) for t in trials) == [
        (0.03, 0), (0.03, 1), (10.0, 0), (10.0, 1)]  # the grid, each point once
    study = optuna.load_study(study_name=sweep["id"], storage=optuna_storage(settings.database_url))
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials) == sum(t["state"] == "pruned" for t in trials)


def test_a_trial_pruned_as_its_job_succeeds_ends_as_its_job_did(
    client: TestClient, keys: Keys, db: sessionmaker[Session], settings: Settings, context: WorkerContext
) -> None:
    """The pruner looks while the job runs; the job succeeds before the cancel lands: the trial is complete, not pruned."""
    sweep = submit(client, keys.alice, {**LR_SWEEP, "trials": 1, "parallel": 1})
    sent = Sent()
    controller = SweepController(settings, sent, db)
    controller.run_once()
    (job_id,) = sent.drain()
    assert run_job(job_id, context) == "succeeded"
    with db() as session:
        row = session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep["id"])).one()
        swept = session.get_one(Sweep, sweep["id"])
        value = session.get_one(Job, job_id).metrics["precision_at_1"]
    state, settled_value, error = controller._settle(swept, 0, "pruned", row, value=-1.0)
    assert (state, settled_value, error) == ("complete", value, None)
    with db() as session:
        assert session.get_one(Job, job_id).status == "succeeded"
        trial = session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep["id"])).one()
        assert (trial.state, trial.value) == ("complete", value)


def expire_lease(db: sessionmaker[Session], sweep_id: str) -> None:
    """What a controller's death looks like to the others, once its lease has run out."""
    with db() as session:
        session.get_one(Sweep, sweep_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        session.commit()


def test_a_controller_restarted_after_dying_asks_nothing_twice_and_tells_what_was_decided(
    client: TestClient, keys: Keys, db: sessionmaker[Session], settings: Settings, context: WorkerContext
) -> None:
    """The two windows a kill can hit: after asking the study (before the job exists), after deciding (before telling)."""
    sweep = submit(client, keys.alice, {**LR_SWEEP, "trials": 3, "parallel": 1})
    first_sent = Sent()
    SweepController(settings, first_sent, db).run_once()
    (job0,) = first_sent.drain()
    assert run_job(job0, context) == "succeeded"
    storage = optuna_storage(settings.database_url)
    study = optuna.load_study(study_name=sweep["id"], storage=storage)
    with db() as session:  # the first controller decided trial 0 and died before telling it
        value = session.get_one(Job, job0).metrics["precision_at_1"]
        assert settle_trial(session, sweep["id"], 0, "complete", value=value)
        session.commit()
    study.ask()  # ... and had asked for trial 1, never launched
    expire_lease(db, sweep["id"])

    sent = Sent()
    second = SweepController(settings, sent, db)
    second.run_once()
    study = optuna.load_study(study_name=sweep["id"], storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    assert study.trials[0].value == value
    (job1,) = sent.drain()  # trial 1 launched, not asked again; trial 2 waits for the one slot
    assert run_job(job1, context) == "succeeded"
    intruder = Sent()
    SweepController(settings, intruder, db).run_once()  # a live lease is the second controller's
    assert intruder.drain() == [] and len(study.trials) == 2
    drive_in_turns(second, sent, context, sweep["id"])
    study = optuna.load_study(study_name=sweep["id"], storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    jobs = trial_jobs(db, sweep["id"])
    assert sorted(j.idempotency_key for j in jobs) == [trial_idempotency_key(sweep["id"], n) for n in range(3)]
    assert job1 in {j.id for j in jobs}
    assert sweep_status(db, sweep["id"]) == "succeeded"


def test_another_owner_sees_404_for_the_sweep_and_its_trials(client: TestClient, keys: Keys) -> None:
    sweep = submit(client, keys.alice, LR_SWEEP)
    for method, path in [("GET", ""), ("GET", "/trials"), ("POST", "/cancel")]:
        response = client.request(method, f"/v1/sweeps/{sweep['id']}{path}", headers=auth(keys.bob))
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert client.get("/v1/sweeps", headers=auth(keys.bob)).json()["data"] == []
    assert [s["id"] for s in client.get("/v1/sweeps", headers=auth(keys.alice)).json()["data"]] == [sweep["id"]]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"space": {"train.nope": {"type": "float", "low": 0.1, "high": 1.0}}}, "space.train.nope"),
        ({"space": {"train.lr": {"type": "float", "low": 1e-3, "high": 20.0}}}, "space.train.lr"),
        ({"space": {"mixup.alpha": {"type": "float", "low": 0.1, "high": 1.0}}}, "space.mixup.alpha"),
        ({"space": {"train.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, "space.train.lr"),
        ({"space": {"train.batch_size": {"type": "int", "low": 8, "high": 64.5}}}, "space.train.batch_size"),
        ({"space": {"train.optimizer": {"type": "categorical", "choices": ["sgd", "lion"]}}}, "space.train.optimizer"),
        ({"space": {"train.epochs": {"type": "float", "low": 1, "high": 3}}}, "space.train.epochs"),
        ({"metric": "map_at_r"}, "metric"),
        ({"spec": {**TINY, "train": {**TINY["train"], "epochs": 0}}}, "spec.train.epochs"),
        ({"sampler": "grid"}, "space.train.lr"),
        ({"sampler": "grid", "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1.0, "step": 1e-9}}},
         "space.train.lr"),
        ({"pruner": "median", "spec": {**TINY, "eval": {"metrics": ["precision_at_1"], "every_epochs": 0}}}, "pruner"),
    ],
)
def test_a_bad_sweep_is_a_422_naming_its_field(
    client: TestClient, keys: Keys, change: dict[str, Any], param: str
) -> None:
    response = client.post("/v1/sweeps", json={**LR_SWEEP, **change}, headers=auth(keys.alice))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param, response.json()


def test_idempotency_key_replays_the_sweep_and_refuses_another_body(client: TestClient, keys: Keys) -> None:
    headers = {**auth(keys.alice), "Idempotency-Key": "sweep-1"}
    first = client.post("/v1/sweeps", json=LR_SWEEP, headers=headers)
    again = client.post("/v1/sweeps", json=LR_SWEEP, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/sweeps", json={**LR_SWEEP, "trials": 4}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


def test_cancel_stops_the_running_trials_and_launches_no_more(
    client: TestClient, keys: Keys, db: sessionmaker[Session], settings: Settings
) -> None:
    sweep = submit(client, keys.alice, LR_SWEEP)
    sent = Sent()
    controller = SweepController(settings, sent, db)
    controller.run_once()
    launched = sent.drain()
    assert len(launched) == 2
    response = client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=auth(keys.alice))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    with db() as session:
        assert {session.get_one(Job, j).status for j in launched} == {"cancelled"}
    controller.run_once()
    assert sent.drain() == []
    trials = client.get(f"/v1/sweeps/{sweep['id']}/trials", headers=auth(keys.alice)).json()["data"]
    assert [t["state"] for t in trials] == ["failed", "failed"]
    study = optuna.load_study(study_name=sweep["id"], storage=optuna_storage(settings.database_url))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    again = client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=auth(keys.alice))
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
