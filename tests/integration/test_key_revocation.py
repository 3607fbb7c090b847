"""Revoking a key when API processes cache keys: another process that cached it refuses it
as soon as the announcement reaches it (not when its cache entry ages out), and while Redis
is out of reach no process answers from its cache at all.

Each test runs two (or one) real applications on one database and a redis-server of
its own, which it kills and restarts.
"""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from embedmix.api.app import create_app
from embedmix.store import make_engine, make_session_factory, revoke_api_key
from embedmix.service.settings import Settings
from tests.conftest import RedisServer, wait_for
from tests.integration.conftest import auth, owner_with_keys

# Generous: a wait fails only if the thing never happens, never because a loaded machine is slow.
DEADLINE_S = 60


def listening(client: TestClient) -> bool:
    return client.app.state.runtime.keys.trusted  # type: ignore[attr-defined]


def test_a_key_revoked_through_one_api_process_is_refused_by_another_once_announced(
    app_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cached keys live an hour here, far past any wait below: b can refuse the revoked key
    # only because a's announcement reached it, never because b's entry aged out.
    settings = app_settings.model_copy(update={"key_cache_s": 3600.0})
    owner_id, [(revoked_id, revoked), (_, kept)] = owner_with_keys(settings, 2)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        wait_for(lambda: listening(a) and listening(b), DEADLINE_S, "both apps to hear revocations")
        assert b.get("/v1/jobs", headers=auth(revoked)).status_code == 200
        cache = b.app.state.runtime.keys  # type: ignore[attr-defined]
        assert cache.get(revoked) is not None

        announced = threading.Event()  # set once b's listener has evicted the owner on a's message
        evict_owner = cache.evict_owner

        def evict_and_tell(evicted: int) -> None:
            evict_owner(evicted)
            if evicted == owner_id:
                announced.set()

        monkeypatch.setattr(cache, "evict_owner", evict_and_tell)
        assert a.delete(f"/v1/keys/{revoked_id}", headers=auth(kept)).status_code == 200
        assert announced.wait(DEADLINE_S), "the revocation was never announced to b"
        assert listening(b)  # the cache still answers: the message, not a lost connection, emptied it
        assert b.get("/v1/jobs", headers=auth(revoked)).status_code == 401
        assert b.get("/v1/jobs", headers=auth(kept)).status_code == 200  # the owner's other key still works


def test_while_redis_is_away_keys_are_checked_in_the_database_every_time(
    app_settings: Settings, redis_server: RedisServer
) -> None:
    owner_id, [(first_id, first), (second_id, second), (_, third)] = owner_with_keys(app_settings, 3)
    with TestClient(create_app(app_settings)) as app:
        wait_for(lambda: listening(app), DEADLINE_S, "the app to hear revocations")
        for key in (first, second):
            assert app.get("/v1/jobs", headers=auth(key)).status_code == 200

        redis_server.kill()
        wait_for(lambda: not listening(app), DEADLINE_S, "the app to notice Redis is gone")
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
        wait_for(lambda: listening(app), DEADLINE_S, "the app to hear revocations again")
        assert app.get("/v1/jobs", headers=auth(third)).status_code == 200
        assert app.get("/v1/jobs", headers=auth(first)).status_code == 401
