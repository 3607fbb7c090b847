"""Liveness and readiness under exhaustion: a held connection pool, a full or read-only artifact store.

* The pool: the application runs under a real uvicorn (in a thread, so the test
  can hold its engine's every pooled connection); requests that need the
  database pile up behind the pool, and ``/healthz`` and ``/readyz`` must still
  answer, readiness with the database checked on a connection of its own.
* The store: ``embedmix api`` runs as a process in a mount namespace of its own
  (``unshare -Urm``) where its artifact directory, or its SQLite database with
  the artifacts in it, is a small tmpfs; ``/readyz`` must be 503 naming
  ``artifacts`` and an upload that does not fit a 507 ``storage_full``, not a 500.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedmix.api import create_app
from embedmix.service.settings import Settings
from embedmix.store.db import POOL_OVERFLOW, POOL_SIZE, migrate
from tests.chaos.conftest import ROOT, ServiceProcess
from tests.conftest import (
    PostgresServer,
    RedisServer,
    free_port,
    served_in_thread,
    unavailable,
    wait_for,
)

ADMIN_KEY = "em_health-admin-key-0123456789abcdefghijklmnopqrstuv"
CLIENT_TIMEOUT_S = 60.0
START_TIMEOUT_S = 90.0
# Requests sent at a held pool: more than FastAPI's 40 threads, so every thread waits on the pool.
PILED_UP_REQUESTS = 60
TMPFS_SIZE = "4m"


# -- a held connection pool ------------------------------------------------------------------


def test_health_and_readiness_answer_while_every_pooled_connection_is_held(app_settings: Settings) -> None:
    app = create_app(app_settings)
    engine = app.state.runtime.engine
    with served_in_thread(app) as port:
        url = f"http://127.0.0.1:{port}"
        held = [engine.connect() for _ in range(POOL_SIZE + POOL_OVERFLOW)]
        try:
            assert engine.pool.checkedout() == POOL_SIZE + POOL_OVERFLOW  # nothing left for a request
            answers = asyncio.run(_probe_behind_a_pile(url))
        finally:
            for connection in held:
                connection.close()
    assert answers["/healthz"] == (200, {"status": "ok"})
    status, body = answers["/readyz"]
    assert status == 200 and body["checks"]["database"] == "ok", body


async def _probe_behind_a_pile(url: str) -> dict[str, tuple[int, dict]]:
    """Probes sent while PILED_UP_REQUESTS calls that need the database hold every request thread."""
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        pile = [
            asyncio.ensure_future(client.get("/v1/jobs", headers={"Authorization": f"Bearer {ADMIN_KEY}"}))
            for _ in range(PILED_UP_REQUESTS)
        ]
        await asyncio.sleep(0)  # the pile is sent first
        answers = {}
        for path in ("/healthz", "/readyz"):
            response = await client.get(path)
            answers[path] = (response.status_code, response.json())
        for request in pile:
            request.cancel()
        await asyncio.gather(*pile, return_exceptions=True)
    return answers


# -- a full or read-only artifact store --------------------------------------------------------


@dataclass
class Store:
    """Where the namespaced API keeps artifacts, and the tmpfs options that make it full or read-only."""

    artifacts: str  # "fs": a directory on the tmpfs; "db": chunks in a SQLite file on the tmpfs
    mount_options: str


STORES = {
    "files-full": Store("fs", f"size={TMPFS_SIZE}"),
    "sqlite-full": Store("db", f"size={TMPFS_SIZE}"),
    "files-read-only": Store("fs", f"ro,size={TMPFS_SIZE}"),
}


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip (in CI: fail) where a mount namespace with a tmpfs cannot be made."""
    target = tmp_path_factory.mktemp("probe-mount")
    command = ["unshare", "-Urm", "mount", "-t", "tmpfs", "-o", "size=1m", "probe", str(target)]
    if shutil.which("unshare") is None or subprocess.run(command, capture_output=True, check=False).returncode:
        unavailable("unshare -Urm cannot mount a tmpfs here (user namespaces are off)")


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.create_database("health")
    migrate(url)
    yield url
    postgres_server.drop_database(url)


def start_api_on_tmpfs(store: Store, tmp_path: Path, database_url: str, redis_url: str) -> tuple[ServiceProcess, str]:
    """`embedmix migrate` then `embedmix api` in a mount namespace whose ``tmp_path/store`` is a tmpfs."""
    mount, work = tmp_path / "store", tmp_path / "work"
    mount.mkdir()
    work.mkdir()
    if store.artifacts == "db":
        database_url = f"sqlite:///{mount / 'embedmix.db'}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDMIX_")}
    env.update(
        EMBEDMIX_DATABASE_URL=database_url, EMBEDMIX_REDIS_URL=redis_url, EMBEDMIX_ADMIN_KEY=ADMIN_KEY,
        EMBEDMIX_ARTIFACTS=str(mount / "artifacts") if store.artifacts == "fs" else "db",
        EMBEDMIX_WORK_DIR=str(work), PYTHONUNBUFFERED="1",
    )
    script = 'mount -t tmpfs -o "$1" embedmix-store "$2" && "$3" -m embedmix.cli.main migrate && exec "$3" -m embedmix.cli.main api --port "$4"'
    log_path = tmp_path / "api.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            ["unshare", "-Urm", "sh", "-c", script, "sh", store.mount_options, str(mount), sys.executable, str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    api = ServiceProcess("api", process, log_path, lambda _: _answers(f"{url}/healthz"))
    return api, url


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(params=sorted(STORES))
def api_on_tmpfs(
    request: pytest.FixtureRequest, namespaces: None, postgres_database: str, redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[Store, httpx.Client, ServiceProcess]]:
    store = STORES[request.param]
    api, url = start_api_on_tmpfs(store, tmp_path, postgres_database, redis_server.url)

    def started() -> bool:
        assert api.alive(), f"the API exited:\n{api.log()[-3000:]}"
        return api.ready(api)

    try:
        wait_for(started, START_TIMEOUT_S, "the namespaced API to start", lambda: api.log()[-3000:])
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
            yield store, client, api
    finally:
        if api.alive():
            api.kill()


def npz_larger_than_the_tmpfs() -> bytes:
    """A valid dataset (6.4 MB of features) that cannot fit in a TMPFS_SIZE store."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.normal(size=(25_000, 64)).astype(np.float32), y=np.arange(25_000) % 3)
    return buffer.getvalue()


def test_a_full_or_read_only_artifact_store_makes_readyz_503_and_an_upload_a_clear_error(
    api_on_tmpfs: tuple[Store, httpx.Client, ServiceProcess],
) -> None:
    store, client, api = api_on_tmpfs
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["error"]["code"] == "unavailable" and "artifacts" in body["error"]["message"]
    assert body["checks"]["artifacts"].startswith("error"), body
    assert body["checks"]["broker"] == "ok" and (body["checks"]["database"] == "ok" or store.artifacts == "db")
    assert client.get("/healthz").status_code == 200
    response = client.post("/v1/datasets", files={"file": ("big.npz", npz_larger_than_the_tmpfs())})
    if "ro" in store.mount_options.split(","):  # a store that refuses writes is unavailable, not full
        assert response.status_code == 503, response.text
        assert "refuses writes" in response.json()["error"]["message"]
        assert client.get("/v1/datasets").json()["data"] == []
        return
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_full" and "no room" in error["message"]
    assert int(response.headers["Retry-After"]) > 0
    assert client.get("/v1/datasets").json()["data"] == []  # nothing half-stored
    assert "Traceback" not in api.log()
