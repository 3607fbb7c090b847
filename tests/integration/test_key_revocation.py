"""Revoking a key when API processes cache keys: another process that cached it refuses it
within moments, and while Redis is out of reach no process answers from its cache at all.

Each test runs two (or one) real applications on one database and a redis-server of
its own, which it kills and restarts.
"""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from api.app import create_app
from store import make_engine, make_session_factory, revoke_api_key
from service.settings import Settings
from tests.conftest import RedisServer, wait_for
from tests.integration.conftest import owner_with_keys


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def listening(client: TestClient) -> bool:
    return client.app.state.runtime.keys.trusted  # type: ignore[attr-defined]


def test_a_key_revoked_through_one_api_process_is_refused_by_another_at_once(app_settings: Settings) -> None:
    _, [(revoked_id, revoked), (_, kept)] = owner_with_keys(app_settings, 2)
    with TestClient(create_app(app_settings)) as a, TestClient(create_app(app_settings)) as b:
        wait_for(lambda: listening(a) and listening(b), 10, "both apps to hear revocations")
        assert b.get("/v1/jobs", headers=auth(revoked)).status_code == 200
        assert b.app.state.runtime.keys.get(revoked) is not None  # type: ignore[attr-defined]

        assert a.delete(f"/v1/keys/{revoked_id}", headers=auth(kept)).status_code == 200
        revoked_at = time.monotonic()
        wait_for(lambda: b.get("/v1/jobs", headers=auth(revoked)).status_code == 401, 5, "b to refuse the key")
        assert time.monotonic() - revoked_at < 1.0
        assert b.get("/v1/jobs", headers=auth(kept)).status_code == 200  # the owner's other key still works


def test_while_redis_is_away_keys_are_checked_in_the_database_every_time(
    app_settings: Settings, redis_server: RedisServer
) -> None:
    owner_id, [(first_id, first), (second_id, second), (_, third)] = owner_with_keys(app_settings, 3)
    with TestClient(create_app(app_settings)) as app:
        wait_for(lambda: listening(app), 10, "the app to hear revocations")
        for key in (first, second):
            assert app.get("/v1/jobs", headers=auth(key)).status_code == 200

        redis_server.kill()
        wait_for(lambda: not listening(app), 10, "the app to notice Redis is gone")
        # A revocation nobody could announce (made straight in the database) takes effect at once...
        engine = make_engine(app_settings.database_url)
        with make_session_factory(engine)() as session:
            assert revoke_api_key(session, owner_id, first_id)
            session.commit()
        engine.dispose()
        assert app.get("/v1/jobs", headers=auth(first)).status_code == 401
        # ...and so does one through the API, which cannot announce it either.
        assert app.delete(f"/v1/keys/{second_id}", headers=auth(third)).status_code == 200
        assert app.get("/v1/jobs", headers=auth(second)).status_code == 401

        redis_server.start()
        wait_for(lambda: listening(app), 10, "the app to hear revocations again")
        assert app.get("/v1/jobs", headers=auth(third)).status_code == 200
        assert app.get("/v1/jobs", headers=auth(first)).status_code == 401
