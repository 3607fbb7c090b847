"""Open event streams against the rest of the API: /healthz and GET /v1/jobs with and without 300 streams open.

One ``embedmix api`` process on a throwaway PostgreSQL database and redis-server
(bench/load.py's Stack), one key, one queued job (no worker runs, so its stream
stays open and polls for as long as the client holds it). Each run:

1. samples ``/healthz`` and ``GET /v1/jobs`` one request after another (the peer: nothing else open);
2. opens ``--streams`` ``GET /v1/jobs/{id}/stream`` from the one key at once, and counts the answers (200 or 429);
3. samples the same two calls again while the admitted streams stay open, then closes them.

It runs twice: with the default caps (``max_streams_per_key``, so most streams get a 429),
and with both caps raised to admit every stream (what many keys sharing one process would do).

    .venv/bin/python bench/streams.py --streams 300 --samples 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from load import SUBMIT_SPEC, Stack, percentile

# A sample that waits this long counts at this long: the figure is then a lower bound, never a hang.
SAMPLE_TIMEOUT_S = 120.0


async def sample(client: httpx.AsyncClient, path: str, count: int) -> list[float]:
    """Latencies (s) of ``count`` GETs of ``path``, one after another; a timeout counts as SAMPLE_TIMEOUT_S."""
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        try:
            response = await client.get(path)
            assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:200]}"
        except httpx.TimeoutException:
            pass
        latencies.append(time.perf_counter() - start)
    return latencies


async def hold_stream(client: httpx.AsyncClient, job_id: str, codes: Counter, opened: asyncio.Event,
                      release: asyncio.Event) -> None:
    """One stream: count its status, then (if admitted) read it until ``release`` is set."""
    try:
        async with client.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
            codes[response.status_code] += 1
            opened.set()
            if response.status_code != 200:
                return
            reader = asyncio.ensure_future(_drain(response))
            await release.wait()
            reader.cancel()
    except httpx.HTTPError as exc:
        codes[type(exc).__name__] += 1
        opened.set()


async def _drain(response: httpx.Response) -> None:
    async for _ in response.aiter_bytes():
        pass


def summary(latencies: list[float]) -> dict[str, float]:
    return {"p50": percentile(latencies, 0.5) * 1000, "p99": percentile(latencies, 0.99) * 1000}


async def measure(url: str, key: str, streams: int, samples: int) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=streams + 8, max_keepalive_connections=streams + 8)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=SAMPLE_TIMEOUT_S, limits=limits) as client, \
            httpx.AsyncClient(base_url=url, headers=headers, timeout=SAMPLE_TIMEOUT_S) as probe:
        job_id = (await client.post("/v1/jobs", json=SUBMIT_SPEC)).json()["id"]
        before = {"healthz": await sample(probe, "/healthz", samples), "jobs": await sample(probe, "/v1/jobs", samples)}
        codes: Counter = Counter()
        release = asyncio.Event()
        openings = [asyncio.Event() for _ in range(streams)]
        holders = [asyncio.ensure_future(hold_stream(client, job_id, codes, opened, release)) for opened in openings]
        await asyncio.gather(*(opened.wait() for opened in openings))
        during = {"healthz": await sample(probe, "/healthz", samples), "jobs": await sample(probe, "/v1/jobs", samples)}
        release.set()
        await asyncio.gather(*holders)
    return {"codes": dict(codes), "before": before, "during": during}


def report(title: str, result: dict[str, object]) -> None:
    before, during = result["before"], result["during"]
    print(f"{title}: stream answers {result['codes']}")
    for name, path in (("healthz", "/healthz"), ("jobs", "GET /v1/jobs")):
        b, d = summary(before[name]), summary(during[name])  # type: ignore[index]
        print(f"  {path}: without streams p50 {b['p50']:.1f} ms p99 {b['p99']:.1f} ms; "
              f"with streams p50 {d['p50']:.1f} ms p99 {d['p99']:.1f} ms; p99 ratio {d['p99'] / b['p99']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--samples", type=int, default=200, help="requests per latency sample")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("needs redis-server on PATH")
    uncapped = {"EMBEDMIX_MAX_STREAMS_PER_KEY": str(args.streams), "EMBEDMIX_MAX_STREAMS": str(args.streams)}
    print(f"streams, one API process, PostgreSQL, loopback, {os.cpu_count()} cores")
    for title, limits in (("default caps", {}), (f"caps raised to {args.streams}", uncapped)):
        with tempfile.TemporaryDirectory(prefix="embedmix-streams-") as tmp:
            stack = Stack(Path(tmp), 1, limits)
            try:
                result = asyncio.run(measure(stack.url, stack.key, args.streams, args.samples))
            finally:
                stack.close()
        report(title, result)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
