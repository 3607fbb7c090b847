"""Fresh databases for store tests, on SQLite (a temporary file) and on a real PostgreSQL.

PostgreSQL: the server at ``EMBEDMIX_TEST_POSTGRES_URL`` (default: the ``test``
database on 127.0.0.1:5432 as user postgres) is used only to CREATE and DROP
uniquely named throwaway databases; no other database is touched. One migrated
database serves the whole session (its tables are emptied before each test);
tests that need a database with no schema at all get their own. When the
server cannot be reached, the PostgreSQL variants are skipped, saying why
(in CI, where EMBEDMIX_REQUIRE_SERVICES is set, they fail: tests/conftest.py).

S3: a real S3 server (moto's, on a free loopback port) for the whole session;
each test that asks for one gets a bucket of its own.

Redis: tests that stop it, or must not share its channels, get a redis-server
of their own on a free port (``redis_server``, ``app_settings``).

An application per test: ``client`` (FastAPI's TestClient over ``create_app``),
``db`` (a session factory on the application's database) and ``keys`` (owners
alice and bob with a key each, a revoked key of alice's, the admin key) are
built from a ``settings`` fixture that each module (or directory) defines,
since each picks its own database backends and Redis database.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from embedmix.api import create_app
from embedmix.store import create_api_key, create_owner, revoke_api_key
from embedmix.store.artifacts import S3Artifacts
from embedmix.store.db import make_engine, make_session_factory, migrate
from embedmix.store.models import Base
from embedmix.service.settings import Settings
from tests.conftest import PostgresServer, RedisServer

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """One migrated throwaway PostgreSQL database for the whole session."""
    url = postgres_server.create_database("session")
    migrate(url)
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all, on each backend (for migration tests)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database("empty")
    yield url
    server.drop_database(url)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database with empty tables, on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        migrate(url)
        return url
    url = request.getfixturevalue("postgres_url")
    _empty_tables(url)
    return url


def _empty_tables(url: str) -> None:
    """Remove every row left by an earlier test and restart the id sequences."""
    engine = make_engine(url)
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as session:
        yield session


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3 server, with dummy credentials in the environment as the service would read them."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the session's S3 server."""
    name = f"embedmix-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_artifacts(s3_endpoint: str, s3_bucket: str) -> S3Artifacts:
    """An S3 artifact store under a prefix, as ``EMBEDMIX_ARTIFACTS=s3://bucket/prefix`` makes it."""
    return S3Artifacts(s3_bucket, "run/blobs", endpoint_url=s3_endpoint)


@pytest.fixture
def app_settings(database_url: str, redis_server: RedisServer, tmp_path: Path) -> Settings:
    """Settings for an application on ``database_url`` whose Redis is the test's own."""
    return Settings(database_url=database_url, redis_url=redis_server.url, artifacts="db", work_dir=str(tmp_path))


def owner_with_keys(settings: Settings, count: int) -> tuple[int, list[tuple[int, str]]]:
    """A new owner in the settings' database: its id and ``count`` (key id, key) pairs."""
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        owner = create_owner(session, f"owner-{secrets.token_hex(4)}")
        keys = [create_api_key(session, owner.id) for _ in range(count)]
        session.commit()
        owner_id, pairs = owner.id, [(row.id, plain) for row, plain in keys]
    engine.dispose()
    return owner_id, pairs


# -- an application per test, on the ``settings`` its module defines ------------------------


@dataclass
class Keys:
    alice: str
    bob: str
    revoked: str
    admin: str
    alice_id: int
    bob_id: int


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """An empty directory for the application's work files (uploads in flight)."""
    path = tmp_path / "scratch"
    path.mkdir()
    return path


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def db(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Direct access to the database the app uses, to seed and inspect rows."""
    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def keys(db: sessionmaker[Session], settings: Settings) -> Keys:
    """Owners alice and bob with a key each, a revoked key of alice's, and the settings' admin key."""
    with db() as session:
        alice = create_owner(session, "alice")
        bob = create_owner(session, "bob")
        _, alice_key = create_api_key(session, alice.id)
        _, bob_key = create_api_key(session, bob.id)
        revoked_row, revoked_key = create_api_key(session, alice.id)
        revoke_api_key(session, alice.id, revoked_row.id)
        session.commit()
        assert settings.admin_key is not None, "the module's settings need an admin_key"
        return Keys(alice_key, bob_key, revoked_key, settings.admin_key, alice.id, bob.id)
