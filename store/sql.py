"""Small SQL helpers shared by the repository modules.

``upsert_insert`` is the one place where SQL differs by backend: PostgreSQL
and SQLite spell INSERT ... ON CONFLICT the same way but through separate
constructs; both expose ``on_conflict_do_nothing`` and ``on_conflict_do_update``
with the same arguments, so callers write one statement for both.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Result
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from embedmix.store.models import Base


def upsert_insert(session: Session, model: type[Base]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for ``model`` that supports ON CONFLICT on the session's backend."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"no upsert support for database {dialect!r}")


def affected_rows(result: Result[Any]) -> int:
    """How many rows an INSERT, UPDATE or DELETE changed (guarded writes test this for 1)."""
    return cast(CursorResult[Any], result).rowcount
