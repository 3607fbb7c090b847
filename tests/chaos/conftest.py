"""Fault injection with real processes: throwaway servers, `embedmix worker|api|reaper` subprocesses.

Every test that stops, kills or corrupts something owns it: a Redis server of
its own on a free port (``--save '' --appendonly no``, so a restart loses
everything, as a crashed cache would), a throwaway PostgreSQL database on the
shared server, or, for the test that stops PostgreSQL, a whole PostgreSQL
cluster made with ``initdb`` in a temporary directory. The service processes
are started exactly as an operator starts them (``python -m embedmix.cli.main worker``
is the ``embedmix worker`` console script) with short lease and reaper
intervals, and signals are sent for real. Kills are timed by polling the
database for a condition (a checkpoint exists), never by sleeping.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from embedmix.store import (
    create_job,
    create_owner,
    get_job_unscoped,
    list_checkpoints,
    list_events,
)
from embedmix.store.db import make_engine, make_session_factory, migrate
from embedmix.store.models import Checkpoint, Event, Job, Metric
from embedmix.service.queue import job_devices, send_train_message
from tests.conftest import PostgresServer, RedisServer, free_port, unavailable, wait_for

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "em_chaos-admin-key-0123456789abcdefghijklmnopqrstuv"
START_TIMEOUT_S = 90.0
JOB_TIMEOUT_S = 150.0
# Short enough that a dead worker's job moves on within seconds, long enough
# for a heartbeat (every ttl/3) to land on a loaded two-core machine.
LEASE_TTL_S = 2.0
REAPER_INTERVAL_S = 0.5

# Small and CPU-only, but long enough (several seconds) that a kill polled for
# after the first checkpoint lands well before the end. One checkpoint per epoch.
SPEC: dict[str, Any] = {
    "name": "chaos",
    "dataset": {"name": "mnist1d", "size": 1500},
    "model": {"encoder": "mlp", "width": 32, "embedding_dim": 8},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 6, "batch_size": 32, "seed": 3, "device": "cpu"},
    "eval": {"metrics": ["precision_at_1"]},
    "export": {"formats": ["safetensors"]},
}

# -- throwaway servers -------------------------------------------------------------------------


class LocalPostgres:
    """A PostgreSQL cluster of one test's own (initdb in a temporary directory), to stop and start at will.

    PostgreSQL refuses to run as root, so when the tests run as root the
    server runs as the ``postgres`` user through ``runuser``; its directory
    is made outside pytest's (root-only) temporary tree and owned by that user.
    """

    def __init__(self, bin_dir: Path, directory: Path, run_as: list[str]) -> None:
        self.bin_dir, self.directory, self.run_as = bin_dir, directory, run_as
        self.port = free_port()
        self.data = directory / "data"
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [*self.run_as, str(self.bin_dir / tool), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise AssertionError(f"{tool} failed: {result.stdout}\n{result.stderr}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, in-flight transactions roll back."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def log(self) -> str:
        path = self.directory / "log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _postgres_bin() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _run_as_postgres() -> list[str] | None:
    """How to run PostgreSQL's tools: as ourselves unless we are root, then as the postgres user."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return [runuser, "-u", "postgres", "--"] if runuser else None


