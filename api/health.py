"""Probes and metrics for operators: ``/healthz``, ``/readyz``, ``/metrics`` (no key needed).

Liveness says only that the process serves requests, so an orchestrator does
not restart an API whose database is down (restarting would not help);
readiness checks the database and the broker, so traffic goes elsewhere until
both answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.deps import RuntimeDep
from api.errors import RETRY_AFTER_UNAVAILABLE_S, error_body
from api.runtime import Runtime
from api.schemas import HealthOut, ReadyOut

logger = logging.getLogger("embedmix.api")

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> HealthOut:
    """Liveness: touches nothing outside the process."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"description": "a dependency is down: the error format, plus checks"}},
)
async def readyz(runtime: RuntimeDep) -> ReadyOut | JSONResponse:
    """Readiness: the database answers ``SELECT 1`` and the broker answers ``PING``."""
    checks = {
        "database": await run_in_threadpool(_check, "database", lambda: _select_one(runtime)),
        "broker": await run_in_threadpool(_check, "broker", runtime.queue.ping),
    }
    if all(result == "ok" for result in checks.values()):
        return ReadyOut(status="ready", checks=checks)
    down = sorted(name for name, result in checks.items() if result != "ok")
    body = error_body("unavailable", f"not ready: {', '.join(down)} unreachable")
    return JSONResponse(
        {**body, "checks": checks},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
    )


def _select_one(runtime: Runtime) -> None:
    with runtime.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _check(name: str, probe: Callable[[], object]) -> str:
    """'ok', or the failure's class name (never its message: it may hold a URL with credentials)."""
    try:
        probe()
    except Exception as exc:
        logger.warning("readiness: %s unreachable (%s)", name, exc.__class__.__name__)
        return f"error: {exc.__class__.__name__}"
    return "ok"


@router.get("/metrics", response_class=Response)
def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus text format: request counts and latency by route, jobs by status."""
    return Response(generate_latest(runtime.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
