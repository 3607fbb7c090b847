"""Sweeps: submission with idempotency, owner-scoped reads, the controller's lease, and the trial rows.

A sweep's state changes are guarded UPDATEs, as a job's are (``store.jobs``):
``queued -> running -> succeeded | failed``, and ``queued | running ->
cancelled``; a terminal state is never left. The controller that drives a
sweep holds its lease (``lease_owner``, ``lease_expires_at``) exactly as a
worker holds a job's: claimed when free or expired, renewed while alive, so
one process at a time asks the study for trials.

A trial row is written in the transaction that creates its job
(:func:`add_trial`), so a trial number never gets two jobs, and its state is
made final (:func:`settle_trial`) before the result is told to the study; a
controller that restarts tells the study what the rows say and nothing twice.

The space's semantics that both the API (validation) and the controller (the
trials' specs) need are here too: :func:`apply_params`, :func:`path_exists`,
:func:`grid_values`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, exists, func, or_, select, update
from sqlalchemy.orm import Session

from embedmix.service.ids import SWEEP_PREFIX, new_id
from embedmix.store.jobs import request_cancel
from embedmix.store.models import (
    ACTIVE_STATUSES,
    SWEEP_STATUSES,
    Job,
    Metric,
    Sweep,
    SweepTrial,
    utcnow,
)
from embedmix.store.paging import check_limit, page
from embedmix.store.sql import affected_rows, upsert_insert

ACTIVE_SWEEP_STATUSES = ("queued", "running")
MAX_GRID_POINTS = 10_000  # the grid sampler holds every point of the whole grid in memory
FINAL_TRIAL_STATES = ("complete", "pruned", "failed")


class SweepIdempotencyConflict(Exception):
    """The idempotency key was already used for a different sweep body (HTTP 409)."""

    def __init__(self, sweep_id: str) -> None:
        super().__init__(f"idempotency key already used for sweep {sweep_id} with a different request")
        self.sweep_id = sweep_id


# -- the space ---------------------------------------------------------------------------------


def path_exists(spec: dict[str, Any], path: str) -> bool:
    """Whether the dotted ``path`` names a field of the (resolved) spec that holds a single value."""
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, (dict, list))


def apply_params(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``spec`` with each dotted path set to its value (the paths exist: see :func:`path_exists`)."""
    result = json.loads(json.dumps(spec))
    for path, value in params.items():
        *parents, leaf = path.split(".")
        node = result
        for part in parents:
            node = node[part]
        node[leaf] = value
    return result


