"""Prometheus metrics for ``GET /metrics``: request counts and latency by route, jobs by status.

Each application gets its own registry, so several apps in one process (tests,
an embedding host) never register a metric twice. Requests are labelled by
route *template* (``/v1/jobs/{job_id}``), never by raw path, which would
make a new time series per job id. Latency is measured to the first byte of
the response, so a long download or a live event stream counts as fast when
it starts fast.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from store.models import JOB_STATUSES, Job

logger = logging.getLogger("embedmix.api")

UNMATCHED_ROUTE = "unmatched"


class Telemetry:
    """The application's registry and the request metrics in it."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "embedmix_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "embedmix_http_request_duration_seconds",
            "Time to the first byte of the response, by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(JobsByStatus(session_factory))


class JobsByStatus(Collector):
    """``embedmix_jobs{status}``, counted in the database at scrape time (every worker's jobs, not this process's)."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("embedmix_jobs", "Jobs by status", labels=["status"])
        try:
            with self.session_factory() as session:
                rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
                counts = {status: count for status, count in rows}
        except SQLAlchemyError as exc:
            # A scrape must not fail because the database does; /readyz reports that.
            logger.warning("jobs gauge skipped: %s", exc.__class__.__name__)
            return
        for status in JOB_STATUSES:
            gauge.add_metric([status], counts.get(status, 0))
        yield gauge

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registration must not query the database.
        yield GaugeMetricFamily("embedmix_jobs", "Jobs by status", labels=["status"])


class RequestMetricsMiddleware:
    """Pure ASGI (no buffering), so streamed downloads and event streams pass straight through."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            route = scope.get("route")
            template = getattr(route, "path", UNMATCHED_ROUTE)
            method = scope["method"]
            self.telemetry.latency.labels(method, template).observe(time.perf_counter() - started)
            self.telemetry.requests.labels(method, template, str(status)).inc()

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except Exception:
            record(500)
            raise
