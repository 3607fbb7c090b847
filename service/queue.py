"""The train queues' contract: the task's name, which queue a job goes to, and the one function that sends its message.

The message carries the job id and nothing else; the worker reads the spec
from the database. The API, a worker handing a job back, the sweep controller
and the reaper all send it through :func:`send_train_message`, each with a
Celery app of its own (the API's is a client that never imports the worker),
so the message has one shape and one route.

Placement: a job asking for ``resources.devices: N`` goes to the queue of
N-device jobs, and a worker that offers D devices consumes the queues of 1..D,
the largest first. So a job never lands on a worker too small for it, a big
worker takes big jobs before small ones (small jobs fit anywhere; big ones only
there), and a fleet of one-device workers never sees a job it cannot run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

TRAIN_TASK = "embedmix.train"
TRAIN_QUEUE = "embedmix"  # the queue of one-device jobs, the name it had before placement
DEVICES_QUEUE_PREFIX = f"{TRAIN_QUEUE}.devices-"


class TaskSender(Protocol):
    """What sending needs from a Celery app: ``send_task`` by name."""

    def send_task(self, name: str, args: list[str] | None = None, **options: object) -> object: ...


def train_queue(devices: int) -> str:
    """The queue of jobs asking for ``devices`` devices: ``embedmix`` for one, ``embedmix.devices-N`` above."""
    if devices < 1:
        raise ValueError(f"a job runs on at least one device, got {devices}")
    return TRAIN_QUEUE if devices == 1 else f"{DEVICES_QUEUE_PREFIX}{devices}"


def worker_queues(devices: int) -> list[str]:
    """The queues a worker offering ``devices`` devices consumes, largest jobs first."""
    return [train_queue(n) for n in range(devices, 0, -1)]


def job_devices(spec: Mapping[str, Any]) -> int:
    """The devices a stored (resolved) spec asks for; a spec stored before ``resources`` existed asks for one."""
    return int(spec.get("resources", {}).get("devices", 1))


def send_train_message(sender: TaskSender, job_id: str, devices: int, **options: object) -> None:
    """Send ``embedmix.train(job_id)`` to the queue for ``devices``; ``options`` go to ``send_task`` (e.g. ``retry``)."""
    sender.send_task(TRAIN_TASK, args=[job_id], queue=train_queue(devices), **options)
