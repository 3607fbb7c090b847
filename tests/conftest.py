"""Fixtures shared by every test directory: throwaway PostgreSQL databases and redis-servers.

The server at ``EMBEDMIX_TEST_POSTGRES_URL`` (default: the ``test`` database on
127.0.0.1:5432 as user postgres) is used only to CREATE and DROP uniquely named
throwaway databases; no other database is touched.

When PostgreSQL, Redis or the redis-server program is missing, the tests that
need it are skipped, saying why, so that a laptop without them still runs the
rest. With ``EMBEDMIX_REQUIRE_SERVICES=1`` (which ``.ci/run`` sets) they fail
instead: in CI a missing server is a broken machine, not a reason to pass.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest
import redis
import uvicorn
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

POSTGRES_SERVER_URL = os.environ.get(
    "EMBEDMIX_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
REQUIRE_SERVICES = os.environ.get("EMBEDMIX_REQUIRE_SERVICES", "") not in ("", "0")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for want of a server or program, or fail it where they are required (CI)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (EMBEDMIX_REQUIRE_SERVICES is set: a missing server fails the run)", pytrace=False)
    pytest.skip(reason)


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
    """The PostgreSQL server, or a skip (a failure in CI) naming the reason it cannot be used."""
    admin = create_engine(
        POSTGRES_SERVER_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except DBAPIError as exc:
        admin.dispose()
        unavailable(f"PostgreSQL unreachable at {make_url(POSTGRES_SERVER_URL)!r}: {exc}")
    yield PostgresServer(admin)
    admin.dispose()




@contextmanager
def flushed_redis(url: str) -> Iterator[redis.Redis]:
    """A client for the Redis database at ``url``, emptied before and after; a skip (in CI a failure) if unreachable.

    Each test module that shares the machine's Redis owns one database number,
    so emptying it touches no one else's keys.
    """
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        unavailable(f"Redis unreachable at {url}: {exc}")
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, on_timeout: Callable[[], str] = str) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` (and any logs) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")
        time.sleep(0.1)


@contextmanager
def served_in_thread(app: object) -> Iterator[int]:
    """``app`` behind a real uvicorn server on a free loopback port, in a thread; yields the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "uvicorn to start")
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class RedisServer:
    """A redis-server of this test's own; ``restart`` keeps the port and loses every key."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), 20, f"redis-server on port {self.port}")
        client.close()

    def kill(self) -> None:
        """SIGKILL: the server vanishes with its data, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=2)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free port, which it may kill and start again."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()
