"""The connection pool on PostgreSQL: a pooled connection the server dropped while it sat idle
is replaced before anyone uses it, and a connection in steady use costs no ping."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

import store.db
from store.db import make_engine


def test_a_connection_dropped_while_idle_is_replaced_and_a_busy_one_is_not_pinged(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.db, "PING_AFTER_IDLE_S", 0.2)
    engine, admin = make_engine(postgres_url, pool_size=1, max_overflow=0), make_engine(postgres_url)
    pings: list[str] = []
    original = engine.dialect.do_ping

    def counted_ping(dbapi_connection: object) -> bool:
        pings.append("ping")
        return original(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted_ping)
    try:
        with engine.connect() as connection:
            first_pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        for _ in range(5):  # back to back: well within the idle time
            with engine.connect() as connection:
                assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() == first_pid
        assert pings == []

        with admin.connect() as connection:  # the server drops the pooled connection
            assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid}).scalar_one()
        time.sleep(0.3)
        with engine.connect() as connection:  # pinged, found dead, replaced: no error reaches us
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != first_pid
        assert pings == ["ping"]
    finally:
        engine.dispose()
        admin.dispose()
