"""Which queue a job goes to and which queues a worker takes (service.queue, worker.main.offered_devices)."""

from __future__ import annotations

import pytest

from embedmix.service.queue import TRAIN_QUEUE, job_devices, train_queue, worker_queues
from embedmix.service.settings import Settings
from embedmix.worker.main import offered_devices


def test_one_device_jobs_keep_the_queue_they_always_had() -> None:
    assert train_queue(1) == TRAIN_QUEUE == "embedmix"


def test_each_device_count_has_a_queue_of_its_own() -> None:
    assert [train_queue(n) for n in (2, 3, 8)] == ["embedmix.devices-2", "embedmix.devices-3", "embedmix.devices-8"]


def test_a_job_on_no_device_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one device"):
        train_queue(0)


def test_a_worker_takes_every_job_that_fits_it_the_largest_first() -> None:
    assert worker_queues(1) == ["embedmix"]
    assert worker_queues(4) == ["embedmix.devices-4", "embedmix.devices-3", "embedmix.devices-2", "embedmix"]


def test_the_devices_of_a_stored_spec() -> None:
    assert job_devices({"resources": {"devices": 4}}) == 4
    assert job_devices({"name": "stored before resources existed"}) == 1


def test_a_worker_offers_the_devices_it_is_given() -> None:
    assert offered_devices(Settings(worker_devices=4, max_devices_per_job=8)) == 4


def test_by_default_a_worker_offers_its_gpus_or_else_cpu_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU count is faked: this machine has none, and the rule is what is under test."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert offered_devices(Settings(max_devices_per_job=8)) == 4
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert offered_devices(Settings(max_devices_per_job=3)) == 3
