"""How many CPU threads training may use: the ``train_threads`` setting, applied to a worker process.

On a shared host a job must not take every core (``embedmix up`` leaves the
API one). Torch's pools are sized in the process and in the thread that runs
each task; native pools that read their size once, when their library loads
(OpenMP, MKL, OpenBLAS), follow :func:`thread_pool_env` in the environment a
process starts with, which is how ``embedmix up`` starts its worker. Light to
import (torch is imported only to apply a count), so the CLI can use it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("embedmix.worker")
THREAD_POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_pool_env(threads: int) -> dict[str, str]:
    """The environment variables that size native thread pools to ``threads`` (none for 0: their defaults)."""
    return {name: str(threads) for name in THREAD_POOL_VARIABLES} if threads else {}


def limit_training_threads(threads: int) -> None:
    """Size torch's pools in this process (and, through the environment, in the processes it starts).

    Inter-op threads can be set only before torch first runs parallel work,
    so a process that already did keeps its count (and says so).
    """
    if not threads:
        return
    import torch

    os.environ.update(thread_pool_env(threads))
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError as exc:
            log.warning("inter-op threads stay at %d: %s", torch.get_num_interop_threads(), exc)


def size_task_thread(threads: int, job_id: str) -> None:
    """Size torch's intra-op pool in the thread about to train (a ``threads`` pool runs tasks off the main one)."""
    import torch

    torch.set_num_threads(threads)
    log.info("job %s: training with %d CPU threads", job_id, torch.get_num_threads())