def grid_values(param: dict[str, Any]) -> list[Any] | None:
    """Every value a grid visits for one parameter of the space: its choices, or its range by ``step``.

    ``None`` when the parameter has no finite grid (a float range without a
    step); ValueError past :data:`MAX_GRID_POINTS` values, before any is made.
    """
    if param["type"] == "categorical":
        return list(param["choices"])
    step = param.get("step") or (1 if param["type"] == "int" else None)
    if step is None:
        return None
    count = int((param["high"] - param["low"]) // step) + 1
    if count > MAX_GRID_POINTS:
        raise ValueError(f"{count} grid points; a grid has at most {MAX_GRID_POINTS}")
    values = [param["low"] + i * step for i in range(count)]
    return [int(v) for v in values] if param["type"] == "int" else [round(v, 12) for v in values]


def spec_hash(spec: dict[str, Any]) -> str:
    """A trial job's request identity for its idempotency key: the spec's JSON value."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def trial_idempotency_key(sweep_id: str, number: int) -> str:
    """The idempotency key of a trial's job: the same sweep and number can only ever make one job."""
    return f"sweep:{sweep_id}:trial:{number}"


# -- sweeps ------------------------------------------------------------------------------------


def create_sweep(
    session: Session,
    owner_id: int,
    *,
    name: str,
    spec: dict[str, Any],
    config: dict[str, Any],
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[Sweep, bool]:
    """Store a queued sweep; returns ``(sweep, created)``, with the same idempotency rules as jobs."""
    if idempotency_key is not None and request_hash is None:
        raise ValueError("an idempotency key needs the request hash it guards")
    sweep_id = new_id(SWEEP_PREFIX)
    insert = upsert_insert(session, Sweep).values(
        id=sweep_id,
        owner_id=owner_id,
        name=name,
        status="queued",
        spec=spec,
        config=config,
        created_at=utcnow(),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    result = session.execute(insert.on_conflict_do_nothing(index_elements=["owner_id", "idempotency_key"]))
    if affected_rows(result) == 1:
        return session.get_one(Sweep, sweep_id), True
    existing = find_idempotent_sweep(session, owner_id, idempotency_key or "")
    assert existing is not None  # the insert conflicted on (owner, key)
    if existing.request_hash != request_hash:
        raise SweepIdempotencyConflict(existing.id)
    return existing, False


def find_idempotent_sweep(session: Session, owner_id: int, idempotency_key: str) -> Sweep | None:
    query = select(Sweep).where(Sweep.owner_id == owner_id, Sweep.idempotency_key == idempotency_key)
    return session.scalars(query).first()


def get_sweep(session: Session, owner_id: int, sweep_id: str) -> Sweep | None:
    """The owner's sweep, or None if it does not exist or belongs to someone else (both are 404)."""
    return session.scalars(select(Sweep).where(Sweep.id == sweep_id, Sweep.owner_id == owner_id)).first()


def get_sweep_unscoped(session: Session, sweep_id: str) -> Sweep | None:
    """Any owner's sweep: for the controller only, never for a request handler."""
    return session.get(Sweep, sweep_id, populate_existing=True)


def list_sweeps(
    session: Session, owner_id: int, *, status: str | None = None, limit: int = 20, cursor: str | None = None
) -> tuple[list[Sweep], str | None]:
    """The owner's sweeps, newest first; returns ``(rows, next_cursor)``."""
    query = select(Sweep).where(Sweep.owner_id == owner_id)
    if status is not None:
        if status not in SWEEP_STATUSES:
            raise ValueError(f"unknown sweep status {status!r}")
        query = query.where(Sweep.status == status)
    return page(session, query, Sweep.created_at, Sweep.id, limit, cursor)


def start_sweep(session: Session, sweep_id: str) -> bool:
    """queued -> running, stamping ``started_at``; False if it was not queued."""
    return _guarded(session, sweep_id, [Sweep.status == "queued"], {"status": "running", "started_at": utcnow()})


def finish_sweep(session: Session, sweep_id: str, status: str, *, error: dict[str, Any] | None = None) -> bool:
    """running -> succeeded or failed; False if it was cancelled meanwhile (the cancel wins)."""
    if status not in ("succeeded", "failed"):
        raise ValueError(f"a sweep finishes as succeeded or failed, not {status!r}")
    values = {"status": status, "finished_at": utcnow(), "error": error}
    return _guarded(session, sweep_id, [Sweep.status.in_(ACTIVE_SWEEP_STATUSES)], values)


def set_best(session: Session, sweep_id: str, best: dict[str, Any] | None) -> None:
    """Record the best complete trial so far (``{"trial", "value", "params", "job_id"}``)."""
    session.execute(update(Sweep).where(Sweep.id == sweep_id).values(best=best))


def cancel_sweep(session: Session, sweep: Sweep) -> Sweep:
    """Cancel a queued or running sweep and ask each of its active trial jobs to stop (the cancel path of jobs).

    The UPDATE comes first: it locks the sweep's row (on SQLite the database),
    so a controller launching a trial at the same moment either committed
    before it (its job is found and cancelled here) or finds the sweep
    cancelled and launches nothing (see :func:`sweep_is_active_locked`).
    A sweep already finished is returned unchanged.
    """
    if _guarded(
        session, sweep.id, [Sweep.status.in_(ACTIVE_SWEEP_STATUSES)], {"status": "cancelled", "finished_at": utcnow()}
    ):
        for job_id in active_trial_jobs(session, sweep.id):
            request_cancel(session, sweep.owner_id, job_id)
    session.refresh(sweep)
    return sweep


def sweep_is_active_locked(session: Session, sweep_id: str) -> bool:
    """The sweep is still queued or running, read under its row lock (call it after the transaction's writes).

    On PostgreSQL ``FOR UPDATE`` waits for a cancel in flight; on SQLite the
    transaction's earlier write already holds the database's write lock.
    """
    query = select(Sweep.status).where(Sweep.id == sweep_id).with_for_update()
    return session.scalars(query).first() in ACTIVE_SWEEP_STATUSES


# -- the controller's lease --------------------------------------------------------------------


def sweeps_to_drive(session: Session) -> list[str]:
    """Sweeps a controller has work on: queued or running ones, and cancelled ones with trials not yet settled."""
    unsettled = exists().where(SweepTrial.sweep_id == Sweep.id, SweepTrial.state == "running")
    query = (
        select(Sweep.id)
        .where(or_(Sweep.status.in_(ACTIVE_SWEEP_STATUSES), (Sweep.status == "cancelled") & unsettled))
        .order_by(Sweep.created_at)
    )
    return list(session.scalars(query))


def claim_sweep_lease(
    session: Session, sweep_id: str, owner_token: str, ttl_s: float, *, now: datetime | None = None
) -> bool:
    """Take or extend the sweep's lease for ``ttl_s`` seconds; False if another controller holds it.

    Its holder calls it again before each step that must not happen twice (asking
    the study for a trial): an expired lease that nobody took is still its own.
    """
    now = now or utcnow()
    free = or_(Sweep.lease_expires_at.is_(None), Sweep.lease_expires_at <= now, Sweep.lease_owner == owner_token)
    values = {"lease_owner": owner_token, "lease_expires_at": now + timedelta(seconds=ttl_s)}
    return _guarded(session, sweep_id, [free], values)


def release_sweep_lease(session: Session, sweep_id: str, owner_token: str) -> bool:
    """Give the lease up (the sweep needs no more work); False if it was not held."""
    values = {"lease_owner": None, "lease_expires_at": None}
    return _guarded(session, sweep_id, [Sweep.lease_owner == owner_token], values)


# -- trials ------------------------------------------------------------------------------------


def add_trial(
    session: Session,
    sweep_id: str,
    number: int,
    params: dict[str, Any],
    *,
    job_id: str | None,
    state: str = "running",
    error: dict[str, Any] | None = None,
) -> SweepTrial:
    """The row of a trial: written with its job, or already failed when no job could be made for it."""
    finished = utcnow() if state in FINAL_TRIAL_STATES else None
    trial = SweepTrial(
        sweep_id=sweep_id, number=number, job_id=job_id, params=params, state=state, error=error, finished_at=finished
    )
    session.add(trial)
    session.flush()
    return trial


def list_trials(session: Session, sweep_id: str, *, after: int = -1, limit: int = 1000) -> list[SweepTrial]:
    """The sweep's trials by number, from ``after`` + 1 on."""
    check_limit(limit)
    query = (
        select(SweepTrial)
        .where(SweepTrial.sweep_id == sweep_id, SweepTrial.number > after)
        .order_by(SweepTrial.number)
        .limit(limit)
    )
    return list(session.scalars(query))


def settle_trial(
    session: Session,
    sweep_id: str,
    number: int,
    state: str,
    *,
    value: float | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """running -> complete, pruned or failed (the decision, written before the study is told); False if final."""
    if state not in FINAL_TRIAL_STATES:
        raise ValueError(f"a trial settles as one of {FINAL_TRIAL_STATES}, not {state!r}")
    result = session.execute(
        update(SweepTrial)
        .where(SweepTrial.sweep_id == sweep_id, SweepTrial.number == number, SweepTrial.state == "running")
        .values(state=state, value=value, error=error, finished_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    return affected_rows(result) == 1


def active_trial_jobs(session: Session, sweep_id: str) -> list[str]:
    """The sweep's trial jobs that are queued, running or cancelling: what occupies its parallel slots."""
    query = (
        select(Job.id)
        .join(SweepTrial, SweepTrial.job_id == Job.id)
        .where(SweepTrial.sweep_id == sweep_id, Job.status.in_(ACTIVE_STATUSES))
    )
    return list(session.scalars(query))


def count_trials(session: Session, sweep_id: str) -> dict[str, int]:
    """How many of the sweep's trials are in each state."""
    query = (
        select(SweepTrial.state, func.count())
        .where(SweepTrial.sweep_id == sweep_id)
        .group_by(SweepTrial.state)
    )
    return {state: count for state, count in session.execute(query)}


def metric_series(session: Session, job_ids: list[str], name: str) -> dict[str, list[Metric]]:
    """Each job's points of one series (``eval/<metric>``), by step: a page of trials' intermediate values."""
    series: dict[str, list[Metric]] = {job_id: [] for job_id in job_ids}
    if not job_ids:
        return series
    query = select(Metric).where(Metric.job_id.in_(job_ids), Metric.name == name).order_by(Metric.step)
    for point in session.scalars(query):
        series[point.job_id].append(point)
    return series


def _guarded(session: Session, sweep_id: str, conditions: list[ColumnElement[bool]], values: dict[str, Any]) -> bool:
    """One ``UPDATE sweeps SET ... WHERE id = :id AND <conditions>``; True if it changed the row."""
    result = session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, *conditions)
        .values(values)
        .execution_options(synchronize_session="fetch")
    )
    return affected_rows(result) == 1
