"""The job timeline entries the worker and the reaper write.

Every entry that a replay could repeat (a redelivered message, a resumed
attempt, two reapers racing) carries a dedup key built from the job id, the
run (attempt and lease) and what happened, so the store keeps it once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from embedmix.store.events import NewEvent, add_events

# Event types, as clients see them in GET /v1/jobs/{id}/events.
STATUS = "status"
LOG = "log"
WARNING = "warning"
TRACEBACK = "traceback"
ENQUEUED = "enqueued"


def status_event(job_id: str, status: str, message: str, *, key: str, **data: Any) -> NewEvent:
    """A status change; ``key`` tells this change apart from the same status in another attempt."""
    return NewEvent(
        type=STATUS,
        message=message,
        level="error" if status == "failed" else "info",
        data={"status": status, **data},
        dedup_key=f"{job_id}:{key}:status:{status}",
    )


def log_event(job_id: str, run_key: str, name: str, message: str, **data: Any) -> NewEvent:
    """A log line of one run (``run_key``: the lease's), written once per run whatever the replays."""
    return NewEvent(type=LOG, message=message, data=data or None, dedup_key=f"{job_id}:{run_key}:{name}")


def warning_event(job_id: str, run_key: str, name: str, message: str, **data: Any) -> NewEvent:
    """Something the user should know that did not stop the job."""
    return NewEvent(
        type=WARNING,
        message=message,
        level="warning",
        data=data or None,
        dedup_key=f"{job_id}:{run_key}:{name}",
    )


def record(session_factory: sessionmaker[Session], job_id: str, *events: NewEvent) -> None:
    """Write events in a transaction of their own (the timeline must not wait for other work)."""
    with session_factory() as session:
        add_events(session, job_id, events)
        session.commit()
