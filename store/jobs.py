"""Jobs: submission with idempotency, owner-scoped reads, the guarded state machine and leases.

Every state change is one UPDATE guarded by ``WHERE status IN (...)``; its row
count says whether it happened. Two actors racing (a user cancelling, a worker
finishing, a reaper requeuing) cannot both win, and a terminal state is never
overwritten because no function accepts one as a starting point.

Leases: a worker owns a job while ``lease_owner`` is its token and
``lease_expires_at`` is in the future. Once that moment passes the lease is
dead: it can no longer be renewed, another worker may claim it, and the reaper
(:func:`reap_expired`) requeues or fails the job. Expiry is judged by the
application clock (``now``), so machines running workers need synchronised
clocks, with a TTL well above their skew.

``attempts`` counts successful claims: the first run is attempt 1. Claiming
refuses a job that has used ``max_attempts``, which also stops a job that keeps
killing its worker from being redelivered for ever.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from embedmix.service.ids import new_job_id
from embedmix.store.models import ACTIVE_STATUSES, JOB_STATUSES, TERMINAL_STATUSES, Job, Owner, utcnow
from embedmix.store.paging import page
from embedmix.store.sql import affected_rows, upsert_insert

CLAIMABLE_STATUSES = ("queued", "running")
PROGRESS_STATUSES = ("running", "cancelling")

# Columns a transition may set alongside the status; identity, ownership and
# the submitted request are fixed at creation.
TRANSITION_FIELDS = frozenset(
    {
        "started_at",
        "finished_at",
        "step",
        "total_steps",
        "epoch",
        "metrics",
        "error",
        "attempts",
        "lease_owner",
        "lease_expires_at",
        "model_artifacts",
        "card",
        "projection",
    }
)


class ActiveJobLimit(Exception):
    """The owner already has ``limit`` jobs queued or running (HTTP 429)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} jobs may be queued or running at once")
        self.limit = limit


class IdempotencyConflict(Exception):
    """The idempotency key was already used for a different request body (HTTP 409)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"idempotency key already used for job {job_id} with a different request")
        self.job_id = job_id


def create_job(
    session: Session,
    owner_id: int,
    spec: dict[str, Any],
    *,
    name: str,
    max_attempts: int = 3,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    max_active: int | None = None,
) -> tuple[Job, bool]:
    """Queue a job; returns ``(job, created)``.

    With ``max_active``, a new job that would give the owner more than that many
    active (queued, running, cancelling) jobs raises :class:`ActiveJobLimit`; the
    caller rolls back. The owner's row is locked first (``FOR UPDATE`` on
    PostgreSQL; SQLite's single writer serialises the insert itself), so
    concurrent submissions of one owner count one after another and the limit
    is never overshot. A replayed idempotent request is never refused.

    With an idempotency key, a repeat of the same request (same ``request_hash``)
    returns the job the first one created, with ``created`` False; the same key
    with another hash raises :class:`IdempotencyConflict`. The insert is
    ``ON CONFLICT DO NOTHING`` on (owner, key), so two simultaneous requests
    with one key create one job, without savepoints.
    """
    if idempotency_key is not None and request_hash is None:
        raise ValueError("an idempotency key needs the request hash it guards")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if max_active is not None:
        session.execute(select(Owner.id).where(Owner.id == owner_id).with_for_update())
    job_id = new_job_id()
    insert = upsert_insert(session, Job).values(
        id=job_id,
        owner_id=owner_id,
        name=name,
        spec=spec,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    result = session.execute(
        insert.on_conflict_do_nothing(index_elements=["owner_id", "idempotency_key"])
    )
    if affected_rows(result) == 1:
        if max_active is not None and count_active_jobs(session, owner_id) > max_active:
            raise ActiveJobLimit(max_active)
        return session.get_one(Job, job_id), True
    existing = find_idempotent_job(session, owner_id, idempotency_key or "")
    assert existing is not None  # the insert conflicted on (owner, key)
    if existing.request_hash != request_hash:
        raise IdempotencyConflict(existing.id)
    return existing, False


def find_idempotent_job(session: Session, owner_id: int, idempotency_key: str) -> Job | None:
    """The owner's job created under this idempotency key, if any (compare its ``request_hash``)."""
    query = select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == idempotency_key)
    return session.scalars(query).first()


def count_active_jobs(session: Session, owner_id: int) -> int:
    """Queued + running + cancelling jobs of the owner (the quota counts what holds a worker or will)."""
    query = (
        select(func.count())
        .select_from(Job)
        .where(Job.owner_id == owner_id, Job.status.in_(ACTIVE_STATUSES))
    )
    return session.scalars(query).one()


