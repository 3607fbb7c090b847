"""A job's timeline: state changes, warnings and log lines, in write order.

Writers may replay (a worker retrying after a lost connection, a resumed
attempt re-announcing itself): an event with a ``dedup_key`` is stored once per
job, whatever the number of writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from embedmix.store.models import EVENT_LEVELS, Event, utcnow
from embedmix.store.paging import check_limit
from embedmix.store.sql import upsert_insert


@dataclass(frozen=True)
class NewEvent:
    """An event to write; ``time`` defaults to the moment it is written."""

    type: str
    message: str = ""
    level: str = "info"
    data: dict[str, Any] | None = None
    dedup_key: str | None = None
    time: datetime | None = None


def add_events(session: Session, job_id: str, events: Iterable[NewEvent]) -> list[int]:
    """Write events in one statement; returns the ids of those new (replayed dedup keys are skipped)."""
    rows = [_row(job_id, event) for event in events]
    if not rows:
        return []
    insert = upsert_insert(session, Event)
    statement = insert.on_conflict_do_nothing(index_elements=["job_id", "dedup_key"]).returning(
        Event.id
    )
    return sorted(session.scalars(statement, rows))


def _row(job_id: str, event: NewEvent) -> dict[str, Any]:
    """The column values of one event, refusing an unknown level before SQL does."""
    if event.level not in EVENT_LEVELS:
        raise ValueError(f"unknown event level {event.level!r}; expected one of {EVENT_LEVELS}")
    return {
        "job_id": job_id,
        "time": event.time or utcnow(),
        "level": event.level,
        "type": event.type,
        "message": event.message,
        "data": event.data,
        "dedup_key": event.dedup_key,
    }


def list_events(
    session: Session, job_id: str, *, after_id: int = 0, limit: int = 100
) -> list[Event]:
    """Events with id above ``after_id``, oldest first: a client resumes from the last id it saw."""
    check_limit(limit)
    query = (
        select(Event)
        .where(Event.job_id == job_id, Event.id > after_id)
        .order_by(Event.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def latest_event(session: Session, job_id: str, type: str) -> Event | None:
    """The job's newest event of ``type`` (e.g. the ``projection`` event that named a job's map before 0003)."""
    query = select(Event).where(Event.job_id == job_id, Event.type == type).order_by(Event.id.desc()).limit(1)
    return session.scalars(query).first()
