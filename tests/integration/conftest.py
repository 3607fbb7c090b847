"""Fresh databases for store tests, on SQLite (a temporary file) and on a real PostgreSQL.

PostgreSQL: the server at ``EMBEDMIX_TEST_POSTGRES_URL`` (default: the ``test``
database on 127.0.0.1:5432 as user postgres) is used only to CREATE and DROP
uniquely named throwaway databases; no other database is touched. One migrated
database serves the whole session (its tables are emptied before each test);
tests that need a database with no schema at all get their own. When the
server cannot be reached, the PostgreSQL variants are skipped, saying why.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from store.db import make_engine, make_session_factory, migrate
from store.models import Base

POSTGRES_SERVER_URL = os.environ.get(
    "EMBEDMIX_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", "postgresql"]


class PostgresServer:
    """Creates and drops throwaway databases through an AUTOCOMMIT connection (CREATE DATABASE needs one)."""

    def __init__(self, admin: Engine) -> None:
        self.admin = admin

    def create_database(self, label: str) -> str:
        """A new empty database with a unique name; returns its URL."""
        name = f"embedmix_test_{label}_{os.getpid()}_{secrets.token_hex(4)}"
        with self.admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        return (
            make_url(POSTGRES_SERVER_URL).set(database=name).render_as_string(hide_password=False)
        )

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, closing any connection left open."""
        name = make_url(url).database
        assert name is not None and name.startswith("embedmix_test_")
        with self.admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server, or a skip naming the reason it cannot be used."""
    admin = create_engine(
        POSTGRES_SERVER_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except DBAPIError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL unreachable at {make_url(POSTGRES_SERVER_URL)!r}: {exc}")
    yield PostgresServer(admin)
    admin.dispose()


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
