"""A job whose every blob lives in S3: the uploaded dataset is read from the bucket, and its
checkpoints and exported models are written there (a real local S3 server, see conftest).

The contract tests every artifact store passes are in test_store.py; this is the
round trip through the worker that a deployment with ``EMBEDMIX_ARTIFACTS=s3://...``
relies on. One tiny job on SQLite, a few seconds.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from embedmix.store import create_dataset, create_job, create_owner, get_job_unscoped, list_checkpoints
from embedmix.store.artifacts import S3Artifacts, artifact_store_from_url
from embedmix.store.models import Artifact
from embedmix.service.settings import Settings
from embedmix.worker.context import WorkerContext
from embedmix.worker.train_task import run_job

SPEC: dict[str, Any] = {
    "name": "s3",
    "model": {"encoder": "mlp", "width": 16, "embedding_dim": 8},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 2, "batch_size": 32, "seed": 0, "device": "cpu", "checkpoint_every_steps": 3},
    "export": {"formats": ["safetensors"]},
}


def _npz_bytes() -> bytes:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    x = rng.normal(size=(120, 10)) + y[:, None]
    buffer = io.BytesIO()
    np.savez(buffer, x=x.astype(np.float32), y=y)
    return buffer.getvalue()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_reads_and_writes_every_blob_through_s3(
    database_url: str, session_factory: sessionmaker[Session], s3_endpoint: str, s3_bucket: str
) -> None:
    settings = Settings(
        database_url=database_url,
        redis_url="redis://broker-not-used.invalid:6379/0",
        artifacts=f"s3://{s3_bucket}/embedmix",
        s3_endpoint_url=s3_endpoint,
        metrics_flush_s=0.2,
    )
    store = artifact_store_from_url(settings.artifacts, settings.s3_endpoint_url)
    assert isinstance(store, S3Artifacts)
    with session_factory() as session:
        owner = create_owner(session, "owner")
        upload = store.put(session, [_npz_bytes()])
        dataset = create_dataset(
            session, owner.id, filename="d.npz", format="npz", rows=120, info={}, artifact=upload
        )
        job, _ = create_job(session, owner.id, {**SPEC, "dataset": {"id": dataset.id}}, name="s3")
        session.commit()
        job_id = job.id

    assert run_job(job_id, WorkerContext(settings, session_factory, store)) == "succeeded"

    with session_factory() as session:
        finished = get_job_unscoped(session, job_id)
        assert finished is not None and finished.status == "succeeded", finished.error
        checkpoints = list_checkpoints(session, job_id)
        assert checkpoints, "the run saved checkpoints"
        blobs = [c.artifact_id for c in checkpoints] + [
            entry["artifact_id"] for entry in finished.model_artifacts.values()
        ]
        locations = set()
        for artifact_id in blobs:
            artifact = session.get_one(Artifact, artifact_id)
            assert artifact.backend == "s3" and str(artifact.location).startswith("embedmix/")
            body = b"".join(store.open(session, artifact_id))
            assert hashlib.sha256(body).hexdigest() == artifact.sha256
            locations.add(artifact.location)
    listing = store.client.list_objects_v2(Bucket=s3_bucket, Prefix="embedmix/")["Contents"]
    assert locations <= {item["Key"] for item in listing}
