"""Load on the API with PostgreSQL: bursts of concurrent submissions under a stream of status polls,
then two workers draining a hundred short jobs.

Everything runs on loopback against throwaway servers this script starts and
removes: a PostgreSQL database created on the machine's server (dropped at the
end), a ``redis-server`` on a free port, ``embedmix api --workers N`` and two
``embedmix worker`` processes. Status polls are driven by ``wrk`` (Debian's
package; it must be on PATH), going round ``--poll-jobs`` jobs; submissions by an
asyncio httpx client, each with its own Idempotency-Key and a share of them sent
twice, as a client retrying after a timeout would (a connection error is retried
with the same key too).

What it checks and prints:
* polls: requests/s achieved, p50 / p99 latency, non-2xx responses and socket errors;
* submissions: p50 / p99 latency, status codes, and that every accepted key is
  exactly one job in the database (no duplicate, none missing);
* drain: the time for two workers to take 100 short jobs to a terminal state,
  and the count by final status.

    .venv/bin/python bench/load.py --seconds 60 --burst 200 --api-workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import redis
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]

from embedmix.store.db import make_engine, migrate
from embedmix.store.models import Job

PG_ADMIN = os.environ.get("EMBEDMIX_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
SUBMIT_SPEC = {
    "name": "load",
    "dataset": {"name": "blobs", "size": 200, "params": {"num_classes": 4, "num_features": 8}},
    "model": {"encoder": "mlp", "embedding_dim": 8, "width": 16},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 1, "batch_size": 64},
    "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    "export": {"formats": ["safetensors"]},
}
TERMINAL = {"succeeded", "failed", "cancelled"}
RETRY_SHARE = 10  # every 10th submission is sent again with the same key
TRANSPORT_RETRIES = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_ready(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not become ready")


class Stack:
    """The throwaway database, Redis and service processes; ``close`` removes them all."""

    def __init__(self, tmp: Path, api_workers: int, limits: dict[str, str]) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.db_name = f"embedmix_load_{secrets.token_hex(4)}"
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{self.db_name}"'))
        admin.dispose()
        self.database_url = make_url(PG_ADMIN).set(database=self.db_name).render_as_string(hide_password=False)
        migrate(self.database_url)
        redis_port = free_port()
        self._start("redis", ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"])
        self.key = "em_" + secrets.token_urlsafe(30)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EMBEDMIX_")},
            "EMBEDMIX_DATABASE_URL": self.database_url,
            "EMBEDMIX_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "EMBEDMIX_ADMIN_KEY": self.key,
            "EMBEDMIX_WORK_DIR": str(tmp / "work"),
            **limits,
        }
        self._start("api", [sys.executable, "-m", "embedmix.cli.main", "api", "--port", str(self.port),
                            "--workers", str(api_workers)])
        wait_ready(self.url)

    def _start(self, name: str, argv: list[str]) -> None:
        env = getattr(self, "env", None)
        with open(self.tmp / f"{name}-{len(self.procs)}.log", "wb") as log:  # the child keeps its own copy
            self.procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def start_workers(self, count: int) -> None:
        for _ in range(count):
            self._start("worker", [sys.executable, "-m", "embedmix.cli.main", "worker", "--loglevel", "WARNING"])

    def clear_queue(self) -> None:
        """Cancel the load phase's still-queued jobs and drop their messages, so the drain starts empty."""
        engine = make_engine(self.database_url)
        with engine.begin() as connection:
            connection.execute(update(Job).where(Job.status == "queued").values(status="cancelled"))
        engine.dispose()
        broker = redis.Redis.from_url(self.env["EMBEDMIX_REDIS_URL"])
        broker.flushdb()
        broker.close()

    def jobs_in_database(self) -> dict[str, int]:
        """Jobs per idempotency key, read straight from PostgreSQL."""
        engine = make_engine(self.database_url)
        with engine.connect() as connection:
            rows = connection.execute(
                select(Job.idempotency_key, func.count()).group_by(Job.idempotency_key)
            ).all()
        engine.dispose()
        return {key: count for key, count in rows}

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
        admin.dispose()


async def submit_bursts(url: str, key: str, burst: int, seconds: float) -> tuple[list[float], Counter, set[str]]:
    """Bursts of ``burst`` simultaneous submissions until ``seconds`` pass; latencies, codes, accepted keys."""
    latencies: list[float] = []
    codes: Counter = Counter()
    accepted: set[str] = set()
    limits = httpx.Limits(max_connections=burst, max_keepalive_connections=burst)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:

        async def one(idem: str) -> None:
            for _ in range(2 if int(idem.rsplit("-", 1)[1]) % RETRY_SHARE == 0 else 1):
                await send(idem)

        async def send(idem: str) -> None:
            """POST once, retrying a connection error with the same key as a client should: a pooled
            connection the server closed for idleness (uvicorn's keep-alive is 5 s) fails this way."""
            for _ in range(TRANSPORT_RETRIES + 1):
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/jobs", json=SUBMIT_SPEC, headers={"Idempotency-Key": idem})
                except httpx.TransportError as exc:
                    codes[f"{type(exc).__name__} (retried)"] += 1
                    continue
                latencies.append(time.perf_counter() - start)
                codes[response.status_code] += 1
                if response.status_code == 201:
                    accepted.add(idem)
                return
            codes["gave up"] += 1

        deadline, wave = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            await asyncio.gather(*(one(f"w{wave}-{i}") for i in range(burst)))
            wave += 1
    return latencies, codes, accepted


