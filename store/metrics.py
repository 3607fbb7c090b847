"""Metric series keyed by (job, name, step).

Writes are batched UPSERTs: a resumed attempt that replays steps overwrites
the points it had written before instead of adding duplicates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from embedmix.store.models import Metric, utcnow
from embedmix.store.paging import check_limit
from embedmix.store.sql import upsert_insert


@dataclass(frozen=True)
class MetricPoint:
    """One value of one series; ``time`` defaults to the moment it is written."""

    name: str
    step: int
    value: float
    epoch: int | None = None
    time: datetime | None = None


def upsert_metrics(session: Session, job_id: str, points: Iterable[MetricPoint]) -> int:
    """Write points, overwriting any with the same (name, step); returns how many were written.

    Within one batch the last point for a (name, step) wins (PostgreSQL refuses
    to update one row twice in a statement). Non-finite values are refused:
    neither SQLite nor JSON can carry NaN, so a diverged loss must be reported
    as an event or a failure instead.
    """
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for point in points:
        if not math.isfinite(point.value):
            raise ValueError(f"metric {point.name!r} at step {point.step} is {point.value}")
        rows[point.name, point.step] = {
            "job_id": job_id,
            "name": point.name,
            "step": point.step,
            "epoch": point.epoch,
            "value": float(point.value),
            "time": point.time or utcnow(),
        }
    if not rows:
        return 0
    insert = upsert_insert(session, Metric)
    statement = insert.on_conflict_do_update(
        index_elements=["job_id", "name", "step"],
        set_={
            "value": insert.excluded.value,
            "epoch": insert.excluded.epoch,
            "time": insert.excluded.time,
        },
    )
    session.execute(statement, list(rows.values()))
    return len(rows)


def list_metrics(
    session: Session,
    job_id: str,
    *,
    name: str | None = None,
    since_step: int | None = None,
    limit: int = 1000,
) -> list[Metric]:
    """Points after ``since_step`` ordered by (step, name), optionally of one series.

    A page never ends inside a step: if the limit falls among the points of
    one step, the rest of that step is included, so asking again with
    ``since_step`` = the last step seen loses nothing.
    """
    check_limit(limit)
    query = select(Metric).where(Metric.job_id == job_id)
    if name is not None:
        query = query.where(Metric.name == name)
    if since_step is not None:
        query = query.where(Metric.step > since_step)
    ordered = query.order_by(Metric.step, Metric.name)
    points = list(session.scalars(ordered.limit(limit)))
    if len(points) == limit:
        last = points[-1]
        points += session.scalars(ordered.where(Metric.step == last.step, Metric.name > last.name))
    return points


def latest_metrics(session: Session, job_id: str, *, prefix: str | None = None) -> dict[str, float]:
    """Each series' value at its highest step, e.g. ``{"eval/map_at_r": 0.71}`` with prefix ``"eval/"``."""
    last_steps = select(Metric.name, func.max(Metric.step).label("step")).where(
        Metric.job_id == job_id
    )
    if prefix is not None:
        last_steps = last_steps.where(Metric.name.startswith(prefix, autoescape=True))
    last = last_steps.group_by(Metric.name).subquery()
    query = (
        select(Metric.name, Metric.value)
        .join(last, (Metric.name == last.c.name) & (Metric.step == last.c.step))
        .where(Metric.job_id == job_id)
    )
    return {name: value for name, value in session.execute(query)}
