"""Owners and their API keys.

A key is shown to its owner once, at creation, and only its sha256 is stored:
a leaked database does not leak working keys. Keys carry 256 random bits, so
an unsalted fast hash is enough (there is nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from embedmix.store.models import ApiKey, Owner, utcnow
from embedmix.store.sql import affected_rows

KEY_PREFIX = "em_"
DISPLAY_PREFIX_LENGTH = 8
# Writing last_used_at on every request would turn every read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# What any key we issue or accept looks like: the prefix, then printable ASCII.
_WELL_FORMED = re.compile(re.escape(KEY_PREFIX) + r"[\x21-\x7e]{1,253}")


def hash_key(key: str) -> str:
    """The stored form of a key: its sha256 as hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_owner(session: Session, name: str, *, is_admin: bool = False) -> Owner:
    """Add an owner; it can do nothing until it has a key (:func:`create_api_key`)."""
    owner = Owner(name=name, is_admin=is_admin)
    session.add(owner)
    session.flush()
    return owner


def get_owner(session: Session, owner_id: int) -> Owner | None:
    """The owner with this id, if any."""
    return session.get(Owner, owner_id)


def create_api_key(session: Session, owner_id: int) -> tuple[ApiKey, str]:
    """A new key for ``owner_id``: the stored row and the plain key, which is never retrievable again."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(owner_id=owner_id, prefix=plain[:DISPLAY_PREFIX_LENGTH], key_hash=hash_key(plain))
    session.add(key)
    session.flush()
    return key, plain


def list_api_keys(session: Session, owner_id: int) -> list[ApiKey]:
    """An owner's keys, revoked ones included, oldest first (only prefixes can be shown)."""
    query = select(ApiKey).where(ApiKey.owner_id == owner_id).order_by(ApiKey.id)
    return list(session.scalars(query))


def authenticate(session: Session, key: str, *, now: datetime | None = None) -> Owner | None:
    """The owner of ``key``, or None if the key is unknown, malformed or revoked.

    Candidates are found by their display prefix and confirmed with
    ``hmac.compare_digest`` on the hash, so that the comparison takes the same
    time however many characters match.
    """
    if not _WELL_FORMED.fullmatch(key):  # never send control characters or megabytes to the database
        return None
    presented = hash_key(key)
    candidates = session.scalars(
        select(ApiKey).where(
            ApiKey.prefix == key[:DISPLAY_PREFIX_LENGTH], ApiKey.revoked_at.is_(None)
        )
    )
    for candidate in candidates:
        if hmac.compare_digest(candidate.key_hash, presented):
            now = now or utcnow()
            if _stale(candidate.last_used_at, now):
                _touch(session, candidate.id, now)
            return session.get(Owner, candidate.owner_id)
    return None


def _stale(last_used_at: datetime | None, now: datetime) -> bool:
    """Whether the key's last use is older than the resolution: only then is a write worth its cost.

    Checked in Python first because most requests come well within the
    resolution, and an UPDATE per request, even one matching no row, takes
    SQLite's single write lock and costs PostgreSQL a write transaction.
    """
    if last_used_at is None:
        return True
    if last_used_at.tzinfo is None:  # SQLite hands back naive datetimes; they are stored as UTC
        last_used_at = last_used_at.replace(tzinfo=UTC)
    return last_used_at < now - LAST_USED_RESOLUTION


def _touch(session: Session, key_id: int, now: datetime) -> None:
    """Record use of a key, at most once per :data:`LAST_USED_RESOLUTION`."""
    session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key_id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session="fetch")
    )


def revoke_api_key(session: Session, owner_id: int, key_id: int) -> bool:
    """Revoke one of the owner's keys; False if it is not theirs or already revoked."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.owner_id == owner_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    return affected_rows(result) == 1


def ensure_admin_key(session: Session, plain: str, *, name: str = "admin") -> Owner:
    """Make `plain` a working admin key (the operator's EMBEDMIX_ADMIN_KEY, or `embedmix up`'s saved one).

    Idempotent: a restart with the same key finds it and changes nothing; a key that
    was revoked stays revoked (the operator must choose a new one).
    """
    if not plain.startswith(KEY_PREFIX) or len(plain) < 24:
        raise ValueError(f"an admin key must start with {KEY_PREFIX!r} and be at least 24 characters")
    existing = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(plain))).first()
    if existing is not None:
        owner = session.get(Owner, existing.owner_id)
        if existing.revoked_at is not None or owner is None or not owner.is_admin:
            raise ValueError("that admin key was revoked or belongs to a non-admin owner; choose a new one")
        return owner
    owner = session.scalars(select(Owner).where(Owner.is_admin.is_(True)).order_by(Owner.id)).first()
    owner = owner or create_owner(session, name, is_admin=True)
    session.add(ApiKey(owner_id=owner.id, prefix=plain[:DISPLAY_PREFIX_LENGTH], key_hash=hash_key(plain)))
    session.flush()
    return owner
