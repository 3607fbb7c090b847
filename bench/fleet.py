"""A fleet of simulated workers against one PostgreSQL, one Redis and one API: which shared part gives out first.

First a real job runs through the worker's own code (``worker.train_task.run_job``
with its ``StoreCallbacks``, lease and checkpoint writer) and every statement it
sends is counted by kind, giving the steady-state load of one running job:
metric rows/s, event rows/s, heartbeats/s, progress flushes/s, cancel-flag reads/s,
checkpoint bytes, and the connections one worker process opens.

Then N simulated workers (no training) do what that job did, at those rates,
through the same functions: ``Lease.claim`` and ``Lease.renew`` (the heartbeat),
``StoreCallbacks.flush`` (metric points, progress and latest eval in one
transaction), ``store.get_job_status`` (the cancel poll), ``worker.events.record``,
``worker.checkpoints.save_checkpoint`` into the default artifact store (chunks in
the database) and ``worker.reaper.reap_once`` (every worker runs a reaper, which
sends through the real broker). Beside them M pollers ``GET /v1/jobs/{id}`` and S
clients hold ``GET /v1/jobs/{id}/stream`` open on ``embedmix api`` (one process).

The simulated workers' operations run on a pool of threads sharing one connection
pool, as a fleet behind a transaction-pooling PgBouncer would reach PostgreSQL; the
connections a fleet without a pooler would hold (N x the measured connections of one
worker) are printed beside PostgreSQL's ``max_connections``. An operation's latency
is from the moment its worker wanted it (its schedule) until it committed, so a
saturated database shows up as latency even when the wait is in the pool's queue.

N is stepped up (``--steps``), each step for ``--seconds``, until a target breaks:
lease renewal p99 above a third of the lease, or poll p99 above 1 s. Everything is
throwaway and loopback: a PostgreSQL cluster made with initdb in a temporary
directory, a redis-server on a free port, the API on a free port; the machine's own
PostgreSQL and Redis are not touched.

    .venv/bin/python bench/fleet.py                      # 10, 100, 300, 1000 workers, 30 s each
    .venv/bin/python bench/fleet.py --tiny               # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import heapq
import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from embedmix.core.loop import Progress
from embedmix.service.settings import Settings
from embedmix.store.accounts import ensure_admin_key
from embedmix.store.artifacts import DatabaseArtifacts
from embedmix.store.db import make_engine, make_session_factory, migrate
from embedmix.store.events import add_events
from embedmix.store.jobs import create_job, get_job_status, transition
from embedmix.store.models import Checkpoint
from embedmix.worker.callbacks import StoreCallbacks
from embedmix.worker.celery_app import create_app
from embedmix.worker.checkpoints import save_checkpoint
from embedmix.worker.context import WorkerContext
from embedmix.worker.events import log_event, record, status_event
from embedmix.worker.lease import Lease
from embedmix.worker.reaper import reap_once
from embedmix.worker.train_task import run_job

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "em_fleet_" + "k" * 32
# The contract's example job (DESIGN.md), shortened: it trains for about half a minute on one CPU thread.
REAL_JOB_SPEC: dict[str, Any] = {
    "name": "fleet-rates",
    "dataset": {"name": "mnist1d", "split": {"kind": "random", "test_fraction": 0.2}},
    "model": {"encoder": "conv1d", "embedding_dim": 64},
    "objective": {"loss": "multi_similarity"},
    "mixup": {"method": "metrix", "alpha": 2.0, "level": "feature", "weight": 0.4},
    "train": {"epochs": 12, "batch_size": 256, "lr": 0.001, "seed": 0, "device": "cpu"},
    "eval": {"metrics": ["precision_at_1", "map_at_r"]},
    "export": {"formats": ["safetensors"]},
}
TINY_JOB_SPEC: dict[str, Any] = {
    **{k: v for k, v in REAL_JOB_SPEC.items() if k != "mixup"},
    "dataset": {"name": "mnist1d", "size": 400},
    "model": {"encoder": "mlp", "width": 16, "embedding_dim": 8},
    "train": {**REAL_JOB_SPEC["train"], "epochs": 300, "batch_size": 32},
    "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
}
POLL_P99_TARGET_S = 1.0
DRAIN_S = 10.0  # after a step, operations still running get this long before they count as unfinished


# -- small helpers (tested in tests/unit/test_fleet.py) ----------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n q), at least the first
    return ordered[int(rank) - 1]


@dataclass
class Tally:
    """Statements a job sent, by kind, with when: the source of the per-job rates."""

    times: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, at: float, amount: int = 1) -> None:
        self.times[kind].append((at, amount))

    def rate(self, kind: str, start: float, end: float) -> float:
        """Amount of ``kind`` per second within [start, end]."""
        if end <= start:
            return 0.0
        return sum(n for t, n in self.times.get(kind, []) if start <= t <= end) / (end - start)

    def window(self, kind: str) -> tuple[float, float]:
        """First and last time ``kind`` was seen (the steady state lies between two progress writes)."""
        seen = [t for t, _ in self.times.get(kind, [])]
        return (min(seen), max(seen)) if seen else (0.0, 0.0)


# Statement kinds by how their SQL starts; the order matters (first match wins).
KINDS = (
    ("metric_rows", "INSERT INTO metrics"),
    ("event_rows", "INSERT INTO events"),
    ("chunk_rows", "INSERT INTO artifact_chunks"),
    ("heartbeats", "UPDATE jobs SET lease_expires_at"),
    ("progress", "UPDATE jobs SET step"),
    ("status_reads", "SELECT jobs.status"),
)


def classify(statement: str, parameters: Any, executemany: bool) -> tuple[str, int] | None:
    """The kind of one statement and the rows it writes or reads; None for other statements."""
    for kind, prefix in KINDS:
        if statement.lstrip().startswith(prefix):
            return kind, len(parameters) if executemany else 1
    return None


@dataclass(frozen=True)
class JobRates:
    """One running job's steady-state load on the store, as measured."""

    seconds: float
    steps_per_s: float
    metric_rows_per_s: float
    event_rows_per_s: float
    heartbeats_per_s: float
    flushes_per_s: float
    status_reads_per_s: float
    checkpoint_bytes: int
    checkpoints_per_s: float
    connections: int
    statements_per_s: float

    def lines(self) -> list[str]:
        return [
            f"training window {self.seconds:.1f} s, {self.steps_per_s:.1f} steps/s",
            f"metric rows/s {self.metric_rows_per_s:.2f}   event rows/s {self.event_rows_per_s:.3f}",
            (f"heartbeats/s {self.heartbeats_per_s:.3f}   progress flushes/s {self.flushes_per_s:.2f}   "
             f"cancel-flag reads/s {self.status_reads_per_s:.2f}"),
            (f"checkpoint {self.checkpoint_bytes / 1e6:.2f} MB, {self.checkpoints_per_s:.4f}/s "
             f"({self.checkpoint_bytes * self.checkpoints_per_s / 1e3:.1f} kB/s)"),
            f"statements/s {self.statements_per_s:.2f}   connections one worker process opened {self.connections}",
        ]


