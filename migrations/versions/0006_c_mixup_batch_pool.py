"""C-Mixup specs stored before `partner_pool` existed say the pool they ran with: the batch.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

`mixup.params.partner_pool` was added with the default "train_set" (the official
C-Mixup code draws partners from the whole training set); before it, C-Mixup drew
partners from the batch. Specs are stored resolved, and the worker resolves them
again when it runs them, so a c_mixup job or sweep stored before this revision
would now be filled in with "train_set": a queued job would run something other
than it was submitted as, and a resumed one would change pools mid-run. The
upgrade writes the pool they had, "batch", where the parameter is missing.
The downgrade removes "batch" (the only pool the old code knows, which it ran
anyway) and leaves "train_set", which the old code then refuses instead of
silently running the batch pool.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TABLES = ("jobs", "sweeps")


def _c_mixup_params(spec: Any) -> dict[str, Any] | None:
    mixup = spec.get("mixup") if isinstance(spec, dict) else None
    if not isinstance(mixup, dict) or mixup.get("method") != "c_mixup":
        return None
    params = mixup.get("params")
    return params if isinstance(params, dict) else {}


def with_batch_pool(spec: Any) -> dict[str, Any] | None:
    """The spec with partner_pool "batch" when it is a c_mixup spec without one; None if unchanged."""
    params = _c_mixup_params(spec)
    if params is None or "partner_pool" in params:
        return None
    return {**spec, "mixup": {**spec["mixup"], "params": {**params, "partner_pool": "batch"}}}


def without_batch_pool(spec: Any) -> dict[str, Any] | None:
    """The spec without partner_pool "batch"; None if unchanged."""
    params = _c_mixup_params(spec)
    if params is None or params.get("partner_pool") != "batch":
        return None
    kept = {k: v for k, v in params.items() if k != "partner_pool"}
    return {**spec, "mixup": {**spec["mixup"], "params": kept}}


def _rewrite(change) -> None:
    connection = op.get_bind()
    for name in TABLES:
        table = sa.table(name, sa.column("id", sa.String), sa.column("spec", JSON))
        for row_id, spec in connection.execute(sa.select(table.c.id, table.c.spec)).all():
            new = change(spec)
            if new is not None:
                connection.execute(sa.update(table).where(table.c.id == row_id).values(spec=new))


def upgrade() -> None:
    _rewrite(with_batch_pool)


def downgrade() -> None:
    _rewrite(without_batch_pool)
