"""Stored specs keep only the common mixing fields their method uses.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

Specs are stored resolved since this revision's release, and a field a mixing
method does not use is refused instead of ignored. Specs stored before it carry
``alpha``, ``level`` and ``weight`` for every method (the old schema's defaults,
1.0 / null / 1.0), so a queued or re-queued job would now fail validation in the
worker. Those fields were never read by the methods that do not use them, so
dropping them changes no run; a null is dropped too (resolution fills the
method's default). The fields a method does use are kept as stored: they are
what it trained with. The table below is this revision's, not the catalog's,
so the migration means the same thing whatever the catalog becomes. The
downgrade leaves the specs as they are (the old schema accepts them).
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")

USES: dict[str, tuple[str, ...]] = {
    "input": ("alpha", "level"), "manifold": ("alpha", "level"), "embedding": ("alpha", "level"),
    "cutmix": ("alpha", "level"), "metrix": ("alpha", "level", "weight"), "supremix": ("level",),
    "decoupled_mixup": ("alpha", "level", "weight"), "moco": (), "mochi": ("level",),
    "c_mixup": ("alpha", "level"), "rankmixup": ("alpha", "level", "weight"),
    "mixed_barlow_twins": ("alpha", "level", "weight"), "mixoe": ("alpha", "level", "weight"),
}
COMMON = ("alpha", "level", "weight")


def trimmed(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The spec without the common mixing fields its method does not use or leaves null; None if unchanged."""
    mixup = spec.get("mixup")
    if not isinstance(mixup, dict) or mixup.get("method") not in USES:
        return None
    used = USES[mixup["method"]]
    kept = {k: v for k, v in mixup.items() if k not in COMMON or (k in used and v is not None)}
    return None if kept == mixup else {**spec, "mixup": kept}


def upgrade() -> None:
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", JSON))
    connection = op.get_bind()
    for job_id, spec in connection.execute(sa.select(jobs.c.id, jobs.c.spec)).all():
        new = trimmed(spec)
        if new is not None:
            connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(spec=new))


def downgrade() -> None:
    """Nothing to undo: the old schema accepts the trimmed specs."""
