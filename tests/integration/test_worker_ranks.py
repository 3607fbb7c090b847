"""A 2-device job over HTTP to a real `embedmix worker`, which trains it on 2 gloo ranks (worker/ranks.py).

One API and one worker process serve the whole module (their start is most
of what a test here would cost); each test submits its own job and waits for
it to end, so the next test finds the worker idle. The last test stops that
worker (SIGTERM) and starts another. Faults are injected for
real (SIGKILL of one rank) and the ranks are found as the worker's
descendants: torch's launcher and the `worker.ranks` processes under it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
import torch
from safetensors.torch import load as load_safetensors

from embedmix.core.data import load_dataset
from embedmix.core.spec import validate_spec
from embedmix.core.train import NullCallbacks, train
from tests.chaos.conftest import ADMIN_KEY, Stack, owner_pid, statuses
from tests.conftest import PostgresServer, RedisServer, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
pytestmark = pytest.mark.slow  # service processes and two training ranks: tens of seconds in all
RANK_MODULE = "embedmix.worker.ranks"

# 240 training rows / batch 32 = 7 steps an epoch, a checkpoint every 3 steps.
SPEC: dict[str, Any] = {
    "name": "two-ranks",
    "dataset": {"name": "mnist1d", "size": 300},
    "model": {"encoder": "mlp", "width": 16, "embedding_dim": 8},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 2, "batch_size": 32, "seed": 0, "device": "cpu", "checkpoint_every_steps": 3},
    "resources": {"devices": 2},
    "eval": {"metrics": ["precision_at_1"]},
    "export": {"formats": ["safetensors"]},
}
# 210 steps, a checkpoint every 10: a kill polled for after the first checkpoint lands mid-run,
# and the resumed attempt still ends within seconds.
KILL_SPEC: dict[str, Any] = {**SPEC, "train": {**SPEC["train"], "epochs": 30, "checkpoint_every_steps": 10}}
# A run that would take minutes: it ends only because it is cancelled.
LONG_SPEC: dict[str, Any] = {**SPEC, "train": {**SPEC["train"], "epochs": 200, "checkpoint_every_steps": 10}}


@pytest.fixture(scope="module")
def stack(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An API and a worker on a throwaway database and a Redis server of the module's own."""
    directory = tmp_path_factory.mktemp("ranks")
    redis = RedisServer(directory)
    redis.start()
    url = postgres_server.create_database("ranks")
    from embedmix.store.db import migrate

    migrate(url)
    stack = Stack(url, redis, directory, tmp_path_factory.mktemp("dataset-cache"), max_devices_per_job="2")
    try:
        stack.start("api", "worker")
        yield stack
    finally:
        stack.close()
        redis.kill()
        postgres_server.drop_database(url)


