"""Prometheus metrics for ``GET /metrics``: request counts and latency by route, jobs by status,
the broker's queue depth and the training rate of running jobs.

Each application gets its own registry, so several apps in one process (tests,
an embedding host) never register a metric twice. Requests are labelled by
route *template* (``/v1/jobs/{job_id}``), never by raw path, which would
make a new time series per job id. Latency is measured to the first byte of
the response, so a long download or a live event stream counts as fast when
it starts fast.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedmix.store.models import JOB_STATUSES, Job

logger = logging.getLogger("embedmix.api")

UNMATCHED_ROUTE = "unmatched"


class Telemetry:
    """The application's registry and the request metrics in it."""

    def __init__(
        self, session_factory: sessionmaker[Session], queue_depth: Callable[[], int] | None = None
    ) -> None:
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
        self.registry.register(TrainingRate(session_factory))
        if queue_depth is not None:
            self.registry.register(QueueDepth(queue_depth))


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


class QueueDepth(Collector):
    """``embedmix_queue_depth``: train messages waiting in the broker, read at scrape time.

    Next to ``embedmix_jobs{status="queued"}`` it tells a backlog (both high:
    add workers) from lost messages (jobs queued, broker empty: the reaper re-sends them).
    """

    NAME = "embedmix_queue_depth"
    HELP = "Messages waiting in the broker's train queue"

    def __init__(self, depth: Callable[[], int]) -> None:
        self.depth = depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            value = self.depth()
        except Exception as exc:  # noqa: BLE001 - redis and kombu raise many kinds; /readyz reports the broker
            logger.warning("queue depth skipped: %s", exc.__class__.__name__)
            return
        yield GaugeMetricFamily(self.NAME, self.HELP, value=value)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP)


class TrainingRate(Collector):
    """``embedmix_training_steps_per_second``: steps all running jobs made since the previous scrape.

    Workers write each job's step to its row; this compares the steps of the
    jobs running now with what the previous scrape saw, over the time between
    the two scrapes. A job that started or ended in between counts only for
    the part both scrapes saw; the first scrape reports 0.
    """

    NAME = "embedmix_training_steps_per_second"
    HELP = "Training steps per second over all running jobs, between the last two scrapes"

    def __init__(
        self, session_factory: sessionmaker[Session], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.session_factory = session_factory
        self.clock = clock
        self._lock = threading.Lock()
        self._steps: dict[str, int] = {}
        self._at: float | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.session_factory() as session:
                query = select(Job.id, Job.step).where(Job.status.in_(("running", "cancelling")))
                steps = {job_id: step for job_id, step in session.execute(query)}
        except SQLAlchemyError as exc:
            logger.warning("training rate skipped: %s", exc.__class__.__name__)
            return
        now = self.clock()
        with self._lock:  # two scrapes at once must not both measure against the same baseline
            before, since = self._steps, self._at
            self._steps, self._at = steps, now
        rate = 0.0
        if since is not None and now > since:
            made = sum(max(0, step - before[job_id]) for job_id, step in steps.items() if job_id in before)
            rate = made / (now - since)
        yield GaugeMetricFamily(self.NAME, self.HELP, value=rate)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP)


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