def get_job(session: Session, owner_id: int, job_id: str, *, for_job: bool = False) -> Job | None:
    """The owner's job, or None if it does not exist or belongs to someone else (both are 404).

    ``for_job`` is the read of a submission that will start from this job's model
    (``model.init_from``): on PostgreSQL it holds a share lock until the submission
    commits, so a delete of the job waits for it and then sees the new job.
    """
    query = select(Job).where(Job.id == job_id, Job.owner_id == owner_id)
    if for_job:
        query = query.with_for_update(read=True)
    return session.scalars(query).first()


MAX_STARTERS_NAMED = 5  # a refused delete names this many of the jobs that start from it


def active_jobs_starting_from(session: Session, owner_id: int, job_id: str) -> list[str]:
    """Ids of the owner's queued or running jobs whose spec starts from job ``job_id``'s model."""
    query = select(Job.id).where(
        Job.owner_id == owner_id,
        Job.status.in_(ACTIVE_STATUSES),
        Job.spec["model"]["init_from"]["job"].as_string() == job_id,
    )
    return list(session.scalars(query.order_by(Job.id).limit(MAX_STARTERS_NAMED)))


# Built once: constructing a select and computing its cache key on every poll costs a fifth of the read.
_JOB_ROWS = select(*Job.__table__.columns).where(Job.id.in_(bindparam("job_ids", expanding=True)))


def get_job_rows(connection: Connection, job_ids: list[str]) -> Sequence[Row[Any]]:
    """The jobs of these ids, any owner's, as plain rows: for the batched status poll
    (``api.job_reads``), which answers each caller only with the rows that are theirs."""
    return connection.execute(_JOB_ROWS, {"job_ids": job_ids}).all()


def get_job_unscoped(session: Session, job_id: str) -> Job | None:
    """Any owner's job: for workers and the reaper only, never for a request handler."""
    return session.get(Job, job_id)


def get_job_status(session: Session, job_id: str) -> str | None:
    """Just the status, read fresh from the database (a training loop's cheap should-stop check)."""
    return session.scalars(select(Job.status).where(Job.id == job_id)).first()


def list_jobs(
    session: Session,
    owner_id: int,
    *,
    status: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """The owner's jobs, newest first, optionally of one status; returns ``(rows, next_cursor)``."""
    query = select(Job).where(Job.owner_id == owner_id)
    if status is not None:
        _check_status(status)
        query = query.where(Job.status == status)
    return page(session, query, Job.created_at, Job.id, limit, cursor)


def transition(
    session: Session,
    job_id: str,
    from_statuses: Iterable[str],
    to_status: str,
    **fields: Any,
) -> bool:
    """Move the job to ``to_status`` if its status is one of ``from_statuses``; True if it moved.

    ``fields`` are other columns to set in the same UPDATE (see
    :data:`TRANSITION_FIELDS`); values may be SQL expressions. Entering
    ``running`` stamps ``started_at`` the first time only; entering a terminal
    state stamps ``finished_at`` unless given.
    """
    expected = tuple(from_statuses)
    for status in (*expected, to_status):
        _check_status(status)
    if TERMINAL_STATUSES.intersection(expected):
        raise ValueError(f"terminal states are final; cannot leave {expected}")
    unknown = fields.keys() - TRANSITION_FIELDS
    if unknown:
        raise ValueError(f"transition cannot set {sorted(unknown)}")
    values: dict[str, Any] = {"status": to_status, **fields}
    if to_status == "running":
        values.setdefault("started_at", func.coalesce(Job.started_at, utcnow()))
    if to_status in TERMINAL_STATUSES:
        values.setdefault("finished_at", utcnow())
    return _guarded_update(session, job_id, [Job.status.in_(expected)], values)


def request_cancel(session: Session, owner_id: int, job_id: str) -> Job | None:
    """Cancel the owner's job: queued becomes cancelled at once, running becomes cancelling.

    The worker sees ``cancelling``, saves and moves the job to ``cancelled``.
    A job already finished is returned unchanged; None means not found.
    """
    job = get_job(session, owner_id, job_id)
    if job is None:
        return None
    if not transition(session, job_id, ["queued"], "cancelled"):
        transition(session, job_id, ["running"], "cancelling")
    session.refresh(job)
    return job


def update_progress(
    session: Session,
    job_id: str,
    *,
    step: int,
    epoch: int,
    total_steps: int | None = None,
    metrics: dict[str, float] | None = None,
) -> str | None:
    """Record where a running job is (and its latest eval values); its status, None once it is no longer running.

    The status comes back from the same UPDATE (RETURNING), so a worker's
    progress write doubles as its cancel-flag read ('cancelling': the user asked
    to stop) and saves a round trip per flush.
    """
    values: dict[str, Any] = {"step": step, "epoch": epoch}
    if total_steps is not None:
        values["total_steps"] = total_steps
    if metrics is not None:
        values["metrics"] = metrics
    return session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(PROGRESS_STATUSES))
        .values(values)
        .returning(Job.status)
        .execution_options(synchronize_session="fetch")
    ).scalar_one_or_none()