# -- throwaway servers --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found is None:
        raise SystemExit("initdb not found: PostgreSQL's server binaries are needed")
    return Path(found).parent


class Postgres:
    """A cluster of our own (tests/chaos/conftest.py's LocalPostgres approach): as the postgres user when root."""

    def __init__(self, max_connections: int) -> None:
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.bin = _postgres_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="embedmix-fleet-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.max_connections = max_connections
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   f"-c max_connections={max_connections}")
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.run_as, str(self.bin / tool), *args], check=True, capture_output=True, timeout=120)

    def processes(self) -> list[psutil.Process]:
        """The postmaster and every backend it has now."""
        pid = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def close(self) -> None:
        subprocess.run([*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


class CpuMeter:
    """CPU seconds used by a changing set of processes (backends come and go): summed per pid, last reading kept."""

    def __init__(self, processes: Callable[[], list[psutil.Process]]) -> None:
        self.processes = processes
        self.seen: dict[int, float] = {}
        self.start = self._read()

    def _read(self) -> float:
        for process in self.processes():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            self.seen[process.pid] = times.user + times.system
        return sum(self.seen.values())

    def used(self) -> float:
        return self._read() - self.start


def start_process(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # not up yet
            if predicate():
                return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not come up in {timeout:.0f} s")


# -- the real job -------------------------------------------------------------------------------


def counting_engine(url: str, tally: Tally, connects: list[int]) -> Engine:
    """The service's engine for ``url``, with every statement classified into ``tally``."""
    engine = make_engine(url)

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        tally.add("statements", time.monotonic())
        found = classify(statement, parameters, executemany)
        if found is not None:
            tally.add(found[0], time.monotonic(), found[1])

    @event.listens_for(engine, "connect")
    def _connected(dbapi_connection: Any, record: Any) -> None:
        connects.append(1)

    return engine


def measure_real_job(settings: Settings, owner_id: int, spec: dict[str, Any]) -> JobRates:
    """Run one job through the worker's code on the throwaway database and read its load off the statements."""
    import torch

    torch.set_num_threads(1)  # the machine is shared; the rates per step do not depend on the thread count
    tally, connects = Tally(), []
    engine = counting_engine(settings.database_url, tally, connects)
    session_factory = make_session_factory(engine)
    context = WorkerContext(settings, session_factory, DatabaseArtifacts())
    with session_factory() as session:
        job, _ = create_job(session, owner_id, spec, name=spec["name"])
        session.commit()
        job_id = job.id
    status = run_job(job_id, context)
    if status != "succeeded":
        raise SystemExit(f"the real job ended {status}")
    start, end = tally.window("progress")
    with session_factory() as session:
        sizes = list(session.scalars(select(Checkpoint.bytes).where(Checkpoint.job_id == job_id)))
        steps = session.scalar(text("SELECT step FROM jobs WHERE id = :id"), {"id": job_id})
    engine.dispose()
    interval = settings.checkpoint_min_interval_s
    seconds = end - start
    epoch_s = seconds / spec["train"]["epochs"]
    return JobRates(
        seconds=seconds,
        steps_per_s=steps / seconds,
        metric_rows_per_s=tally.rate("metric_rows", start, end),
        event_rows_per_s=tally.rate("event_rows", start, end),
        heartbeats_per_s=tally.rate("heartbeats", start, end),
        flushes_per_s=tally.rate("progress", start, end),
        status_reads_per_s=tally.rate("status_reads", start, end),
        checkpoint_bytes=max(sizes) if sizes else 0,
        # a per-epoch checkpoint, but at most one every checkpoint_min_interval_s (the setting's purpose)
        checkpoints_per_s=1.0 / max(interval, epoch_s),
        connections=len(connects),
        statements_per_s=tally.rate("statements", start, end),
    )


# -- the simulated fleet ------------------------------------------------------------------------


@dataclass
class SimWorker:
    """One simulated worker: a real claimed lease and real callbacks on a job that trains nothing."""

    job_id: str
    lease: Lease
    callbacks: StoreCallbacks
    step: int = 0
    owed_points: float = 0.0
    events: int = 0


@dataclass
class Sample:
    kind: str
    latency_s: float
    ok: bool


@dataclass
class Fleet:
    settings: Settings
    session_factory: sessionmaker[Session]
    owner_id: int
    rates: JobRates
    checkpoint: bytes
    celery_app: Any
    workers: list[SimWorker] = field(default_factory=list)

    def grow(self, count: int) -> None:
        """Add workers until there are ``count``: each job created, claimed and made running as the worker does."""
        context = WorkerContext(self.settings, self.session_factory, DatabaseArtifacts())
        while len(self.workers) < count:
            with self.session_factory() as session:
                job, _ = create_job(session, self.owner_id, REAL_JOB_SPEC, name="sim")
                session.commit()
            lease = Lease.claim(self.session_factory, job.id, self.settings.lease_ttl_s)
            assert lease is not None
            with self.session_factory() as session:
                transition(session, job.id, ["queued"], "running")
                add_events(session, job.id, [status_event(job.id, "running", "running", key=lease.run_key)])
                session.commit()
            # a clock that never moves: the callbacks flush and poll only when this script says
            callbacks = StoreCallbacks(context, lease, clock=lambda: 0.0)
            self.workers.append(SimWorker(job.id, lease, callbacks))
        # the step before ended with a pause (drain, growing): renew every lease so none lapsed meanwhile
        for worker in self.workers:
            self.operation("heartbeat", worker, 0.0)

    def close(self) -> None:
        for worker in self.workers:
            worker.callbacks.__exit__(None, None, None)

    def periods(self) -> dict[str, float]:
        """Each operation's period for one worker, from the measured rates and the settings."""
        s, r = self.settings, self.rates
        periods = {
            "heartbeat": s.lease_ttl_s / 3,
            "flush": 1.0 / r.flushes_per_s if r.flushes_per_s > 0 else s.metrics_flush_s,
            "cancel_poll": 1.0 / r.status_reads_per_s if r.status_reads_per_s > 0 else s.cancel_poll_s,
            "checkpoint": 1.0 / r.checkpoints_per_s,
            "reaper": s.reaper_interval_s,
        }
        if r.event_rows_per_s > 0:
            periods["event"] = 1.0 / r.event_rows_per_s
        return periods

    def operation(self, kind: str, worker: SimWorker, period: float) -> bool:
        """Do one operation of ``worker`` through the service's code; False if it was refused."""
        sf = self.session_factory
        if kind == "heartbeat":  # Lease._beat's body
            with sf() as session:
                renewed = worker.lease.renew(session)
                session.commit()
            return renewed
        if kind == "flush":
            self._train(worker, period)
            return worker.callbacks.flush()
        if kind == "cancel_poll":  # StoreCallbacks._cancelled's read
            with sf() as session:
                return get_job_status(session, worker.job_id) == "running"
        if kind == "checkpoint":
            save_checkpoint(sf, worker.callbacks.context.artifacts, worker.job_id, self.checkpoint,
                            step=worker.step, epoch=0)
            return True
        if kind == "event":
            worker.events += 1
            record(sf, worker.job_id, log_event(worker.job_id, worker.lease.run_key, f"sim-{worker.events}", "sim"))
            return True
        if kind == "reaper":
            reap_once(sf, self.celery_app, lost_after_s=self.settings.lost_message_after_s)
            return True
        raise ValueError(kind)

    def _train(self, worker: SimWorker, period: float) -> None:
        """What the loop hands the callbacks between two flushes: progress and the measured share of metric points."""
        worker.step += max(1, round(self.rates.steps_per_s * period))
        worker.callbacks.on_progress(Progress(worker.step, 10**9, 0, 1, 0.5, 1e-3, 0.0, 0.0, 0.0))
        worker.owed_points += self.rates.metric_rows_per_s * period
        for i in range(int(worker.owed_points)):
            worker.callbacks.on_metrics(worker.step - i, 0, {"train/loss": 0.5})
        worker.owed_points -= int(worker.owed_points)


def drive(fleet: Fleet, seconds: float, threads: int) -> tuple[list[Sample], float]:
    """Run every worker's operations on schedule for ``seconds``; samples, and the seconds the pool lagged at worst."""
    periods = fleet.periods()
    start = time.monotonic()
    heap: list[tuple[float, int, str, int]] = []
    seq = itertools.count()
    for index in range(len(fleet.workers)):
        for kind, period in periods.items():
            heapq.heappush(heap, (start + random.uniform(0, period), next(seq), kind, index))
    samples: list[Sample] = []
    pending: list[tuple[str, float, Any]] = []
    max_lag = 0.0

    def run(kind: str, worker: SimWorker, due: float) -> None:
        nonlocal max_lag
        max_lag = max(max_lag, time.monotonic() - due)
        try:
            ok = fleet.operation(kind, worker, periods[kind])
        except Exception as exc:  # noqa: BLE001 - a refused operation is a result, not a crash
            print(f"  {kind} failed: {type(exc).__name__}: {str(exc)[:120]}", file=sys.stderr)
            ok = False
        samples.append(Sample(kind, time.monotonic() - due, ok))

    end = start + seconds
    executor = ThreadPoolExecutor(max_workers=threads)
    while heap and heap[0][0] < end:
        due, _, kind, index = heap[0]
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 0.05))
            continue
        heapq.heappop(heap)
        pending.append((kind, due, executor.submit(run, kind, fleet.workers[index], due)))
        heapq.heappush(heap, (due + periods[kind], next(seq), kind, index))
    time.sleep(max(0.0, end - time.monotonic()))
    drain_end = time.monotonic() + DRAIN_S
    while time.monotonic() < drain_end and not all(f.done() for _, _, f in pending):
        time.sleep(0.1)
    executor.shutdown(wait=False, cancel_futures=True)
    now = time.monotonic()
    unfinished = [Sample(kind, now - due, False) for kind, due, f in pending if not f.done()]
    return samples + unfinished, max_lag


# -- pollers and streams ------------------------------------------------------------------------


@dataclass
class ClientLoad:
    poll_latencies: list[float] = field(default_factory=list)
    poll_codes: Counter[int | str] = field(default_factory=Counter)
    stream_messages: int = 0
    streams_open: int = 0
    stream_codes: Counter[int | str] = field(default_factory=Counter)


async def _poller(client: httpx.AsyncClient, ids: list[str], stop: asyncio.Event, load: ClientLoad) -> None:
    """One user's ``embedmix status`` loop: a poll a second of a random running job."""
    await asyncio.sleep(random.uniform(0, 1))
    while not stop.is_set():
        began = time.perf_counter()
        try:
            response = await client.get(f"/v1/jobs/{random.choice(ids)}")
            load.poll_codes[response.status_code] += 1
        except httpx.HTTPError as exc:
            load.poll_codes[type(exc).__name__] += 1
        elapsed = time.perf_counter() - began
        load.poll_latencies.append(elapsed)
        await asyncio.sleep(max(0.0, 1.0 - elapsed))


async def _streamer(client: httpx.AsyncClient, job_id: str, stop: asyncio.Event, load: ClientLoad) -> None:
    """One dashboard following a job: its SSE stream held open, messages counted."""
    try:
        async with client.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
            load.stream_codes[response.status_code] += 1
            if response.status_code != 200:
                return
            load.streams_open += 1
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    load.stream_messages += 1
                if stop.is_set():
                    break
    except httpx.HTTPError as exc:
        load.stream_codes[type(exc).__name__] += 1


@contextmanager
def clients(url: str, ids: list[str], pollers: int, streams: int) -> Iterator[ClientLoad]:
    """M pollers and S streams on a loop of their own, for as long as the block runs."""
    load, loop = ClientLoad(), asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        limits = httpx.Limits(max_connections=pollers + streams + 4)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:
            tasks = [asyncio.create_task(_poller(client, ids, stop, load)) for _ in range(pollers)]
            tasks += [asyncio.create_task(_streamer(client, random.choice(ids), stop, load)) for _ in range(streams)]
            await stop.wait()
            await asyncio.wait(tasks, timeout=5)
            for task in tasks:
                task.cancel()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield load
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=15)


