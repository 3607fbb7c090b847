"""Probes and metrics for operators: ``/healthz``, ``/readyz``, ``/metrics`` (no key needed).

Liveness says only that the process serves requests, so an orchestrator does
not restart an API whose database is down (restarting would not help); it is
answered on the event loop, taking no thread and no connection, so it answers
while streams or slow requests hold them all. Readiness checks the database,
the broker and the artifact store, so traffic goes elsewhere until all three
can serve: each check runs on a thread outside FastAPI's pool (it never
queues behind requests) and counts as down after ``CHECK_TIMEOUT_S``; the
database is asked on a connection of its own, not one from the busy pool.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from embedmix.api.deps import RuntimeDep
from embedmix.api.errors import RETRY_AFTER_UNAVAILABLE_S, error_body
from embedmix.api.runtime import Runtime
from embedmix.api.schemas import HealthOut, ReadyOut
from embedmix.store import DatabaseArtifacts, FilesystemArtifacts
from embedmix.store.db import ping_database

logger = logging.getLogger("embedmix.api")

router = APIRouter(tags=["operations"])

# A dependency that has not answered a readiness check within this long counts as down.
CHECK_TIMEOUT_S = 2.0
# Less free space than this where artifact bytes are written and the store counts as full:
# the next checkpoint or model would not fit.
ARTIFACTS_MIN_FREE_BYTES = 64 << 20


class ArtifactsFull(Exception):
    """The artifact store's disk has less than ARTIFACTS_MIN_FREE_BYTES free."""


@router.get("/healthz")
async def healthz() -> HealthOut:
    """Liveness: answered on the event loop, touching nothing outside the process."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"description": "a dependency is down: the error format, plus checks"}},
)
async def readyz(runtime: RuntimeDep) -> ReadyOut | JSONResponse:
    """Readiness: the database answers ``SELECT 1``, the broker ``PING``, and the artifact store has room."""
    probes: dict[str, Callable[[], object]] = {
        "database": partial(ping_database, runtime.engine, CHECK_TIMEOUT_S),
        "broker": runtime.queue.ping,
        "artifacts": partial(_check_artifacts, runtime),
    }
    results = await asyncio.gather(*(_check(name, probe) for name, probe in probes.items()))
    checks = dict(zip(probes, results))
    if all(result == "ok" for result in checks.values()):
        return ReadyOut(status="ready", checks=checks)
    down = ", ".join(
        f"{name} ({result.removeprefix('error: ')})" for name, result in sorted(checks.items()) if result != "ok"
    )
    body = error_body("unavailable", f"not ready: {down}")
    return JSONResponse(
        {**body, "checks": checks},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
    )


async def _check(name: str, probe: Callable[[], object]) -> str:
    """'ok', or why not: a timeout, a disk's state, or the failure's class name (never its
    message: it may hold a URL with credentials).

    The probe runs on the event loop's own executor, not FastAPI's thread pool; a probe
    that hangs past the timeout is left to finish there while the answer goes out.
    """
    try:
        await asyncio.wait_for(asyncio.to_thread(probe), CHECK_TIMEOUT_S)
    except TimeoutError:
        reason = f"no answer within {CHECK_TIMEOUT_S:g} s"
    except ArtifactsFull as exc:
        reason = str(exc)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__  # strerror names no path
    except Exception as exc:  # noqa: BLE001 - drivers raise many kinds; any of them means not ready
        reason = exc.__class__.__name__
    else:
        return "ok"
    logger.warning("readiness: %s is down (%s)", name, reason)
    return f"error: {reason}"


def _check_artifacts(runtime: Runtime) -> None:
    """Raise if the disk that artifact bytes are written to is nearly full or refuses a write.

    A few bytes written to an unnamed temporary file there: cheap, and it finds a
    read-only or unwritable directory that free space alone would not show.
    """
    directory = _artifact_directory(runtime)
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)  # as the store's first write would
    free = shutil.disk_usage(directory).free
    if free < ARTIFACTS_MIN_FREE_BYTES:
        raise ArtifactsFull(f"disk full: {free >> 20} MiB free, {ARTIFACTS_MIN_FREE_BYTES >> 20} MiB needed")
    with tempfile.TemporaryFile(dir=directory) as probe:
        probe.write(b"embedmix readiness")
        probe.flush()


def _artifact_directory(runtime: Runtime) -> Path | None:
    """Where artifact bytes land on this machine's disks: the file store's root, or the SQLite
    file's directory for the database store on SQLite; None where another server keeps them
    (S3, PostgreSQL), whose own checks cover them."""
    store, url = runtime.artifacts, runtime.engine.url
    if isinstance(store, FilesystemArtifacts):
        return store.root
    if isinstance(store, DatabaseArtifacts) and url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(url.database).resolve().parent
    return None


@router.get("/metrics", response_class=Response)
def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus text format: request counts and latency by route, jobs by status."""
    return Response(generate_latest(runtime.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
