"""The per-owner storage quota: uploads + checkpoints + model files, a 413 saying how much is used,
and DELETE /v1/jobs/{id} to make room (it removes every byte the job stored, in any artifact backend)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from embedmix.api import create_app
from embedmix.store.models import Artifact, Checkpoint, Event, Job, Metric
from embedmix.store.storage import storage_used
from tests.integration.conftest import Keys, auth
from tests.integration.test_api import SMALL_SPEC, Trained, assert_error, classification_npz, seed_finished_job, upload
from tests.security.conftest import security_settings


def _count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.mark.parametrize("artifacts", ["db", "fs"])
def test_a_finished_job_holds_quota_until_it_is_deleted_with_every_byte_it_stored(
    database_url: str, scratch: Path, broker: redis.Redis, keys: Keys, db: sessionmaker[Session],
    trained: Trained, tmp_path: Path, artifacts: str,
) -> None:
    store = "db" if artifacts == "db" else str(tmp_path / "blobs")
    probe = security_settings(database_url, scratch, artifacts=store)
    finished = seed_finished_job(db, probe, keys.alice_id, trained)
    with db() as session:
        used = storage_used(session, keys.alice_id)
        artifacts_before = _count(session, Artifact)
    assert used > len(trained.checkpoint)  # the checkpoint and every exported file

    settings = security_settings(database_url, scratch, artifacts=store, storage_quota_bytes=used)
    with TestClient(create_app(settings)) as client:
        error = assert_error(client.post("/v1/jobs", json=SMALL_SPEC, headers=auth(keys.alice)), 413,
                             "storage_quota_exceeded")
        assert "of this owner's" in error["message"] and "DELETE /v1/jobs/{id}" in error["message"]
        assert client.post("/v1/jobs", json=SMALL_SPEC, headers=auth(keys.bob)).status_code == 201  # per owner

        assert client.delete(f"/v1/jobs/{finished.job_id}", headers=auth(keys.bob)).status_code == 404
        assert client.delete(f"/v1/jobs/{finished.job_id}", headers=auth(keys.alice)).status_code == 204
        assert client.get(f"/v1/jobs/{finished.job_id}", headers=auth(keys.alice)).status_code == 404
        assert client.post("/v1/jobs", json=SMALL_SPEC, headers=auth(keys.alice)).status_code == 201

        queued = client.get("/v1/jobs", headers=auth(keys.alice)).json()["data"][0]["id"]
        assert_error(client.delete(f"/v1/jobs/{queued}", headers=auth(keys.alice)), 409, "invalid_state")

    with db() as session:
        assert storage_used(session, keys.alice_id) == 0
        assert _count(session, Artifact) == artifacts_before - 1 - len(trained.card["files"])
        for model in (Checkpoint, Event, Metric):
            assert session.scalar(select(func.count()).select_from(model).join(Job, isouter=False)
                                  .where(Job.id == finished.job_id)) == 0
    if artifacts == "fs":
        assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_upload_past_the_quota_is_413_and_stores_nothing(
    database_url: str, scratch: Path, broker: redis.Redis, keys: Keys, db: sessionmaker[Session]
) -> None:
    small, big = classification_npz(rows=20), classification_npz(rows=400)
    settings = security_settings(database_url, scratch, storage_quota_bytes=len(small) + len(big) - 1)
    with TestClient(create_app(settings)) as client:
        assert upload(client, keys.alice, "small.npz", small).status_code == 201
        error = assert_error(upload(client, keys.alice, "big.npz", big), 413, "storage_quota_exceeded")
        assert "this needs" in error["message"]
        assert len(client.get("/v1/datasets", headers=auth(keys.alice)).json()["data"]) == 1
        assert upload(client, keys.bob, "big.npz", big).status_code == 201  # per owner
