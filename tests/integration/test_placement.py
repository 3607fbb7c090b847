"""Placement across real `embedmix worker` processes: a job waits for a worker with enough devices, and a
worker with more takes its largest waiting job first (service.queue, worker.main)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from embedmix.service.queue import train_queue
from tests.chaos.conftest import Stack
from tests.conftest import PostgresServer, RedisServer
from tests.integration.test_worker_ranks import SPEC as TWO_DEVICE_SPEC

pytestmark = pytest.mark.slow  # two worker processes and a 2-rank run: a minute in all
ONE_DEVICE_SPEC: dict[str, Any] = {**TWO_DEVICE_SPEC, "name": "one-device", "resources": {"devices": 1}}


@pytest.fixture
def stack(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A throwaway database and Redis server, with no process started yet."""
    directory = tmp_path_factory.mktemp("placement")
    server = RedisServer(directory)
    server.start()
    url = postgres_server.create_database("placement")
    from embedmix.store.db import migrate

    migrate(url)
    stack = Stack(url, server, directory, tmp_path_factory.mktemp("dataset-cache"), max_devices_per_job="2")
    try:
        yield stack
    finally:
        stack.close()
        server.kill()
        postgres_server.drop_database(url)


def _waiting(stack: Stack, devices: int) -> int:
    client = redis.Redis.from_url(stack.redis.url)
    try:
        return int(client.llen(train_queue(devices)))
    finally:
        client.close()


def _banner_queues(log: str) -> list[str]:
    """The queues Celery's start-up banner lists (``.> NAME exchange=...`` lines); it sorts them by name."""
    return sorted(re.findall(r"^\s+\.> (\S+)\s+exchange=", log, re.MULTILINE))


def test_a_job_waits_for_a_worker_with_its_devices_which_takes_it_before_smaller_ones(stack: Stack) -> None:
    small_worker = stack.worker("worker-1", "--devices", "1")
    big = stack.submit(TWO_DEVICE_SPEC)  # first in line, but too big for the worker that is up
    small = stack.submit(ONE_DEVICE_SPEC)

    stack.wait_status(small, "succeeded")
    job = stack.job(big)
    assert (job.status, job.started_at, job.lease_owner) == ("queued", None, None)
    assert _waiting(stack, 2) == 1
    assert _banner_queues(small_worker.log()) == ["embedmix"]
    assert small_worker.terminate() == 0

    later_small = stack.submit(ONE_DEVICE_SPEC)  # waiting beside the big jobs when the big worker starts
    later_big = stack.submit(TWO_DEVICE_SPEC)
    big_worker = stack.worker("worker-2", "--devices", "2")
    assert _banner_queues(big_worker.log()) == ["embedmix", "embedmix.devices-2"]
    started = {job_id: stack.wait_status(job_id, "succeeded").started_at for job_id in (big, later_small, later_big)}

    # Both big jobs before the small one: the big worker polls its queues largest first every
    # time (kombu's round robin would have taken the small job second).
    assert sorted(started, key=lambda job_id: started[job_id]) == [big, later_big, later_small]
    assert (_waiting(stack, 1), _waiting(stack, 2)) == (0, 0)
