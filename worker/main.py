"""Starting the service's background processes: a training worker, or the reaper alone.

One worker process per job at a time: the default pool is ``solo`` (the job
runs in the worker's main thread, which also lets a warm shutdown hand the job
back with a checkpoint). Torch sees only the devices in CUDA_VISIBLE_DEVICES, so
pinning a worker to its GPUs is done in its environment, not here. A worker
offers a job all the devices it sees (``worker_devices``) and consumes the
queues of jobs asking for that many or fewer, the largest first
(service.queue). The ``train_threads`` setting is applied here too
(worker/threads.py).
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Literal

import torch

from celery.signals import task_prerun, worker_process_init
from celery.utils.nodenames import default_nodename, host_format

from embedmix.service.jsonlog import configure_logging
from embedmix.service.queue import worker_queues
from embedmix.service.settings import Settings
from embedmix.worker.celery_app import create_app
from embedmix.worker.reaper import run_reaper
from embedmix.worker.threads import limit_training_threads, size_task_thread

Pool = Literal["solo", "threads", "prefork"]


def run_worker(
    settings: Settings,
    *,
    concurrency: int = 1,
    pool: Pool | None = None,
    loglevel: str = "INFO",
    hostname: str | None = None,
    reaper: bool = True,
) -> int:
    """Run a Celery worker on the train queue until it is stopped; returns its exit code.

    ``pool`` defaults to ``solo`` for one job at a time and ``prefork`` (one
    process per job) above that. Only ``solo`` and ``threads`` hand running
    jobs back on a warm shutdown; a ``prefork`` worker waits for its children.
    ``reaper`` runs the reaper in this process too (the default: every worker
    helps, so no extra service is needed). ``hostname`` is a Celery node name;
    ``%h`` stands for this machine's host name.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    pool = pool or ("solo" if concurrency == 1 else "prefork")
    if pool == "solo" and concurrency != 1:
        raise ValueError("the solo pool runs one job at a time; use threads or prefork for concurrency > 1")
    _apply_training_threads(settings.train_threads)
    queues = worker_queues(offered_devices(settings))  # Celery's start-up banner lists them
    app = create_app(settings)
    worker = app.Worker(
        hostname=host_format(default_nodename(hostname or "embedmix@%h")),
        pool_cls=pool,
        concurrency=concurrency,
        loglevel=loglevel,
        queues=queues,
        # Gossip, mingle and event heartbeats serve monitoring tools only, and
        # mingle alone adds seconds to every start.
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        optimization="fair",
        embedmix_reaper=reaper,
    )
    worker.start()
    return int(worker.exitcode or 0)


def offered_devices(settings: Settings) -> int:
    """The most devices this worker gives one job: ``worker_devices``, or by default every GPU it
    sees, or without one ``max_devices_per_job`` gloo ranks sharing the CPU.

    ``device_count`` reads the count without creating a CUDA context in this
    process (the ranks are the only processes that use the devices).
    """
    if settings.worker_devices:
        return settings.worker_devices
    gpus = torch.cuda.device_count()
    return gpus if gpus else settings.max_devices_per_job


def _apply_training_threads(threads: int) -> None:
    """``train_threads`` in this process, in each prefork child, and in the thread that runs each task."""
    if not threads:
        return
    limit_training_threads(threads)

    def child_started(**_: Any) -> None:
        limit_training_threads(threads)

    def task_starting(args: Any = None, **_: Any) -> None:
        size_task_thread(threads, str((args or ["?"])[0]))

    worker_process_init.connect(child_started, weak=False, dispatch_uid="embedmix-train-threads-child")
    task_prerun.connect(task_starting, weak=False, dispatch_uid="embedmix-train-threads")


def serve_reaper(settings: Settings, loglevel: str = "INFO") -> None:
    """Run the reaper alone until SIGTERM or SIGINT (for deployments that want it as its own service).

    Logging is set up here because, unlike a Celery worker, nothing else does:
    without it the reaper's warnings (which jobs it re-queued or failed) are lost.
    """
    configure_logging("reaper", loglevel, settings.log_format)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_reaper(settings, stop, create_app(settings))
