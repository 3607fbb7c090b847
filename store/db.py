"""Engines, sessions and migrations: the only place that knows which database we talk to.

Repository functions take a :class:`~sqlalchemy.orm.Session` and never commit;
whoever opens the session (an API request, a worker step) decides where the
transaction ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Dialect, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

# What a database that is down, restarting or unreachable raises (InterfaceError: a connection
# closed under the driver; OperationalError: refused, dropped, timed out, or SQLite busy past its
# timeout). Callers that wait an outage out catch exactly these; any other error is a bug.
DATABASE_DOWN: tuple[type[Exception], ...] = (OperationalError, InterfaceError)

# Long enough for a writer to finish a 1 MiB chunk insert on a slow disk; short
# enough that a stuck lock surfaces as an error instead of a hang.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Per process: as many connections as the API runs requests at once on threads (FastAPI's
# pool of 40; the status poll's threads read through their own make_autocommit_engine), so a request waits for a thread, never
# for a connection (which times out as a 503). 20 stay open: a connection past them is
# closed when returned, and with only 10, polls from 16 clients opened and closed a
# backend per request. Two API processes and a few workers fit PostgreSQL's default of 100.
POOL_SIZE, POOL_OVERFLOW = 20, 24
# A connection back in the pool for longer than this is pinged before its next use.
PING_AFTER_IDLE_S = 1.0

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned for its backend.

    SQLite gets WAL (readers never block the writer), enforced foreign keys
    (off by default in SQLite) and a busy timeout (concurrent writers wait
    instead of failing at once). PostgreSQL connections that sat idle in the
    pool are pinged before use (:func:`_ping_if_idle`), so that one dropped by a
    database restart is replaced, not handed out.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database not in (None, "", ":memory:"):
        # Enough pooled connections for the API's thread pool under load: past the
        # pool, every request opens and closes a connection of its own (a backend
        # process on PostgreSQL), which costs more than the request itself.
        kwargs = {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW, **kwargs}
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    engine = create_engine(url, **kwargs)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle(engine.dialect))
    return engine


def make_autocommit_engine(url: str) -> Engine:
    """:func:`make_engine` with connections in autocommit from the start, for reads of one statement.

    The status poll's read is one SELECT: in a transaction it is three round
    trips (BEGIN, the SELECT, the ROLLBACK when the connection closes), here
    one. Set on the engine, not per connection with ``execution_options``,
    which would send a SET to restore the isolation level at every return to
    the pool.
    """
    return make_engine(url, isolation_level="AUTOCOMMIT")


def _note_checkin(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    connection_record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dialect: Dialect) -> Callable[[Any, ConnectionPoolEntry, PoolProxiedConnection], None]:
    """A checkout listener: ping a connection that was idle for over :data:`PING_AFTER_IDLE_S` before handing it out.

    ``pool_pre_ping`` would ping every checkout: a round trip per request, a
    tenth of a status poll's cost. A connection in steady use has just proved
    itself alive; and when the server goes away under load, the first request
    to meet the broken connection fails (a 503) and SQLAlchemy discards the
    whole pool. Raising ``DisconnectionError`` here makes the pool retry the
    checkout with a fresh connection.
    """

    def listener(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any DBAPI error: the connection is not worth keeping
            raise DisconnectionError(str(exc)) from exc

    return listener


def _configure_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    """Per-connection SQLite settings; they are not persistent, so each new connection needs them."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        # With WAL, NORMAL loses no committed data on an application crash and
        # avoids an fsync per commit.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def ping_database(engine: Engine, timeout_s: float) -> None:
    """``SELECT 1`` on a connection of its own, outside the engine's pool, given ``timeout_s`` to connect and answer.

    Readiness asks whether the database answers, not whether the pool has a
    connection free: a pool held by busy requests must neither delay the
    answer nor make it wrong. Raises what the driver raises.
    """
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    connection = engine.dialect.connect(*cargs, **{**cparams, **_timeouts(engine.dialect.name, cparams, timeout_s)})
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchall()
    finally:
        connection.close()


def _timeouts(dialect: str, cparams: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """The driver's connect and statement timeouts for ``timeout_s`` (libpq counts whole seconds, 2 at least)."""
    if dialect == "postgresql":
        statement = f"-c statement_timeout={int(timeout_s * 1000)}"
        options = f"{cparams['options']} {statement}" if cparams.get("options") else statement
        return {"connect_timeout": max(2, math.ceil(timeout_s)), "options": options}
    if dialect == "sqlite":
        return {"timeout": timeout_s}
    return {}


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (API handlers serialise them afterwards)."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration built in code, so migrating needs no ini file or working directory."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser treats '%' as interpolation; URL-escaped passwords contain it.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` (``embedmix up`` and the compose migrate service)."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()
