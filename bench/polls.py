"""Status polls per second from one API process on PostgreSQL, against a bare FastAPI endpoint.

Two servers run side by side, each driven in turn by the same ``wrk -t2 -c16`` on
loopback for ``--seconds``, for ``--rounds`` rounds (the sides alternate, so a
shared machine's load falls on both alike; each side's median is reported):

* embedmix with its key cache (the default): ``GET /v1/jobs/{id}`` going round
  ``--jobs`` jobs of one owner (answered by ``api.jobs.JobReadRoute`` without dependency solving);
* the peer: a bare FastAPI app under the same uvicorn returning a constant job body.

Beside req/s, each run takes the CPU time its server process spent (user + system,
psutil) and PostgreSQL's processes spent, per request: a figure other work on the
machine barely moves, where req/s swings with it.

After the rounds, a second client (asyncio, the same 16 connections, one request in flight on
each, as wrk) times every poll of each side once more: its percentiles are the latency a
Python caller sees, next to wrk's.

One more run, once, shows what the key cache saves: embedmix with
``EMBEDMIX_KEY_CACHE_S=0``, every poll looking its key up in the database.

Each embedmix server is ``embedmix api`` (one process) on a throwaway PostgreSQL
database and redis-server (bench/load.py's Stack).

    .venv/bin/python bench/polls.py --seconds 10 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from load import SUBMIT_SPEC, Stack, free_port, parse_wrk, percentile, run_wrk  # noqa: E402
from service_latency import BARE_APP, wait_ready  # noqa: E402

CONNECTIONS = 16


def embedmix_server(tmp: Path, jobs: int, key_cache_s: str) -> tuple[Stack, list[str]]:
    """``embedmix api`` on its own database with ``jobs`` jobs to poll."""
    limits = {"EMBEDMIX_KEY_CACHE_S": key_cache_s, "EMBEDMIX_SUBMIT_RATE_PER_MINUTE": "1000000",
              "EMBEDMIX_MAX_ACTIVE_JOBS_PER_OWNER": "1000000"}
    stack = Stack(tmp, 1, limits)
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.key}"}, timeout=30) as client:
        ids = [client.post("/v1/jobs", json=SUBMIT_SPEC).json()["id"] for _ in range(jobs)]
    run_wrk(stack.url, stack.key, ids, 2, CONNECTIONS, tmp).communicate()  # warm-up
    return stack, ids


def bare_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    (tmp / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    with open(tmp / "bare.log", "wb") as log:
        bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--log-level", "warning"],
                                cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/v1/jobs/job_x")  # the bare app has no /readyz
    run_wrk(url, "none", ["job_x"], 2, CONNECTIONS, tmp).communicate()  # warm-up
    return bare, url


def stop_bare(bare: subprocess.Popen) -> None:
    bare.send_signal(signal.SIGINT)
    try:
        bare.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(bare.pid, signal.SIGKILL)


def polls(url: str, key: str, ids: list[str], seconds: float, tmp: Path, server_pid: int) -> dict[str, str]:
    """One wrk run, with the CPU microseconds a request cost the server and PostgreSQL."""
    server, database = cpu_seconds([server_pid]), cpu_seconds(postgres_pids())
    result = parse_wrk(run_wrk(url, key, ids, seconds, CONNECTIONS, tmp).communicate()[0])
    requests = float(result["rps"]) * seconds
    result["server_us"] = f"{(cpu_seconds([server_pid]) - server) / requests * 1e6:.0f}"
    result["postgres_us"] = f"{(cpu_seconds(postgres_pids()) - database) / requests * 1e6:.0f}"
    return result


def client_latencies(port: int, key: str, ids: list[str], seconds: float) -> dict[str, float]:
    """Per-poll latency seen by a second client: CONNECTIONS asyncio connections, each sending
    its next GET when the last response has fully arrived (what wrk does), timed per request.

    A check on wrk's percentiles from a Python caller's side, with the share of polls over 100 ms
    (the garbage collector's pauses showed there: BENCHMARKS.md).
    """
    async def connection(k: int, until: float, latencies: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while time.perf_counter() < until:
            request = f"GET /v1/jobs/{ids[i % len(ids)]} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
            i += CONNECTIONS
            started = time.perf_counter()
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
        writer.close()

    async def run() -> list[float]:
        latencies: list[float] = []
        until = time.perf_counter() + seconds
        await asyncio.gather(*(connection(k, until, latencies) for k in range(CONNECTIONS)))
        return latencies

    latencies = run_loop(run())
    return {"rps": len(latencies) / seconds, **{f"p{round(q * 100)}": percentile(latencies, q) * 1000 for q in (0.5, 0.9, 0.99)},
            "over_100ms": sum(t > 0.1 for t in latencies) / len(latencies)}


def run_loop(coroutine: Any) -> Any:
    """The coroutine on uvloop (uvicorn's loop, a dependency of the service) or asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def cpu_seconds(pids: list[int]) -> float:
    """User + system seconds of these processes and their children (ones gone meanwhile count as 0)."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for p in [process, *process.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def api_pid(stack: Stack) -> int:
    return next(p.pid for p in stack.procs if "api" in p.args)


def median_run(runs: list[dict[str, str]]) -> dict[str, str]:
    """The run with the median requests/s (its latencies come with it)."""
    return sorted(runs, key=lambda run: float(run["rps"]))[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each side; medians are reported")
    parser.add_argument("--jobs", type=int, default=100, help="distinct jobs the polls go round")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        sys.exit("needs wrk and redis-server on PATH (Debian: apt-get install wrk redis-server)")
    with tempfile.TemporaryDirectory(prefix="embedmix-polls-") as tmp:
        uncached_stack, ids = embedmix_server(Path(tmp), args.jobs, "0")
        try:
            uncached = polls(uncached_stack.url, uncached_stack.key, ids, args.seconds, Path(tmp), api_pid(uncached_stack))
        finally:
            uncached_stack.close()
        stack, ids = embedmix_server(Path(tmp), args.jobs, "30")
        bare, bare_url = bare_server(Path(tmp))
        ours, peers = [], []
        try:
            for _ in range(args.rounds):
                ours.append(polls(stack.url, stack.key, ids, args.seconds, Path(tmp), api_pid(stack)))
                peers.append(polls(bare_url, "none", ["job_x"], args.seconds, Path(tmp), bare.pid))
            second = {"embedmix": client_latencies(stack.port, stack.key, ids, args.seconds),
                      "bare FastAPI": client_latencies(int(bare_url.rsplit(":", 1)[1]), "none", ["job_x"], args.seconds)}
        finally:
            stop_bare(bare)
            stack.close()
    cached, bare_result = median_run(ours), median_run(peers)
    peer = float(bare_result["rps"])
    print(f"GET /v1/jobs/{{id}}, one API process, PostgreSQL, wrk -t2 -c{CONNECTIONS}, {args.seconds:.0f} s x "
          f"{args.rounds} alternating rounds (medians), load average {os.getloadavg()[0]:.1f}")
    print("rounds, req/s: embedmix " + ", ".join(r["rps"] for r in ours) + "; peer " + ", ".join(r["rps"] for r in peers))
    for name, result in (("embedmix, key cache on (the default)", cached),
                         ("embedmix, key cache off (one run)", uncached), ("bare FastAPI (peer)", bare_result)):
        print(f"{name}: {result['rps']} req/s, p50 {result['p50']}, p99 {result['p99']}, "
              f"non-2xx {result['non2xx']}; ratio to peer {float(result['rps']) / peer:.2f}; CPU a request: "
              f"server {result['server_us']} us, PostgreSQL {result['postgres_us']} us")
    cpu = statistics.median(float(b["server_us"]) / float(o["server_us"]) for o, b in zip(ours, peers))
    print(f"server CPU a request, peer / embedmix (median over rounds): {cpu:.2f}")
    for name, seen in second.items():
        print(f"second client (asyncio, {CONNECTIONS} connections, one run), {name}: {seen['rps']:.0f} req/s, "
              f"p50 {seen['p50']:.2f} ms, p90 {seen['p90']:.2f} ms, p99 {seen['p99']:.2f} ms, "
              f"over 100 ms {100 * seen['over_100ms']:.2f}%")


if __name__ == "__main__":
    main()
