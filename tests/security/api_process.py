"""The API as a real process (`embedmix api`) under an address-space limit, with its peak memory readable.

Tests that try to exhaust the API's memory run it this way: the limit
(RLIMIT_AS, set in the child before it execs) keeps the host safe should a
regression let a bomb through, and ``/proc/<pid>/status`` gives the peak
resident memory (VmHWM) to judge what a request cost.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from embedmix.store.db import migrate
from tests.conftest import free_port, wait_for
from tests.security.conftest import SECURITY_BROKER_URL

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "em_upload-bombs-admin-key-0123456789abcdefghijklmnop"
# The API's address space reaches about 2.5 GiB once torch, pandas and pyarrow are loaded.
ADDRESS_SPACE_BYTES = 4 * 2**30
START_TIMEOUT_S = 120.0


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))


class ApiProcess:
    """`embedmix api` on a SQLite file in ``directory``, scratch in ``directory/scratch``."""

    def __init__(self, directory: Path, **settings: str) -> None:
        self.directory = directory
        self.work_dir = directory / "scratch"
        self.work_dir.mkdir(exist_ok=True)
        self.database_url = f"sqlite:///{directory / 'api.db'}"
        self.settings = settings
        self.log_path = directory / "api.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        migrate(self.database_url)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDMIX_")}
        env.update(
            EMBEDMIX_DATABASE_URL=self.database_url,
            EMBEDMIX_REDIS_URL=SECURITY_BROKER_URL,
            EMBEDMIX_ARTIFACTS="db",
            EMBEDMIX_ADMIN_KEY=ADMIN_KEY,
            EMBEDMIX_WORK_DIR=str(self.work_dir),
            EMBEDMIX_LOG_FORMAT="text",
            **{f"EMBEDMIX_{k.upper()}": v for k, v in self.settings.items()},
        )
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "embedmix.cli.main", "api", "--port", str(port)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_limit_address_space, start_new_session=True,  # noqa: PLW1509 - setrlimit only
            )
        wait_for(self._healthy, START_TIMEOUT_S, "the API to start", self.log_tail)

    def _healthy(self) -> bool:
        assert self.alive(), f"the API exited:\n{self.log_tail()}"
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def peak_rss(self) -> int:
        """VmHWM: the most resident memory the process has held so far, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/<pid>/status")

    def upload(self, filename: str, content: bytes) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/datasets", files={"file": (filename, content)},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120,
        )

    def kill(self) -> None:
        """kill -9: no handler runs, nothing is cleaned up."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
