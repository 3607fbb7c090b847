"""Fixtures for the security tests: the integration suite's apps, keys and trained model, reused.

Everything comes from ``tests/integration`` (databases on SQLite and a
throwaway PostgreSQL, owners alice and bob with keys, a revoked key, the admin
key, a finished job with its files). Only the broker differs: these tests own
Redis database SECURITY_REDIS_DB, which they flush.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from embedmix.service.settings import Settings
from tests.conftest import flushed_redis
from tests.integration.conftest import (  # noqa: F401 - fixtures
    client,
    database_url,
    db,
    keys,
    postgres_url,
    scratch,
)
from tests.integration.test_api import finished, make_settings, trained  # noqa: F401 - fixtures

SECURITY_REDIS_DB = 5
SECURITY_BROKER_URL = f"redis://127.0.0.1:6379/{SECURITY_REDIS_DB}"


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    """The real Redis, database SECURITY_REDIS_DB, empty before and after the test."""
    with flushed_redis(SECURITY_BROKER_URL) as client:
        yield client


def security_settings(database_url: str, scratch: Path, **overrides: object) -> Settings:
    """The integration suite's settings on this directory's broker."""
    return make_settings(database_url, scratch, redis_url=SECURITY_BROKER_URL, **overrides)


@pytest.fixture
def settings(database_url: str, scratch: Path, broker: redis.Redis) -> Settings:
    return security_settings(database_url, scratch)
