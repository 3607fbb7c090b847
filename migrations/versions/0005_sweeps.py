"""Sweeps: a hyper-parameter search over a base spec, and its trials (each an ordinary job).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

The Optuna study of each sweep is kept in Optuna's own tables in this same
database; Optuna creates them on first use (``optuna.storages.RDBStorage``), so
they are not part of this schema. Written out in full rather than importing
store.models, so that this revision keeps building the same tables.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the sweeps and sweep_trials tables."""
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("best", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", TIME, nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="ck_sweeps_status"
        ),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name="fk_sweeps_owner_id_owners", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
        sa.UniqueConstraint("owner_id", "idempotency_key", name="uq_sweeps_owner_id_idempotency_key"),
    )
    op.create_index("ix_sweeps_owner_id_created_at_id", "sweeps", ["owner_id", "created_at", "id"])
    op.create_index("ix_sweeps_status", "sweeps", ["status"])

    op.create_table(
        "sweep_trials",
        sa.Column("sweep_id", sa.String(32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("params", JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.CheckConstraint(
            "state IN ('running', 'complete', 'pruned', 'failed')", name="ck_sweep_trials_state"
        ),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name="fk_sweep_trials_sweep_id_sweeps", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_sweep_trials_job_id_jobs", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("sweep_id", "number", name="pk_sweep_trials"),
    )
    op.create_index("ix_sweep_trials_job_id", "sweep_trials", ["job_id"])


def downgrade() -> None:
    """Drop both tables (the sweeps' Optuna studies stay in Optuna's tables)."""
    op.drop_table("sweep_trials")
    op.drop_table("sweeps")
