"""``GET /v1/jobs/{id}/stream``: a job followed live as Server-Sent Events.

Message types (the SSE ``event`` field; ``data`` is JSON):

* ``status``: the whole job (as ``GET /v1/jobs/{id}``) whenever its status changes;
* ``progress``: ``{step, total_steps, epoch, fraction}`` whenever it moves;
* ``metrics``: ``{"points": [{name, step, epoch, value, time}, ...]}``, new points;
* ``event``: one timeline entry (as ``GET /v1/jobs/{id}/events``).

The stream polls the database every ``POLL_INTERVAL_S`` (workers write there;
there is no second channel to keep consistent) and ends right after the
terminal ``status``, which is always the last message: metrics and events
written before the job finished are all delivered first. The first message
carries a ``retry`` hint; FastAPI adds ``: ping`` keep-alive comments while
nothing happens. ``metrics`` and ``event`` messages carry an id
``<last event id>-<last metric step>``; a client reconnecting with
``Last-Event-ID`` (browsers do this by themselves) or ``?last_event_id=``
resumes after them instead of receiving everything again.

Streams are bounded (:mod:`api.stream_limits`): a slot per stream, capped per
key and per process (429 beyond), and each poll a short session of its own on
one of a few threads, so an idle stream holds no database connection and
streams never take the thread pool the other routes need.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.security.utils import get_authorization_scheme_param
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.orm import Session, sessionmaker

from embedmix.api.deps import CurrentOwner, JobIdPath, RuntimeDep, int_in_text
from embedmix.api.errors import not_found
from embedmix.api.schemas import ErrorOut, EventId, EventOut, JobOut, MetricPointOut, Step
from embedmix.store import get_job, list_events, list_metrics
from embedmix.store.models import TERMINAL_STATUSES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

POLL_INTERVAL_S = 0.5
RETRY_MS = 2000
EVENTS_PER_POLL = 100
METRICS_PER_POLL = 1000


@dataclass(frozen=True)
class Position:
    """How far the client has read: the last event id and the last metric step it was sent."""

    event_id: int = 0
    metric_step: int | None = None

    def token(self) -> str:
        return f"{self.event_id}-{'' if self.metric_step is None else self.metric_step}"

    @classmethod
    def parse(cls, token: str | None) -> Position:
        if not token:
            return cls()
        events, _, step = token.partition("-")
        param = "last-event-id"
        return cls(int_in_text(events, EventId, param), int_in_text(step, Step, param) if step else None)


@dataclass
class Snapshot:
    job: JobOut | None
    events: list[EventOut]
    points: list[MetricPointOut]

    @property
    def drained(self) -> bool:
        """Whether this poll read everything written so far (a full page may have more behind it)."""
        return len(self.events) < EVENTS_PER_POLL and len(self.points) < METRICS_PER_POLL


def get_start_position(
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=64)
    ] = None,
    last_event_id: Annotated[
        str | None, Query(max_length=64, description="the same as the Last-Event-ID header")
    ] = None,
) -> Position:
    """Where to resume; parsed before the stream opens, so a bad id is a plain 422."""
    return Position.parse(last_event_id_header or last_event_id)


StartPosition = Annotated[Position, Depends(get_start_position)]


async def hold_stream_slot(request: Request, _caller: CurrentOwner, runtime: RuntimeDep) -> AsyncIterator[None]:
    """A slot of the caller's key for as long as the stream lasts (429 at the cap; see api.stream_limits).

    A dependency with ``yield``: FastAPI runs its exit after the response has
    ended, however it ended. It runs once the key is authenticated, and counts
    that key, read from the header as FastAPI's HTTPBearer reads it.
    """
    _, key = get_authorization_scheme_param(request.headers.get("authorization"))
    with runtime.streams.hold(key):
        yield


async def first_poll(
    job_id: JobIdPath,
    owner: CurrentOwner,
    runtime: RuntimeDep,
    position: StartPosition,
    _slot: Annotated[None, Depends(hold_stream_slot)],
) -> Snapshot:
    """The stream's first read, once its slot is held and before the response starts, so an
    unknown job (or another owner's) is a plain 404."""
    snap = await runtime.streams.poll(_poll, runtime.session_factory, owner.id, job_id, position)
    if snap.job is None:
        raise not_found("job", job_id, param="job_id")
    return snap


@router.get(
    "/{job_id}/stream",
    response_class=EventSourceResponse,
    responses={code: {"model": ErrorOut} for code in (401, 404, 422, 429)},
)
async def stream_job(
    job_id: JobIdPath,
    owner: CurrentOwner,
    runtime: RuntimeDep,
    position: StartPosition,
    snap: Annotated[Snapshot, Depends(first_poll)],
) -> AsyncIterator[ServerSentEvent]:
    """Follow the job until it finishes (see the module notes for the message types).

    A key holds a limited number of streams at once; beyond it the answer is 429.
    """
    yield ServerSentEvent(comment=f"following {job_id}", retry=RETRY_MS)
    sent_status: str | None = None
    sent_progress: dict[str, Any] | None = None
    while snap.job is not None:
        progress = snap.job.progress.model_dump()
        if progress != sent_progress:
            sent_progress = progress
            yield ServerSentEvent(event="progress", data=progress)
        if snap.points:
            position = replace(position, metric_step=snap.points[-1].step)
            points = [p.model_dump(mode="json") for p in snap.points]
            yield ServerSentEvent(event="metrics", data={"points": points}, id=position.token())
        for event in snap.events:
            position = replace(position, event_id=event.id)
            yield ServerSentEvent(
                event="event", data=event.model_dump(mode="json"), id=position.token()
            )
        finished = snap.job.status in TERMINAL_STATUSES
        if snap.job.status != sent_status and (snap.drained or not finished):
            sent_status = snap.job.status
            yield ServerSentEvent(event="status", data=snap.job.model_dump(mode="json"))
        if finished and snap.drained:
            return
        if snap.drained:
            await asyncio.sleep(POLL_INTERVAL_S)
        snap = await runtime.streams.poll(_poll, runtime.session_factory, owner.id, job_id, position)


def _poll(
    factory: sessionmaker[Session], owner_id: int, job_id: str, position: Position
) -> Snapshot:
    """One read of the job, then what was written after ``position``.

    The job is read first: whatever was written before it reached its terminal
    status is then visible to the two later reads.
    """
    with factory() as session:
        job = get_job(session, owner_id, job_id)
        if job is None:
            return Snapshot(None, [], [])
        events = list_events(session, job_id, after_id=position.event_id, limit=EVENTS_PER_POLL)
        points = list_metrics(
            session, job_id, since_step=position.metric_step, limit=METRICS_PER_POLL
        )
        return Snapshot(
            JobOut.of(job),
            [EventOut.model_validate(e) for e in events],
            [MetricPointOut.model_validate(p) for p in points],
        )
