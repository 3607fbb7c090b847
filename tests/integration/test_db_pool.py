"""The connection pool on PostgreSQL: a pooled connection the server dropped while it sat idle
is replaced before anyone uses it, and a connection in steady use costs no ping.

The pool's idea of time is a clock the test moves by hand, so "idle" and "in steady use" are
what the test says they are, not what a loaded machine's scheduler makes of them.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import text

import embedmix.store.db
from embedmix.store.db import make_engine
from tests.conftest import wait_for


def test_a_connection_dropped_while_idle_is_replaced_and_a_busy_one_is_not_pinged(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(embedmix.store.db, "time", SimpleNamespace(monotonic=lambda: now[0]))
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
        for _ in range(5):  # back to back: idle for less than PING_AFTER_IDLE_S each time
            now[0] += embedmix.store.db.PING_AFTER_IDLE_S / 2
            with engine.connect() as connection:
                assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() == first_pid
        assert pings == []

        with admin.connect() as connection:  # the server drops the pooled connection
            assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid}).scalar_one()

        def gone() -> bool:
            with admin.connect() as connection:
                query = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
                return connection.execute(query, {"pid": first_pid}).scalar_one() == 0

        wait_for(gone, 60, f"backend {first_pid} to exit")
        now[0] += embedmix.store.db.PING_AFTER_IDLE_S * 2  # it has sat idle past the threshold
        with engine.connect() as connection:  # pinged, found dead, replaced: no error reaches us
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != first_pid
        assert pings == ["ping"]
    finally:
        engine.dispose()
        admin.dispose()
