"""The train queue's contract: the task's name, its queue, and the one function that sends its message.

The message carries the job id and nothing else; the worker reads the spec
from the database. The API, a worker handing a job back and the reaper all send
it through :func:`send_train_message`, each with a Celery app of its own (the
API's is a client that never imports the worker), so the message has one shape.
"""

from __future__ import annotations

from typing import Protocol

TRAIN_TASK = "embedmix.train"
TRAIN_QUEUE = "embedmix"


class TaskSender(Protocol):
    """What sending needs from a Celery app: ``send_task`` by name."""

    def send_task(self, name: str, args: list[str] | None = None, **options: object) -> object: ...


def send_train_message(sender: TaskSender, job_id: str, **options: object) -> None:
    """Send ``embedmix.train(job_id)`` to the train queue; ``options`` go to ``send_task`` (e.g. ``retry``)."""
    sender.send_task(TRAIN_TASK, args=[job_id], queue=TRAIN_QUEUE, **options)