# -- one step and the table ---------------------------------------------------------------------


def summarise(samples: list[Sample], kind: str) -> tuple[int, int, float, float]:
    """Count, failures, p50 and p99 latency (s) of one operation kind."""
    mine = [s for s in samples if s.kind == kind]
    latencies = [s.latency_s for s in mine]
    return len(mine), sum(not s.ok for s in mine), percentile(latencies, 0.5), percentile(latencies, 0.99)


def broken_targets(samples: list[Sample], load: ClientLoad, ttl_s: float) -> list[str]:
    """Which targets a step broke: renewal p99 above a third of the lease, poll p99 above 1 s, refusals."""
    broken = []
    _, failed, _, renew_p99 = summarise(samples, "heartbeat")
    if renew_p99 > ttl_s / 3:
        broken.append(f"lease renewal p99 {renew_p99:.2f} s > {ttl_s / 3:.1f} s")
    if failed:
        broken.append(f"{failed} lease renewals refused or unfinished")
    poll_p99 = percentile(load.poll_latencies, 0.99)
    if poll_p99 > POLL_P99_TARGET_S:
        broken.append(f"poll p99 {poll_p99:.2f} s > {POLL_P99_TARGET_S:.0f} s")
    return broken


def pg_connections(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(text("pg_stat_activity"))
                                     .where(text("backend_type = 'client backend'"))))


