"""`embedmix up` as a process, shared by the end-to-end tests here and tests/security/test_logs.py.

:class:`Service` starts ``python -m embedmix.cli.main up`` (what the ``embedmix up`` console
script runs) on a data dir and a free port of its own, waits until it has written
its admin key and answers ``/readyz``, and stops it with the SIGINT that Ctrl-C sends.
Its output (the API's, the worker's and uvicorn's) goes to one log file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from embedmix.client import EmbedmixClient
from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
# Generous: a start or a stop fails only if it never comes, not because a loaded machine is slow.
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 40.0


def service_env(cache: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any EMBEDMIX_ setting, plus a dataset cache and ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDMIX_")}
    env["EMBEDMIX_CACHE"] = str(cache)
    env.update({f"EMBEDMIX_{name.upper()}": value for name, value in settings.items()})
    return env


class Service:
    """One `embedmix up` process with its data dir, URL, admin key and log file."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = env if env is not None else service_env(data_dir.parent / "cache")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"up-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "embedmix.cli.main", "up", "--port", str(self.port), "--data-dir", str(self.data_dir)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_for(self._ready, READY_TIMEOUT_S, "embedmix up to become ready", self.log_tail)

    def __enter__(self) -> "Service":
        """Start it; one that fails to become ready is stopped before the error goes on."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"embedmix up exited:\n{self.log_tail()}"
        if not (self.data_dir / "api-key").exists():
            return False
        try:
            return httpx.get(f"{self.url}/readyz", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"embedmix up did not stop within {STOP_TIMEOUT_S:.0f} s of Ctrl-C") from None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    @property
    def key(self) -> str:
        return (self.data_dir / "api-key").read_text().strip()

    def client(self, key: str | None = None) -> EmbedmixClient:
        return EmbedmixClient(self.url, key or self.key, timeout=30)


def wait_terminal(client: EmbedmixClient, job_id: str, timeout: float = 300) -> dict:
    """Follow the SSE stream to the end, as `embedmix submit --wait` does; return the job."""
    deadline = time.monotonic() + timeout
    events = []
    for event, _ in client.stream(job_id):
        events.append(event)
        assert time.monotonic() < deadline, f"job {job_id} did not finish within {timeout:.0f} s"
    job = client.job(job_id)
    assert events[-1] == "status" and "progress" in events
    return job
