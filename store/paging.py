"""Keyset paging, newest first, with opaque cursors.

A cursor names the last row of a page by (created_at, id). The next page is
everything strictly older in that order, so rows inserted meanwhile never shift
a page and no row is returned twice or skipped, unlike OFFSET paging.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

MAX_PAGE = 1000
# The row ids cursors name (job_..., ds_...): anything else, a NUL or a lone surrogate
# above all, would reach the database's comparison and fail there rather than here.
_ROW_ID = re.compile(r"[A-Za-z0-9_]{1,64}")


class InvalidCursor(ValueError):
    """The cursor was not made by us (or was damaged in transit): a client error, not a server one."""


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """An opaque token for the position just after the row (created_at, row_id)."""
    raw = json.dumps([created_at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Undo :func:`encode_cursor`, refusing anything it could not have produced."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        moment = datetime.fromisoformat(created_at)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor(f"invalid cursor {cursor!r}") from exc
    if moment.tzinfo is None or not isinstance(row_id, str) or not _ROW_ID.fullmatch(row_id):
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return moment, row_id


def check_limit(limit: int) -> None:
    """Refuse page sizes that are empty or large enough to hurt the database."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")


def page(
    session: Session,
    query: Select[Any],
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[str],
    limit: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """One page of ``query``, newest first, and the cursor of the next page (None on the last)."""
    check_limit(limit)
    if cursor is not None:
        after_time, after_id = decode_cursor(cursor)
        query = query.where(
            or_(created_at < after_time, and_(created_at == after_time, row_id < after_id))
        )
    query = query.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(getattr(last, created_at.key), getattr(last, row_id.key))
