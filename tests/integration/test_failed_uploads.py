"""A failed upload leaves nothing in any artifact store: no file, no object, no row, no scratch.

Each store (database chunks, files, S3) on each database (SQLite, PostgreSQL)
meets three failures. The database itself refuses the writes, through a trigger
(no mock of our own code): the dataset's row refused after the file's bytes
were stored, and the artifact's completion refused after its bytes were placed
(inside the store's put). The third is a file validation refuses (a label
PostgreSQL could not store). After each, what is stored (rows, files under the
store's root, objects and unfinished multipart uploads in the bucket, scratch)
is exactly what it was, and the next upload is stored as usual.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from embedmix.api import create_app
from embedmix.api.uploads import SCRATCH_DIR
from embedmix.service.settings import Settings
from embedmix.store.db import make_engine
from embedmix.store.models import Artifact, ArtifactChunk, Dataset
from tests.integration.conftest import Keys, auth
from tests.integration.test_api import broker, classification_npz, make_settings  # noqa: F401 - fixture

STORES = ["db", "fs", "s3"]
TRIGGER = "embedmix_test_refuse"
# What the database refuses, as (table, SQLite trigger condition, PostgreSQL trigger timing).
REFUSALS = {
    "dataset row refused": (Dataset.__tablename__, "BEFORE INSERT ON {table}", "BEFORE INSERT ON {table} FOR EACH ROW"),
    "artifact completion refused": (
        Artifact.__tablename__,
        "BEFORE UPDATE OF complete ON {table} WHEN NEW.complete",
        "BEFORE UPDATE ON {table} FOR EACH ROW WHEN (NEW.complete)",
    ),
}
FAILURES = [*REFUSALS, "file refused by validation"]


@pytest.fixture(params=STORES)
def settings(
    request: pytest.FixtureRequest, database_url: str, scratch: Path, tmp_path: Path, broker: redis.Redis  # noqa: F811
) -> Settings:
    store: str = request.param
    if store == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        endpoint = request.getfixturevalue("s3_endpoint")
        return make_settings(database_url, scratch, artifacts=f"s3://{bucket}/blobs", s3_endpoint_url=endpoint)
    return make_settings(database_url, scratch, artifacts="db" if store == "db" else str(tmp_path / "blobs"))


def stored(settings: Settings, db: sessionmaker[Session]) -> dict[str, Any]:
    """Everything an upload can leave: rows, the store's files or objects, scratch."""
    with db() as session:
        rows = {
            model.__tablename__: session.scalars(select(func.count()).select_from(model)).one()
            for model in (Dataset, Artifact, ArtifactChunk)
        }
    scratch = Path(settings.work_dir)
    return {
        "rows": rows,
        "bytes": _store_contents(settings),
        "scratch": sorted(str(p) for p in scratch.rglob("*") if p != scratch / SCRATCH_DIR),
    }


def _store_contents(settings: Settings) -> list[str]:
    if settings.artifacts == "db":
        return []
    if not settings.artifacts.startswith("s3://"):
        root = Path(settings.artifacts)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    bucket = settings.artifacts.removeprefix("s3://").split("/")[0]
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    objects = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    unfinished = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return sorted(objects) + [f"unfinished: {key}" for key in sorted(unfinished)]


@contextmanager
def refusing(engine: Engine, failure: str) -> Iterator[None]:
    """A trigger that makes the database refuse one kind of write while the block runs."""
    table, sqlite_when, postgres_when = REFUSALS[failure]
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as connection:
        if postgres:
            connection.execute(text(
                f"CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
            ))
            connection.execute(text(
                f"CREATE TRIGGER {TRIGGER} {postgres_when.format(table=table)} EXECUTE FUNCTION {TRIGGER}()"
            ))
        else:
            connection.execute(text(
                f"CREATE TRIGGER {TRIGGER} {sqlite_when.format(table=table)} "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            ))
    try:
        yield
    finally:
        with engine.begin() as connection:
            if postgres:
                connection.execute(text(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table}"))
                connection.execute(text(f"DROP FUNCTION IF EXISTS {TRIGGER}()"))
            else:
                connection.execute(text(f"DROP TRIGGER IF EXISTS {TRIGGER}"))


def nul_label_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.ones((20, 2)), y=np.array(["a\x00b", "c"] * 10))
    return buffer.getvalue()


def _upload(client: TestClient, keys: Keys, filename: str, content: bytes) -> Any:
    return client.post("/v1/datasets", files={"file": (filename, content)}, headers=auth(keys.alice))


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failed_upload_leaves_nothing_in_the_store(
    settings: Settings, keys: Keys, db: sessionmaker[Session], failure: str
) -> None:
    engine = make_engine(settings.database_url)
    # Server errors come back as the API's 500 response, as a client would see them.
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert _upload(client, keys, "kept.npz", classification_npz(rows=40)).status_code == 201
        before = stored(settings, db)
        # The snapshot sees a stored upload's bytes, so it would see a failed one's.
        assert before["rows"][Artifact.__tablename__] == 1
        assert len(before["bytes"]) == (0 if settings.artifacts == "db" else 1), before
        if failure in REFUSALS:
            with refusing(engine, failure):
                response = _upload(client, keys, "failed.npz", classification_npz(rows=40))
            assert response.status_code >= 500, response.text
        else:
            response = _upload(client, keys, "failed.npz", nul_label_npz())
            assert response.status_code == 422, response.text
        assert stored(settings, db) == before
        assert _upload(client, keys, "next.npz", classification_npz(rows=40)).status_code == 201
    engine.dispose()
