"""A job's embedding map is pointed at from its row: ``jobs.projection``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

The worker now stores the map in the transaction that makes the job
succeeded and records ``{"artifact_id", "sha256", "bytes", "methods"}`` on the
job, so a finalize that never commits leaves neither the map nor a pointer.
Jobs that succeeded before this revision named their map with a ``projection``
event instead; the column stays null for them and the API still reads the
event. A nullable column needs no table rebuild on SQLite. A downgrade drops
the column, and with it the pointers of jobs finished since (their maps stay
as artifacts without a pointer).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    """Add the job's pointer to its embedding map."""
    op.add_column("jobs", sa.Column("projection", JSON, nullable=True))


def downgrade() -> None:
    """Drop the pointer (batch mode rebuilds the table on SQLite)."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("projection")
