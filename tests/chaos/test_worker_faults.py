"""Workers that die, stop, or receive a message twice, and a checkpoint that rots.

Each test runs real `embedmix worker` processes (and `embedmix api` or
`embedmix reaper` where the fault is about them) on a throwaway database and a
Redis server of its own, and injects the fault for real: SIGKILL, SIGTERM, a
duplicated broker message, flipped bytes in a checkpoint file.
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors

from embedmix.store import request_cancel
from embedmix.store.models import Artifact
from tests.chaos.conftest import ADMIN_KEY, SPEC, Stack, owner_pid, statuses, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
pytestmark = pytest.mark.slow  # processes, training and waits for leases: tens of seconds each


def _resumed_from(stack: Stack, job_id: str) -> list[int]:
    """The checkpoint step each resumed attempt started from, in order."""
    return [e.data["resumed_from_step"] for e in stack.events(job_id)
            if e.type == "log" and (e.data or {}).get("resumed_from_step") is not None]


def _weights(api_url: str, job_id: str) -> dict[str, torch.Tensor]:
    response = httpx.get(f"{api_url}/v1/jobs/{job_id}/model", params={"format": "safetensors"},
                         headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return load_safetensors(response.content)


def test_kill_9_mid_training_finishes_on_another_worker_with_identical_weights(stack: Stack) -> None:
    stack.start("api", "worker-a", "worker-b")
    reference, victim = (httpx.post(f"{stack.api_url}/v1/jobs", json=SPEC, headers=AUTH, timeout=30).json()["id"]
                         for _ in range(2))

    seen = stack.wait_checkpoint(victim)
    killed = owner_pid(stack.job(victim))
    os.kill(killed, signal.SIGKILL)

    job = stack.wait_status(victim, "succeeded")
    stack.wait_status(reference, "succeeded")
    assert killed not in {p.pid for p in stack.processes if p.alive()}
    assert job.attempts == 2
    assert statuses(stack.events(victim)) == ["running", "queued", "running", "succeeded"]
    (resumed,) = _resumed_from(stack, victim)
    assert resumed >= seen[-1].step > 0
    stack.assert_metrics_once(victim)
    expected, got = _weights(stack.api_url, reference), _weights(stack.api_url, victim)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_sigterm_checkpoints_requeues_and_resumes_without_charging_an_attempt(stack: Stack) -> None:
    stack.start("worker-a", "worker-b")
    job_id = stack.submit(SPEC)
    stack.wait_checkpoint(job_id)
    (owner,) = [p for p in stack.processes if p.pid == owner_pid(stack.job(job_id))]

    assert owner.terminate() == 0  # a warm shutdown, not a crash

    job = stack.wait_status(job_id, "succeeded")  # on the other worker, which was idle
    assert job.attempts == 1
    events = stack.events(job_id)
    assert statuses(events) == ["running", "queued", "running", "succeeded"]
    (handback,) = [e for e in events if e.type == "status" and e.data.get("reason") == "worker_shutdown"]
    stopped_at = handback.data["step"]
    assert 0 < stopped_at < job.total_steps
    assert _resumed_from(stack, job_id) == [stopped_at]  # it saved a checkpoint exactly where it stopped
    stack.assert_metrics_once(job_id)


def test_same_message_delivered_twice_runs_once(stack: Stack) -> None:
    """One message three times: two copies at once to two idle workers, then the running copy
    again when its visibility timeout passes mid-run (Celery on Redis hands a long task to a
    second worker then). Every delivery after the first finds the lease held and returns.

    The job is long and is cancelled once the third delivery is seen, so the
    redelivery lands mid-run however fast the machine is.
    """
    stack.settings["broker_visibility_timeout_s"] = "2"
    workers = stack.start("worker-a", "worker-b")
    message_id = f"duplicate-{secrets.token_hex(4)}"
    job_id = stack.submit({**SPEC, "train": {**SPEC["train"], "epochs": 200}}, message_id=message_id)
    stack.send(job_id, message_id=message_id)

    def deliveries() -> int:
        return sum(w.log().count(f"[{message_id}] received") for w in workers)

    wait_for(lambda: deliveries() >= 3, 60, "the message to come back after its visibility timeout", stack.logs)
    with stack.session_factory() as session:
        assert request_cancel(session, stack.job(job_id).owner_id, job_id).status == "cancelling"
        session.commit()
    job = stack.wait_status(job_id, "cancelled")
    redis = stack.redis.client()
    wait_for(lambda: redis.llen("embedmix") == 0 and redis.hlen("unacked") == 0, 60,
             "every copy to be taken and acknowledged", stack.logs)
    assert sum(w.log().count("not claimable") for w in workers) == deliveries() - 1, stack.logs()
    assert job.attempts == 1
    assert statuses(stack.events(job_id)) == ["running", "cancelled"]
    every = max(1, job.total_steps // 1000)  # a long run logs its loss every few steps (core.train)
    assert stack.loss_steps(job_id) == list(range(every, job.step + 1, every))


def test_corrupt_newest_checkpoint_resumes_from_the_one_before(stack: Stack, tmp_path: Path) -> None:
    """Files on disk this time: flip bytes in the newest checkpoint after its worker was killed."""
    artifacts = tmp_path / "artifacts"
    stack.settings["artifacts"] = str(artifacts)
    worker, reaper = stack.start("worker-a", "reaper")
    job_id = stack.submit(SPEC)
    stack.wait_checkpoint(job_id, count=2)
    worker.kill()

    *_, previous, newest = stack.checkpoints(job_id)
    with stack.session_factory() as session:
        location = session.get(Artifact, newest.artifact_id).location
    blob = artifacts / location
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))

    stack.wait_status(job_id, "queued")  # the stand-alone reaper re-queued the dead worker's job
    # the reaper logs its verdict just after the commit the status shows, so the line may trail it
    wait_for(lambda: f"job {job_id}: lease expired; now queued" in reaper.log(), 30, "the reaper's log line", stack.logs)
    stack.worker("worker-b")
    job = stack.wait_status(job_id, "succeeded")

    assert job.attempts == 2
    warnings = [e for e in stack.events(job_id) if e.type == "warning"]
    assert len(warnings) == 1 and f"step {newest.step} does not match its sha256" in warnings[0].message
    assert _resumed_from(stack, job_id) == [previous.step]
    assert newest.id not in {c.id for c in stack.checkpoints(job_id)}
    stack.assert_metrics_once(job_id)


def test_worker_killed_on_the_last_attempt_fails_the_job(stack: Stack) -> None:
    """With ``max_attempts`` used up, the reaper fails the job instead of re-queuing it for ever."""
    worker, reaper = stack.start("worker", "reaper")
    job_id = stack.submit({**SPEC, "train": {**SPEC["train"], "max_attempts": 1}})
    stack.wait_checkpoint(job_id)
    worker.kill()

    job = stack.wait_status(job_id, "failed")
    assert job.attempts == 1 and job.lease_owner is None and job.finished_at is not None
    assert job.error["code"] == "worker_lost"
    assert statuses(stack.events(job_id)) == ["running", "failed"]
    wait_for(lambda: f"job {job_id}: lease expired; now failed" in reaper.log(), 30, "the reaper's log line", stack.logs)
    redis = stack.redis.client()
    assert redis.llen("embedmix") == 0  # no message was sent for it
