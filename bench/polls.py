"""Status polls per second from one API process on PostgreSQL, against a bare FastAPI endpoint.

Three servers in turn, each driven by the same ``wrk -t1 -c16`` on loopback for
``--seconds``, going round ``--jobs`` jobs of one owner:

* embedmix with its key cache (the default): most polls take the short way (api.poll);
* embedmix with ``EMBEDMIX_KEY_CACHE_S=0``: every poll looks its key up and goes
  through FastAPI's route and dependencies;
* the peer: a bare FastAPI app under the same uvicorn returning a constant job body.

Each embedmix server is ``embedmix api`` (one process) on a throwaway PostgreSQL
database and redis-server (bench/load.py's Stack).

    .venv/bin/python bench/polls.py --seconds 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from load import SUBMIT_SPEC, Stack, free_port, parse_wrk, run_wrk  # noqa: E402
from embedmix.service import BARE_APP, wait_ready  # noqa: E402

CONNECTIONS = 16


def embedmix_polls(tmp: Path, seconds: float, jobs: int, key_cache_s: str) -> dict[str, str]:
    limits = {"EMBEDMIX_KEY_CACHE_S": key_cache_s, "EMBEDMIX_SUBMIT_RATE_PER_MINUTE": "1000000",
              "EMBEDMIX_MAX_ACTIVE_JOBS_PER_OWNER": "1000000"}
    stack = Stack(tmp, 1, limits)
    try:
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.key}"}, timeout=30) as client:
            ids = [client.post("/v1/jobs", json=SUBMIT_SPEC).json()["id"] for _ in range(jobs)]
        warm = run_wrk(stack.url, stack.key, ids, 2, CONNECTIONS, tmp)
        warm.communicate()
        return parse_wrk(run_wrk(stack.url, stack.key, ids, seconds, CONNECTIONS, tmp).communicate()[0])
    finally:
        stack.close()


def bare_polls(tmp: Path, seconds: float) -> dict[str, str]:
    (tmp / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    with open(tmp / "bare.log", "wb") as log:
        bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--log-level", "warning"],
                                cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, "/v1/jobs/job_x")  # the bare app has no /readyz
        run_wrk(url, "none", ["job_x"], 2, CONNECTIONS, tmp).communicate()
        return parse_wrk(run_wrk(url, "none", ["job_x"], seconds, CONNECTIONS, tmp).communicate()[0])
    finally:
        bare.send_signal(signal.SIGINT)
        try:
            bare.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(bare.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--jobs", type=int, default=100, help="distinct jobs the polls go round")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        sys.exit("needs wrk and redis-server on PATH (Debian: apt-get install wrk redis-server)")
    with tempfile.TemporaryDirectory(prefix="embedmix-polls-") as tmp:
        cached = embedmix_polls(Path(tmp), args.seconds, args.jobs, "30")
        uncached = embedmix_polls(Path(tmp), args.seconds, args.jobs, "0")
        bare = bare_polls(Path(tmp), args.seconds)
    peer = float(bare["rps"])
    print(f"GET /v1/jobs/{{id}}, one API process, PostgreSQL, wrk -t1 -c{CONNECTIONS}, {args.seconds:.0f} s, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, result in (("embedmix, key cache on (short way)", cached),
                         ("embedmix, key cache off (route)", uncached), ("bare FastAPI (peer)", bare)):
        print(f"{name}: {result['rps']} req/s, p50 {result['p50']}, p99 {result['p99']}, "
              f"non-2xx {result['non2xx']}; ratio to peer {float(result['rps']) / peer:.2f}")


if __name__ == "__main__":
    main()