@pytest.fixture
def local_postgres() -> Iterator[LocalPostgres]:
    """A started PostgreSQL cluster this test may stop; skipped (in CI: failed), saying why, only without the tools."""
    bin_dir, run_as = _postgres_bin(), _run_as_postgres()
    if bin_dir is None:
        unavailable("initdb/pg_ctl not found (PostgreSQL server binaries are not installed)")
    if run_as is None:
        unavailable("running as root without a 'postgres' user or runuser: PostgreSQL refuses to run as root")
    directory = Path(tempfile.mkdtemp(prefix="embedmix-chaos-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    server = LocalPostgres(bin_dir, directory, run_as)
    server.init()
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        except AssertionError:
            pass  # already stopped by the test
        shutil.rmtree(directory, ignore_errors=True)


# -- the service's processes -------------------------------------------------------------------


class ServiceProcess:
    """One `embedmix <command>` process with its log file."""

    def __init__(
        self, name: str, process: subprocess.Popen[bytes], log_path: Path, ready: Callable[[ServiceProcess], bool]
    ) -> None:
        self.name, self.process, self.log_path, self.ready = name, process, log_path, ready

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """kill -9: no handler runs, nothing is flushed or handed back."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit code (SIGKILL if it does not come in ``timeout``)."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"{self.name} did not exit within {timeout}s of SIGTERM") from None
        return self.process.returncode


class Stack:
    """A database and a Redis server plus the `embedmix` processes a test starts on them."""

    def __init__(
        self, database_url: str, redis_server: RedisServer, directory: Path, cache: Path, **settings: str
    ) -> None:
        self.database_url = database_url
        self.cache = cache
        self.redis = redis_server
        self.directory = directory
        self.settings = settings
        self.processes: list[ServiceProcess] = []
        self.engine = make_engine(database_url)
        self.session_factory: sessionmaker[Session] = make_session_factory(self.engine)
        self.api_url: str | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDMIX_")}
        env.update(
            EMBEDMIX_DATABASE_URL=self.database_url,
            EMBEDMIX_REDIS_URL=self.redis.url,
            EMBEDMIX_ARTIFACTS="db",
            EMBEDMIX_ADMIN_KEY=ADMIN_KEY,
            EMBEDMIX_LEASE_TTL_S=str(LEASE_TTL_S),
            EMBEDMIX_REAPER_INTERVAL_S=str(REAPER_INTERVAL_S),
            EMBEDMIX_METRICS_FLUSH_S="0.2",
            EMBEDMIX_CANCEL_POLL_S="0.2",
            EMBEDMIX_CHECKPOINT_MIN_INTERVAL_S="0",
            EMBEDMIX_CACHE=str(self.cache),
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        env.update({f"EMBEDMIX_{k.upper()}": v for k, v in self.settings.items()})
        return env

    def _spawn(self, name: str, args: list[str], ready: Callable[[ServiceProcess], bool]) -> ServiceProcess:
        log_path = self.directory / f"{name}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "embedmix.cli.main", *args], cwd=ROOT, env=self.env(),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        service = ServiceProcess(name, process, log_path, ready)
        self.processes.append(service)
        return service

    def start(self, *names: str) -> list[ServiceProcess]:
        """Start `embedmix worker` (``worker*``), `reaper` and `api` processes together, then wait for each.

        Starting them at once lets their imports overlap; a worker is ready
        when Celery says so (it consumes the queue from then on), the API
        when ``/healthz`` answers (at ``self.api_url``).
        """
        started = []
        for name in names:
            if name.startswith("worker"):
                started.append(self._spawn_worker(name))
            elif name == "reaper":
                started.append(self._spawn(name, ["reaper"], lambda s: "reaper running" in s.log()))
            elif name == "api":
                port = free_port()
                url = self.api_url = f"http://127.0.0.1:{port}"
                started.append(self._spawn(name, ["api", "--port", str(port)], lambda _, u=url: _healthy(f"{u}/healthz")))
            else:
                raise ValueError(f"no such process kind: {name}")
        for service in started:
            self._wait_started(service)
        return started

    def _spawn_worker(self, name: str, *args: str) -> ServiceProcess:
        return self._spawn(name, ["worker", *args], lambda s: " ready." in s.log())

    def worker(self, name: str = "worker", *args: str) -> ServiceProcess:
        """Start one `embedmix worker` with extra command-line ``args`` (e.g. ``--devices 1``) and wait for it."""
        worker = self._spawn_worker(name, *args)
        self._wait_started(worker)
        return worker

    def _wait_started(self, service: ServiceProcess) -> None:
        def up() -> bool:
            assert service.alive(), f"{service.name} exited:\n{service.log()[-4000:]}"
            return service.ready(service)

        wait_for(up, START_TIMEOUT_S, f"{service.name} to start", lambda: service.log()[-4000:])

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid}) ---\n{p.log()[-3000:]}" for p in self.processes)

    # -- jobs, through the store (as the API writes them) and the broker -------------------
    def submit(self, spec: dict[str, Any], *, message_id: str | None = None) -> str:
        """Queue a job for a new owner and send its message as the API does."""
        with self.session_factory() as session:
            owner = create_owner(session, "chaos")
            job, _ = create_job(session, owner.id, spec, name=spec["name"],
                                max_attempts=spec["train"].get("max_attempts", 3))
            session.commit()
        self.send(job.id, message_id=message_id, devices=job_devices(spec))
        return job.id

    def send(self, job_id: str, *, message_id: str | None = None, devices: int = 1) -> None:
        """One message for the job, sent by task name like the API's client (optionally with a fixed id)."""
        client = Celery("chaos-sender", broker=self.redis.url, set_as_current=False)
        try:
            options = {"task_id": message_id} if message_id else {}
            send_train_message(client, job_id, devices, **options)
        finally:
            client.close()

    def job(self, job_id: str) -> Job:
        with self.session_factory() as session:
            job = get_job_unscoped(session, job_id)
            assert job is not None
            return job

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        with self.session_factory() as session:
            return list_checkpoints(session, job_id)

    def events(self, job_id: str) -> list[Event]:
        with self.session_factory() as session:
            return list_events(session, job_id, limit=1000)

    def loss_steps(self, job_id: str) -> list[int]:
        with self.session_factory() as session:
            query = select(Metric.step).where(Metric.job_id == job_id, Metric.name == "train/loss").order_by(Metric.step)
            return list(session.scalars(query))

    def assert_metrics_once(self, job_id: str) -> None:
        """Every training step has exactly one loss point, whatever was replayed after a resume."""
        assert self.loss_steps(job_id) == list(range(1, self.job(job_id).total_steps + 1))

    def wait_status(self, job_id: str, status: str, timeout: float = JOB_TIMEOUT_S) -> Job:
        def reached() -> Job | None:
            job = self.job(job_id)
            assert job.status not in {"failed", "cancelled"} - {status}, f"job {job.status}: {job.error}"
            return job if job.status == status else None

        return wait_for(reached, timeout, f"job {job_id} to become {status}", self.logs)

    def wait_checkpoint(self, job_id: str, count: int = 1) -> list[Checkpoint]:
        """Until the job has ``count`` checkpoints and is still running (the moment to inject a fault)."""
        def ready() -> list[Checkpoint] | None:
            job = self.job(job_id)
            assert job.status in {"queued", "running"}, f"job is already {job.status}; the fault came too late"
            checkpoints = self.checkpoints(job_id)
            return checkpoints if len(checkpoints) >= count else None

        return wait_for(ready, JOB_TIMEOUT_S, f"{count} checkpoint(s) of {job_id}", self.logs)

    def close(self) -> None:
        for process in self.processes:
            if process.alive():
                os.killpg(process.pid, signal.SIGKILL)
                process.process.wait()
        self.engine.dispose()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def statuses(events: list[Event]) -> list[str]:
    return [e.data["status"] for e in events if e.type == "status"]


def owner_pid(job: Job) -> int:
    """The worker process holding the job's lease: tokens are ``host:pid:random``."""
    assert job.lease_owner, f"job {job.id} is not leased"
    return int(job.lease_owner.split(":")[-2])


@pytest.fixture
def shared_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A migrated throwaway database on the shared PostgreSQL server (for tests that do not stop it)."""
    url = postgres_server.create_database("chaos")
    migrate(url)
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(scope="session")
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One built-in dataset cache for every chaos test: mnist1d is generated once, not once per worker."""
    return tmp_path_factory.mktemp("dataset-cache")


@pytest.fixture
def stack(shared_database: str, redis_server: RedisServer, tmp_path: Path, dataset_cache: Path) -> Iterator[Stack]:
    """A throwaway database and Redis server; the test starts the processes it needs."""
    stack = Stack(shared_database, redis_server, tmp_path, dataset_cache)
    yield stack
    stack.close()
