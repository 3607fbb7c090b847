"""The reaper against a broker that is down: a send that failed is never recorded, and the next pass sends it.

The broker is a redis-server of this test's own, killed for real; the
database is SQLite and PostgreSQL (the reaper holds the claim's transaction
open while it sends, which the two lock differently).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from embedmix.service.queue import TRAIN_QUEUE
from embedmix.service.settings import Settings
from embedmix.store import (
    claim_lease,
    create_job,
    create_owner,
    get_job_unscoped,
    list_events,
    transition,
)
from embedmix.store.db import make_engine, make_session_factory, migrate
from embedmix.store.models import Job, utcnow
from tests.chaos.conftest import SPEC
from tests.conftest import RedisServer
from embedmix.worker.celery_app import EmbedmixCelery, create_app
from embedmix.worker.events import ENQUEUED
from embedmix.worker.reaper import reap_once

LOST_AFTER_S = 60.0


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("shared_database"))
    url = f"sqlite:///{tmp_path / 'reaper.db'}"
    migrate(url)
    return url


@pytest.fixture
def session_factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def reaper_app(database_url: str, redis_server: RedisServer) -> Iterator[EmbedmixCelery]:
    app = create_app(Settings(database_url=database_url, redis_url=redis_server.url))
    yield app
    app.close()


def _submit(session_factory: sessionmaker[Session]) -> str:
    with session_factory() as session:
        owner = create_owner(session, "owner")
        job, _ = create_job(session, owner.id, SPEC, name="reaper", max_attempts=3)
        session.commit()
        return job.id


def _with_expired_lease(session_factory: sessionmaker[Session]) -> str:
    """A running job whose worker vanished a minute ago."""
    job_id = _submit(session_factory)
    with session_factory() as session:
        assert claim_lease(session, job_id, "dead-worker", ttl_s=5, now=utcnow() - timedelta(seconds=60))
        assert transition(session, job_id, ["queued"], "running")
        session.commit()
    return job_id


def _job(session_factory: sessionmaker[Session], job_id: str) -> Job:
    with session_factory() as session:
        job = get_job_unscoped(session, job_id)
        assert job is not None
        return job


def _sends(session_factory: sessionmaker[Session], job_id: str) -> list[str]:
    with session_factory() as session:
        return [e.message for e in list_events(session, job_id, limit=1000) if e.type == ENQUEUED]


def _queued(redis_server: RedisServer) -> int:
    client: redis.Redis = redis_server.client()
    try:
        return int(client.llen(TRAIN_QUEUE))
    finally:
        client.close()


def test_a_failed_send_is_not_recorded_and_the_next_pass_sends_it(
    session_factory: sessionmaker[Session], reaper_app: EmbedmixCelery, redis_server: RedisServer
) -> None:
    sf = session_factory
    reaped, lost = _with_expired_lease(sf), _submit(sf)
    before = _job(sf, reaped)
    later = utcnow() + timedelta(seconds=LOST_AFTER_S + 1)  # the unleased job now counts as lost
    redis_server.kill()

    assert reap_once(sf, reaper_app, lost_after_s=LOST_AFTER_S, now=later) == []

    assert _sends(sf, reaped) == [] and _sends(sf, lost) == []  # no "message re-sent" for a send that failed
    job = _job(sf, reaped)
    assert (job.status, job.attempts, job.lease_owner) == ("running", before.attempts, "dead-worker")  # for the next pass
    assert _job(sf, lost).status == "queued"

    redis_server.start()  # same port, empty: the broker is back
    assert sorted(reap_once(sf, reaper_app, lost_after_s=LOST_AFTER_S, now=later)) == sorted([reaped, lost])

    job = _job(sf, reaped)
    assert (job.status, job.attempts, job.lease_owner) == ("queued", before.attempts, None)
    assert len(_sends(sf, reaped)) == 1 and len(_sends(sf, lost)) == 1
    assert _queued(redis_server) == 2
    assert reap_once(sf, reaper_app, lost_after_s=LOST_AFTER_S, now=later) == []  # recorded: not sent twice
    assert _queued(redis_server) == 2