def claim_lease(
    session: Session, job_id: str, owner_token: str, ttl_s: float, *, now: datetime | None = None
) -> bool:
    """Take the job's lease for ``ttl_s`` seconds and count an attempt; False if someone holds it.

    Succeeds only for a queued or running job with attempts left whose lease is
    free or expired. Two workers claiming at once: exactly one UPDATE matches.
    """
    now = now or utcnow()
    return _guarded_update(
        session,
        job_id,
        [
            Job.status.in_(CLAIMABLE_STATUSES),
            Job.attempts < Job.max_attempts,
            or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= now),
        ],
        {
            "lease_owner": owner_token,
            "lease_expires_at": now + timedelta(seconds=ttl_s),
            "attempts": Job.attempts + 1,
        },
    )


def renew_lease(
    session: Session, job_id: str, owner_token: str, ttl_s: float, *, now: datetime | None = None
) -> bool:
    """Extend a live lease held by ``owner_token`` (the heartbeat); False means stop working."""
    now = now or utcnow()
    return _guarded_update(
        session,
        job_id,
        [
            Job.lease_owner == owner_token,
            Job.lease_expires_at > now,
            Job.status.in_(ACTIVE_STATUSES),
        ],
        {"lease_expires_at": now + timedelta(seconds=ttl_s)},
    )


def release_lease(session: Session, job_id: str, owner_token: str) -> bool:
    """Give the lease up (after a terminal transition, or to hand the job back); False if not held."""
    return _guarded_update(
        session,
        job_id,
        [Job.lease_owner == owner_token],
        {"lease_owner": None, "lease_expires_at": None},
    )


def expired_leases(session: Session, now: datetime | None = None) -> list[str]:
    """Ids of unfinished jobs whose lease has expired, longest-expired first (the reaper's work list)."""
    query = (
        select(Job.id)
        .where(Job.status.in_(ACTIVE_STATUSES), Job.lease_expires_at <= (now or utcnow()))
        .order_by(Job.lease_expires_at)
    )
    return list(session.scalars(query))


def reap_expired(session: Session, job_id: str, *, now: datetime | None = None) -> str | None:
    """Settle a job whose lease expired; returns its new status, or None if there was nothing to do.

    cancelling -> cancelled; queued or running with attempts left -> queued
    (the caller re-enqueues it, and the next attempt resumes from the latest
    checkpoint); out of attempts -> failed. Each outcome is one guarded UPDATE
    that also requires the lease to be still expired, so a heartbeat that lands
    first wins.
    """
    now = now or utcnow()
    expired = Job.lease_expires_at <= now
    freed = {"lease_owner": None, "lease_expires_at": None}
    outcomes: list[tuple[str, list[ColumnElement[bool]], dict[str, Any]]] = [
        ("cancelled", [Job.status == "cancelling"], {"finished_at": now}),
        ("queued", [Job.status.in_(CLAIMABLE_STATUSES), Job.attempts < Job.max_attempts], {}),
        (
            "failed",
            [Job.status.in_(CLAIMABLE_STATUSES), Job.attempts >= Job.max_attempts],
            {
                "finished_at": now,
                "error": {
                    "code": "worker_lost",
                    "message": "the worker stopped responding and no attempts are left",
                },
            },
        ),
    ]
    for status, conditions, values in outcomes:
        if _guarded_update(
            session, job_id, [expired, *conditions], {"status": status, **freed, **values}
        ):
            return status
    return None


def _guarded_update(
    session: Session, job_id: str, conditions: list[ColumnElement[bool]], values: dict[str, Any]
) -> bool:
    """One ``UPDATE jobs SET ... WHERE id = :id AND <conditions>``; True if it changed the row."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, *conditions)
        .values(values)
        .execution_options(synchronize_session="fetch")
    )
    return affected_rows(result) == 1


def _check_status(status: str) -> None:
    """Refuse a status outside the state machine before it reaches SQL."""
    if status not in JOB_STATUSES:
        raise ValueError(f"unknown job status {status!r}; expected one of {JOB_STATUSES}")