def run_step(fleet: Fleet, n: int, args: argparse.Namespace, api: subprocess.Popen[bytes], url: str,
             pg: Postgres, redis_proc: subprocess.Popen[bytes], admin: Engine) -> list[str]:
    """One step of N workers: grow, drive for ``--seconds`` with pollers and streams beside, print the figures."""
    fleet.grow(n)
    ids = [w.job_id for w in fleet.workers]
    meters = {
        "postgres": CpuMeter(pg.processes),
        "api": CpuMeter(lambda: [psutil.Process(api.pid), *psutil.Process(api.pid).children(recursive=True)]),
        "redis": CpuMeter(lambda: [psutil.Process(redis_proc.pid)]),
        "fleet": CpuMeter(lambda: [psutil.Process()]),
    }
    peak_connections = [0]
    stop = threading.Event()

    def sample_connections() -> None:
        while not stop.wait(1.0):
            peak_connections[0] = max(peak_connections[0], pg_connections(admin))

    sampler = threading.Thread(target=sample_connections, daemon=True)
    sampler.start()
    load_before = os.getloadavg()[0]
    began = time.monotonic()
    with clients(url, ids, args.pollers, args.streams) as load:
        samples, max_lag = drive(fleet, args.seconds, args.threads)
    wall = time.monotonic() - began
    stop.set()
    cpu = {name: meter.used() / wall * 100 for name, meter in meters.items()}
    print_step(fleet, n, args, samples, load, wall, cpu, peak_connections[0], max_lag, load_before, pg)
    return broken_targets(samples, load, fleet.settings.lease_ttl_s)