def run_wrk(url: str, key: str, job_ids: list[str], seconds: float, connections: int, tmp: Path) -> subprocess.Popen:
    """wrk polling GET /v1/jobs/{id}, each connection going round ``job_ids`` (a Lua request hook)."""
    script = tmp / "polls.lua"
    ids = ", ".join(f'"{job_id}"' for job_id in job_ids)
    script.write_text(
        f"local ids = {{{ids}}}\nlocal n = 0\n"
        "request = function()\n  n = n + 1\n"
        '  return wrk.format("GET", "/v1/jobs/" .. ids[n % #ids + 1])\nend\n'
    )
    return subprocess.Popen(
        ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "--timeout", "10s",
         "-s", str(script), "-H", f"Authorization: Bearer {key}", url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def parse_wrk(output: str) -> dict[str, str]:
    """Requests/s, p50, p99, non-2xx count and socket errors from wrk's report."""
    found = {
        "rps": re.search(r"Requests/sec:\s+([\d.]+)", output),
        "p50": re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE),
        "p99": re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE),
        "non2xx": re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output),
        "socket": re.search(r"Socket errors:(.*)", output),
    }
    return {name: (m.group(1).strip() if m else ("0" if name in ("non2xx",) else "none")) for name, m in found.items()}


def drain(stack: Stack, jobs: int, timeout: float) -> tuple[float, Counter]:
    """Two workers take ``jobs`` short jobs to terminal states; seconds taken and final statuses."""
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
        ids = [client.post("/v1/jobs", json=SUBMIT_SPEC).json()["id"] for _ in range(jobs)]
        start = time.monotonic()
        stack.start_workers(2)
        statuses: dict[str, str] = {}
        while time.monotonic() - start < timeout:
            statuses = {i: client.get(f"/v1/jobs/{i}").json()["status"] for i in ids}
            if all(s in TERMINAL for s in statuses.values()):
                break
            time.sleep(2)
    return time.monotonic() - start, Counter(statuses.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--burst", type=int, default=200, help="simultaneous submissions per wave")
    parser.add_argument("--connections", type=int, default=64, help="wrk's open connections for polls")
    parser.add_argument("--poll-jobs", type=int, default=100, help="distinct jobs the polls go round")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--drain-jobs", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        sys.exit("needs wrk and redis-server on PATH (Debian: apt-get install wrk redis-server)")
    limits = {"EMBEDMIX_MAX_ACTIVE_JOBS_PER_OWNER": "1000000", "EMBEDMIX_SUBMIT_RATE_PER_MINUTE": "1000000"}
    with tempfile.TemporaryDirectory(prefix="embedmix-load-") as tmp:
        stack = Stack(Path(tmp), args.api_workers, limits)
        try:
            with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.key}"}) as client:
                poll_ids = [
                    client.post("/v1/jobs", json=SUBMIT_SPEC, headers={"Idempotency-Key": f"poll-target-{i}"}).json()["id"]
                    for i in range(args.poll_jobs)
                ]
            wrk = run_wrk(stack.url, stack.key, poll_ids, args.seconds, args.connections, Path(tmp))
            latencies, codes, accepted = asyncio.run(submit_bursts(stack.url, stack.key, args.burst, args.seconds))
            polls = parse_wrk(wrk.communicate()[0])
            in_db = stack.jobs_in_database()
            in_db = {key: n for key, n in in_db.items() if not key.startswith("poll-target-")}
            missing = accepted - in_db.keys()
            duplicated = {k for k, n in in_db.items() if n != 1}
            unexpected = in_db.keys() - accepted
            stack.clear_queue()
            seconds, final = drain(stack, args.drain_jobs, timeout=900)
        finally:
            stack.close()
    server_errors = sum(n for code, n in codes.items() if isinstance(code, int) and code >= 500)
    print(f"load, {args.seconds:.0f} s, PostgreSQL, {args.api_workers} API processes, loopback, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"polls GET /v1/jobs/{{id}} (wrk, {args.connections} connections, {args.poll_jobs} jobs): {polls['rps']} req/s, "
          f"p50 {polls['p50']}, p99 {polls['p99']}, non-2xx {polls['non2xx']}, socket errors {polls['socket']}")
    print(f"submissions ({args.burst} at once, repeated): {len(latencies)} requests, codes {dict(codes)}, "
          f"5xx {server_errors}, p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms")
    print(f"exactly once: {len(accepted)} keys accepted, {len(in_db)} in the database, missing {len(missing)}, "
          f"duplicated {len(duplicated)}, unexpected {len(unexpected)}")
    print(f"drain: {args.drain_jobs} jobs, 2 workers: {seconds:.0f} s, final statuses {dict(final)}")


if __name__ == "__main__":
    main()
