"""A job's N ranks, started by torch's own launcher (torch.distributed.run) as one child process group.

The launcher runs with a standalone rendezvous on this host and starts N copies of
a Python module; each joins the group it describes in the environment
(`join_group`: gloo on the CPU, nccl on CUDA). The launcher is the leader of a
session of its own, so stopping the caller stops every rank with it and no rank is
left running. Only rank 0's output reaches the console.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from functools import partial
from typing import NoReturn

import torch
import torch.distributed as dist

from embedmix.core.distributed import Ranks, current_ranks

# What torchrun sets in the environment of each rank it starts.
LAUNCHED_ENV = "TORCHELASTIC_RUN_ID"
# How long the ranks get to stop on SIGTERM before they are killed.
STOP_GRACE_S = 10.0
PR_SET_PDEATHSIG = 1
# Loaded at import, not in a fork's preexec_fn (where loading a library is unsafe).
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(parent: int, signum: int = signal.SIGKILL) -> None:
    """Have the kernel send `signum` to this process when its parent (pid `parent`) dies, even by SIGKILL (Linux).

    Usable as a preexec_fn and in a child itself; if the parent is already gone
    the signal would never come, so the process leaves at once.
    """
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def in_launched_rank() -> bool:
    """Whether this process is one of the ranks torch.distributed.run started."""
    return LAUNCHED_ENV in os.environ


def launched_rank() -> int:
    """This process's rank as the launcher numbered it (0 when it was not launched): known before the group is joined."""
    return int(os.environ.get("RANK", "0")) if in_launched_rank() else 0


def rank_command(world_size: int, module: str, args: list[str]) -> list[str]:
    """The launcher's argv for `python -m module *args` on `world_size` ranks (an argv list: no shell)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
            "--local-ranks-filter=0", "-m", module, *args]


def run_ranks(command: list[str]) -> int:
    """Run the launcher as a session of its own and return its exit status (call from the main thread).

    Whatever ends the wait (Ctrl-C, SIGTERM, an error) stops the whole session:
    SIGTERM, then SIGKILL after STOP_GRACE_S. SIGTERM is turned into an exception
    meanwhile, since its default action would exit without stopping the ranks.
    """
    # The preexec_fn only calls prctl, through a library loaded before the fork (_LIBC).
    proc = subprocess.Popen(command, start_new_session=True,
                            preexec_fn=partial(die_with_parent, os.getpid()))  # noqa: PLW1509
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            _stop_session(proc)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop_session(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def join_group(device: torch.device) -> Ranks:
    """In a launched rank: join its process group (nccl on CUDA, each rank on its own GPU; gloo otherwise).

    From here on the rank dies with its launcher, however the launcher ends.
    """
    if not in_launched_rank():
        return Ranks()
    die_with_parent(os.getppid())  # torch starts each rank in a session of its own: no rank outlives its launcher
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return current_ranks()


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_rank(code: int = 0) -> NoReturn:
    """End a launched rank that has done its work, without the interpreter's teardown.

    At exit, C++ static destructors can find a gloo group's threads still
    joinable and abort the rank ("terminate called without an active exception",
    SIGABRT, with no Python frame left), which its launcher reports as a crashed
    rank, and which then stops the other ranks mid-export. Nothing is left to do
    once a rank's files are written, so it flushes its output and leaves at once.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