def print_step(fleet: Fleet, n: int, args: argparse.Namespace, samples: list[Sample], load: ClientLoad,
               wall: float, cpu: dict[str, float], connections: int, max_lag: float, load_avg: float,
               pg: Postgres) -> None:
    r, seconds = fleet.rates, args.seconds
    flushes = summarise(samples, "flush")[0]
    rows_per_flush = r.metric_rows_per_s / r.flushes_per_s if r.flushes_per_s else 0.0
    checkpoints = summarise(samples, "checkpoint")[0]
    print(f"\n== N = {n} workers, {args.pollers} pollers, {args.streams} streams, {seconds:.0f} s "
          f"(load average {load_avg:.2f}) ==")
    print(f"writes/s: flush txns {flushes / seconds:.1f}, metric rows {flushes * rows_per_flush / seconds:.1f}, "
          f"heartbeats {summarise(samples, 'heartbeat')[0] / seconds:.1f}, events {summarise(samples, 'event')[0] / seconds:.2f}, "
          f"checkpoints {checkpoints / seconds:.2f} ({checkpoints * r.checkpoint_bytes / seconds / 1e6:.2f} MB/s); "
          f"reads/s: cancel polls {summarise(samples, 'cancel_poll')[0] / seconds:.1f}, "
          f"reaper passes {summarise(samples, 'reaper')[0] / seconds:.1f}, API polls {len(load.poll_latencies) / seconds:.1f}, "
          f"stream messages {load.stream_messages / seconds:.1f}")
    print(f"{'operation':<12} {'count':>7} {'failed':>6} {'p50 ms':>9} {'p99 ms':>9}")
    for kind in ("heartbeat", "flush", "cancel_poll", "checkpoint", "event", "reaper"):
        count, failed, p50, p99 = summarise(samples, kind)
        if count:
            print(f"{kind:<12} {count:>7} {failed:>6} {p50 * 1e3:>9.1f} {p99 * 1e3:>9.1f}")
    polls = load.poll_latencies
    print(f"{'api poll':<12} {len(polls):>7} {sum(v for k, v in load.poll_codes.items() if k != 200):>6} "
          f"{percentile(polls, 0.5) * 1e3:>9.1f} {percentile(polls, 0.99) * 1e3:>9.1f}")
    print(f"streams open {load.streams_open}/{args.streams} {dict(load.stream_codes)}; worst pool lag {max_lag:.2f} s")
    print("CPU (% of one core): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
          + f"; PostgreSQL client connections peak {connections} of max_connections {pg.max_connections}")
    print(f"a fleet without a pooler would hold {n * r.connections} worker connections "
          f"({r.connections} per worker process) + the API's")


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="10,100,300,1000", help="worker counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each step drives the fleet")
    parser.add_argument("--pollers", type=int, default=20, help="clients polling GET /v1/jobs/{id} once a second")
    parser.add_argument("--streams", type=int, default=10, help="clients holding GET /v1/jobs/{id}/stream open")
    parser.add_argument("--threads", type=int, default=48, help="threads (and pooled connections) the fleet's operations share")
    parser.add_argument("--max-connections", type=int, default=200, help="the throwaway PostgreSQL's max_connections")
    parser.add_argument("--tiny", action="store_true", help="a smoke run in seconds: tiny job, steps 2,4, 3 s each")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.seconds, args.pollers, args.streams = "2,4", 3.0, 2, 1
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="embedmix-fleet-"))
    pg = Postgres(args.max_connections)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        migrate(pg.url)
        redis_port = free_port()
        redis_proc = start_process(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(tmp)], dict(os.environ), tmp / "redis.log")
        procs.append(redis_proc)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        wait_until(lambda: redis.Redis.from_url(redis_url).ping(), 20, "redis-server")
        settings = Settings(database_url=pg.url, redis_url=redis_url, artifacts="db", work_dir=str(tmp))
        admin = make_engine(pg.url)
        session_factory = make_session_factory(make_engine(pg.url, pool_size=args.threads, max_overflow=4))
        with session_factory() as session:
            owner_id = ensure_admin_key(session, ADMIN_KEY).id
            session.commit()

        spec = TINY_JOB_SPEC if args.tiny else REAL_JOB_SPEC
        print(f"measuring one real job ({spec['model']['encoder']} on {spec['dataset']['name']}, "
              f"{spec['train']['epochs']} epochs) through worker.train_task.run_job; settings: lease {settings.lease_ttl_s:.0f} s, "
              f"metrics_flush_s {settings.metrics_flush_s}, cancel_poll_s {settings.cancel_poll_s}, "
              f"checkpoint_min_interval_s {settings.checkpoint_min_interval_s:.0f}, reaper_interval_s {settings.reaper_interval_s:.0f}")
        rates = measure_real_job(settings, owner_id, spec)
        for line in rates.lines():
            print("  " + line)

        port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("EMBEDMIX_")},
               "EMBEDMIX_DATABASE_URL": pg.url, "EMBEDMIX_REDIS_URL": redis_url, "EMBEDMIX_ADMIN_KEY": ADMIN_KEY,
               "EMBEDMIX_LOG_FORMAT": "text"}
        api = start_process([sys.executable, "-m", "embedmix.cli.main", "api", "--port", str(port), "--workers", "1"],
                            env, tmp / "api.log")
        procs.append(api)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, 90, "embedmix api")

        fleet = Fleet(settings, session_factory, owner_id, rates, os.urandom(max(rates.checkpoint_bytes, 1)),
                      create_app(settings))
        try:
            for n in [int(x) for x in args.steps.split(",")]:
                broken = run_step(fleet, n, args, api, url, pg, redis_proc, admin)
                if broken:
                    print(f"target broken at N = {n}: " + "; ".join(broken))
                    break
                print(f"targets held at N = {n}")
        finally:
            fleet.close()
        print(f"\ntotal {time.monotonic() - started:.0f} s")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
