"""Artifacts may be kept in S3: the backend CHECK admits 's3'.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

The constraint is dropped and created again under the same name (on SQLite,
batch mode rebuilds the table). 0001 created it as
``ck_artifacts_ck_artifacts_backend``: the naming convention prefixed the given
name once more, and that is the name databases have. A downgrade fails while
any artifact is kept in S3: move those first.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Admit 's3' as an artifact backend."""
    _replace_backend_check("backend IN ('db', 'fs', 's3')")


def downgrade() -> None:
    """Back to database and filesystem artifacts only."""
    _replace_backend_check("backend IN ('db', 'fs')")


def _replace_backend_check(condition: str) -> None:
    name = op.f("ck_artifacts_ck_artifacts_backend")
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_constraint(name, type_="check")
        batch.create_check_constraint(name, condition)
