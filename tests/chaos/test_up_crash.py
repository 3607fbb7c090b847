"""`embedmix up` crashing, and its children crashing under it: real processes, signals sent for real.

Each test runs `embedmix up` (``python -m embedmix.cli.main up``, the console script's
module) on a data dir and a free port of its own, through the end-to-end
tests' :class:`Service`. Processes are followed with psutil by pid and start
time (a pid alone may be reused), and every wait polls for a state, never a
fixed time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import select

from embedmix.cli.supervise import RECORD_FILE, read_record
from embedmix.store.accounts import hash_key
from embedmix.store.db import make_engine, make_session_factory
from embedmix.store.models import ApiKey
from tests.chaos.conftest import JOB_TIMEOUT_S, ROOT
from tests.conftest import free_port, wait_for
from tests.e2e.conftest import Service, service_env, wait_terminal

pytestmark = pytest.mark.slow  # several `embedmix up` starts and a job each: tens of seconds

GONE_TIMEOUT_S = 60.0
RESTART_TIMEOUT_S = 90.0
JOB: dict = {
    "name": "up-crash",
    "dataset": {"name": "mnist1d", "size": 400},
    "model": {"encoder": "mlp", "width": 16, "embedding_dim": 8},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 1, "batch_size": 64, "device": "cpu"},
    "eval": {"metrics": ["precision_at_1"]},
    "export": {"formats": ["safetensors"]},
}

LONG_JOB: dict = {**JOB, "name": "up-crash-long", "dataset": {"name": "mnist1d", "size": 1500},
                  "train": {"epochs": 6, "batch_size": 32, "device": "cpu"}}

Tree = dict[int, float]  # pid -> start time


def tree(pid: int) -> Tree:
    """Every process below ``pid``, by pid and start time."""
    found = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            found[child.pid] = child.create_time()
        except psutil.NoSuchProcess:
            continue
    return found


def still_running(processes: Tree) -> list[str]:
    """Those of ``processes`` that still run (zombies count as gone: their parent is gone too)."""
    alive = []
    for pid, started in processes.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(process.cmdline())}")
        except psutil.NoSuchProcess:
            continue
    return alive


def recorded_pid(service: Service, name: str) -> int:
    return int(read_record(service.data_dir)["children"][name]["pid"])


def run_job(service: Service) -> dict:
    client = service.client()
    return wait_terminal(client, client.submit(JOB)["id"])


def start(data_dir: Path, cache: Path, port: int | None = None, **settings: str) -> Service:
    service = Service(data_dir, service_env(cache, **settings))
    if port is not None:
        service.port, service.url = port, f"http://127.0.0.1:{port}"
        service.log_path = data_dir.parent / f"up-{port}-again.log"
    service.start()
    return service


def test_kill_9_of_up_takes_its_children_and_a_restart_serves_a_job(tmp_path: Path, dataset_cache: Path) -> None:
    """`up` dies by SIGKILL mid-job; a second `up` on the same dir and port finishes that job and runs a new one.

    The lost-message pass is set to an hour, so the interrupted job can only
    come back through what `up` does on finding a crashed run.
    """
    first = start(tmp_path / "data", dataset_cache, lost_message_after_s="3600")
    assert first.proc is not None
    children = tree(first.proc.pid)
    assert {"api", "worker"} <= {arg for pid in children for arg in psutil.Process(pid).cmdline()}
    assert any("redis-server" in " ".join(psutil.Process(pid).cmdline()) for pid in children)
    client = first.client()
    interrupted = client.submit(LONG_JOB)["id"]
    wait_for(lambda: client.job(interrupted)["progress"]["step"] > 0, JOB_TIMEOUT_S, "the job to train",
             lambda: str(client.job(interrupted)))

    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    wait_for(lambda: not still_running(children), GONE_TIMEOUT_S, "the dead up's children to go",
             lambda: "\n".join(still_running(children)))

    again = start(tmp_path / "data", dataset_cache, port=first.port, lost_message_after_s="3600", train_threads="1")
    try:
        assert wait_terminal(again.client(), interrupted)["status"] == "succeeded"
        assert run_job(again)["status"] == "succeeded"
        assert still_running(children) == []  # nothing of the first run came back or stayed
        log = again.log_path.read_text()
        assert "training with 1 CPU threads" in log  # EMBEDMIX_TRAIN_THREADS=1
        assert "Traceback" not in log
    finally:
        again.stop()
    assert not (again.data_dir / RECORD_FILE).exists()  # a clean stop removes its record


def test_a_killed_worker_is_restarted_while_the_api_keeps_answering(tmp_path: Path, dataset_cache: Path) -> None:
    service = start(tmp_path / "data", dataset_cache)
    try:
        api, worker = recorded_pid(service, "API"), recorded_pid(service, "worker")
        os.kill(worker, signal.SIGKILL)  # what the kernel's OOM killer sends

        def restarted() -> bool:
            assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200  # answering throughout
            new = recorded_pid(service, "worker")
            return new != worker and psutil.pid_exists(new)

        wait_for(restarted, RESTART_TIMEOUT_S, "up to restart its worker", service.log_tail)
        assert f"the worker (pid {worker}) was killed by SIGKILL; restarting it" in service.log_path.read_text()
        assert recorded_pid(service, "API") == api  # the API was not touched
        assert service.proc is not None and service.proc.poll() is None
        job = run_job(service)
        assert job["status"] == "succeeded", job
    finally:
        service.stop()


def test_a_second_up_on_a_running_data_dir_is_refused_in_one_line(tmp_path: Path, dataset_cache: Path) -> None:
    service = start(tmp_path / "data", dataset_cache)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "embedmix.cli.main", "up", "--port", str(free_port()), "--data-dir", str(service.data_dir)],
            cwd=ROOT, env=service.env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert second.returncode == 1
        assert service.proc is not None
        expected = (
            f"error: embedmix up is already running on {service.data_dir.resolve()} (pid {service.proc.pid}, "
            f"API port {service.port}); stop it first or use another --data-dir"
        )
        assert second.stderr.strip().splitlines() == [expected]
        assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200  # the first is untouched
    finally:
        service.stop()


def test_a_port_held_by_another_program_is_refused_in_one_line(tmp_path: Path, dataset_cache: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "embedmix.cli.main", "up", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, env=service_env(dataset_cache), capture_output=True, text=True, timeout=120, check=False,
        )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: port {port} is in use by pid {os.getpid()}"), proc.stderr


def test_a_revoked_saved_admin_key_is_replaced_on_start(tmp_path: Path, dataset_cache: Path) -> None:
    first = start(tmp_path / "data", dataset_cache)
    old = first.key
    try:
        key_id = _key_id(first.data_dir, old)
        first.client().revoke_key(key_id)
    finally:
        first.stop()

    again = start(tmp_path / "data", dataset_cache)
    try:
        assert again.key != old
        log = again.log_path.read_text()
        assert f"note: the admin key saved in {again.data_dir / 'api-key'} no longer works" in log
        assert "Traceback" not in log
        assert httpx.get(f"{again.url}/v1/jobs", headers={"Authorization": f"Bearer {old}"}).status_code == 401
        assert again.client().jobs()["data"] == []  # the new key is an admin's and works
    finally:
        again.stop()


def _key_id(data_dir: Path, key: str) -> int:
    """The id of ``key`` in the data dir's database (no route lists keys; revoking goes through the API)."""
    engine = make_engine(f"sqlite:///{data_dir / 'embedmix.db'}")
    try:
        with make_session_factory(engine)() as session:
            return int(session.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))).one())
    finally:
        engine.dispose()