def _submit(stack: Stack, spec: dict[str, Any]) -> str:
    response = httpx.post(f"{stack.api_url}/v1/jobs", json=spec, headers=AUTH, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _ranks(stack: Stack, job_id: str) -> list[psutil.Process]:
    """The job's launcher and ranks: the descendants of the worker holding its lease (all N ranks up)."""
    def found() -> list[psutil.Process] | None:
        tree = psutil.Process(owner_pid(stack.job(job_id))).children(recursive=True)
        ranks = [p for p in tree if _rank_of(p) is not None]
        return tree if len(ranks) == SPEC["resources"]["devices"] else None

    return wait_for(found, 60, f"the ranks of {job_id}", stack.logs)


def _rank_of(process: psutil.Process) -> int | None:
    """The rank a `worker.ranks` process is (None for the launcher, or a process that is not one, or gone)."""
    try:
        command = process.cmdline()
        if RANK_MODULE not in command or "torch.distributed.run" in command:
            return None
        return int(process.environ()["RANK"])
    except (psutil.Error, KeyError):
        return None


def _rank(processes: list[psutil.Process], rank: int) -> psutil.Process:
    (found,) = [p for p in processes if _rank_of(p) == rank]
    return found


def _worker_tree(stack: Stack) -> list[psutil.Process]:
    """Whatever runs under the worker processes (nothing, once their jobs have ended)."""
    workers = [p for p in stack.processes if p.name.startswith("worker") and p.alive()]
    return [c for w in workers for c in psutil.Process(w.pid).children(recursive=True) if not _gone([c])]


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _gone(processes: list[psutil.Process]) -> bool:
    """None of these processes runs any more (a pid reused since is another process: is_running checks)."""
    def running(process: psutil.Process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return not any(running(p) for p in processes)


def _one_device_losses(spec: dict[str, Any]) -> dict[int, float]:
    """The train/loss series of the same spec on one device, in this process (the reference)."""
    losses: dict[int, float] = {}

    class Losses(NullCallbacks):
        def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
            if "train/loss" in values:
                losses[step] = values["train/loss"]

    one = validate_spec({**spec, "resources": {"devices": 1}})
    train(one, load_dataset(one), Losses())
    return losses


def _stored_losses(stack: Stack, job_id: str) -> dict[int, float]:
    response = httpx.get(f"{stack.api_url}/v1/jobs/{job_id}/metrics", params={"name": "train/loss"},
                         headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return {p["step"]: p["value"] for p in response.json()["data"]}


def _resumed_from(stack: Stack, job_id: str) -> list[int]:
    return [e.data["resumed_from_step"] for e in stack.events(job_id)
            if e.type == "log" and (e.data or {}).get("resumed_from_step") is not None]


def test_two_device_job_succeeds_with_one_series_one_model_and_world_size_2(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _submit(stack, SPEC)
    job = stack.wait_status(job_id, "succeeded")

    assert statuses(stack.events(job_id)) == ["running", "succeeded"]
    starts = [e for e in stack.events(job_id) if e.type == "log" and e.dedup_key.endswith(":start")]
    assert len(starts) == 1 and starts[0].data["device"] == "cpu"
    stack.assert_metrics_once(job_id)
    # the series is rank 0's report of the global batch's loss, the one one device computes
    monkeypatch.setenv("EMBEDMIX_CACHE", str(stack.cache))  # the dataset the worker made
    stored, reference = _stored_losses(stack, job_id), _one_device_losses(SPEC)
    assert stored.keys() == reference.keys()
    assert all(abs(stored[s] - reference[s]) <= 1e-4 * max(1.0, abs(reference[s])) for s in reference)
    assert job.card["training"]["world_size"] == 2 and job.card["training"]["steps"] == job.total_steps
    assert list(job.model_artifacts) == ["safetensors"]
    model = httpx.get(f"{stack.api_url}/v1/jobs/{job_id}/model", params={"format": "safetensors"},
                      headers=AUTH, timeout=30)
    assert model.status_code == 200
    assert all(torch.isfinite(t).all() for t in load_safetensors(model.content).values())
    checkpoints = stack.checkpoints(job_id)
    assert checkpoints and max(c.step for c in checkpoints) == job.total_steps


def test_kill_9_of_one_rank_resumes_in_a_second_attempt_with_no_rank_left(stack: Stack) -> None:
    job_id = _submit(stack, KILL_SPEC)
    seen = stack.wait_checkpoint(job_id)
    first = _ranks(stack, job_id)
    try:
        _rank(first, 1).send_signal(signal.SIGKILL)
        job = stack.wait_status(job_id, "succeeded")
    finally:
        _kill(first)  # whatever the assertions say, nothing this test started is left running
    assert _gone(first)
    assert job.attempts == 2
    events = stack.events(job_id)
    assert statuses(events) == ["running", "queued", "running", "succeeded"]
    (lost,) = [e for e in events if e.type == "status" and e.data.get("reason") == "rank_lost"]
    assert lost.data["attempt"] == 1
    (resumed,) = _resumed_from(stack, job_id)
    assert resumed >= seen[-1].step > 0
    stack.assert_metrics_once(job_id)
    assert job.card["training"]["world_size"] == 2 and job.card["training"]["resumed_from_step"] == resumed
    assert not _worker_tree(stack)


def test_cancel_stops_both_ranks_at_a_checkpoint(stack: Stack) -> None:
    job_id = _submit(stack, LONG_SPEC)
    stack.wait_checkpoint(job_id)
    ranks = _ranks(stack, job_id)
    try:
        response = httpx.post(f"{stack.api_url}/v1/jobs/{job_id}/cancel", headers=AUTH, timeout=30)
        assert response.status_code == 200, response.text
        job = stack.wait_status(job_id, "cancelled")
    finally:
        _kill(ranks)
    assert _gone(ranks)  # ended by the cancel: the task tears the tree down before it ends the job
    assert 0 < job.step < job.total_steps
    assert max(c.step for c in stack.checkpoints(job_id)) == job.step  # rank 0 checkpointed where the group stopped
    assert statuses(stack.events(job_id)) == ["running", "cancelled"]
    assert not _worker_tree(stack)


def test_a_user_error_in_the_ranks_fails_the_job_once_with_its_code_and_no_rank_left(stack: Stack) -> None:
    """Only a rank finds it (the device is picked there): the job fails on its first attempt, not as a lost rank."""
    job_id = _submit(stack, {**SPEC, "train": {**SPEC["train"], "device": "cuda"}})
    job = stack.wait_status(job_id, "failed")
    assert job.attempts == 1  # a user error is not retried
    assert job.error is not None and job.error["code"] == "unsupported", job.error
    assert "train.device" in job.error["message"] and "Traceback" not in job.error["message"]
    assert statuses(stack.events(job_id)) == ["running", "failed"]
    assert not _worker_tree(stack)


def test_sigterm_of_the_worker_checkpoints_and_hands_the_job_back(stack: Stack) -> None:
    job_id = _submit(stack, KILL_SPEC)
    stack.wait_checkpoint(job_id)
    ranks = _ranks(stack, job_id)
    (worker,) = [p for p in stack.processes if p.pid == owner_pid(stack.job(job_id))]
    try:
        assert worker.terminate() == 0  # a warm shutdown: the ranks stop, the job goes back to the queue
        assert _gone(ranks)
        stack.start("worker-2")
        job = stack.wait_status(job_id, "succeeded")
    finally:
        _kill(ranks)
    assert job.attempts == 1  # a worker asked to stop did not fail
    events = stack.events(job_id)
    assert statuses(events) == ["running", "queued", "running", "succeeded"]
    (handback,) = [e for e in events if e.type == "status" and e.data.get("reason") == "worker_shutdown"]
    assert 0 < handback.data["step"] < job.total_steps
    assert _resumed_from(stack, job_id) == [handback.data["step"]]  # rank 0 checkpointed where the group stopped
    stack.assert_metrics_once(job_id)
