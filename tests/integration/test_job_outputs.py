"""A job's outputs belong to its ending: the model files and the embedding map are stored by the
transaction that makes the job succeeded, and the job row points at them.

So an ending that never commits (the worker dies in it) or is refused (the job
moved on meanwhile) leaves no artifact that no job points at, and the map is
found from the job row, not from an event. Real parts: SQLite and PostgreSQL,
the database and file artifact stores, the API in-process for the map route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import embedmix.worker.train_task
from embedmix.api import create_app
from embedmix.service.settings import Settings
from embedmix.store import DatabaseArtifacts, FilesystemArtifacts, create_job, create_owner, list_checkpoints, list_events
from embedmix.store.artifacts import ArtifactStore
from embedmix.store.models import Artifact, Job
from tests.integration.conftest import owner_with_keys
from embedmix.worker.context import WorkerContext
from embedmix.worker.train_task import run_job

SPEC: dict[str, Any] = {
    "name": "outputs",
    "dataset": {"name": "mnist1d", "size": 300},
    "model": {"encoder": "mlp", "width": 16, "embedding_dim": 8},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 1, "batch_size": 32, "seed": 0, "device": "cpu"},
    "eval": {"metrics": ["precision_at_1"]},
    "export": {"formats": ["safetensors", "onnx"]},
}


class WorkerDied(BaseException):
    """Stands for the process ending mid-transaction: nothing of ours catches it."""


def _context(database_url: str, session_factory: sessionmaker[Session], artifacts: ArtifactStore) -> WorkerContext:
    return WorkerContext(Settings(database_url=database_url, artifacts="db"), session_factory, artifacts)


def _submit(session_factory: sessionmaker[Session], owner_id: int | None = None) -> str:
    with session_factory() as session:
        if owner_id is None:
            owner_id = create_owner(session, "owner").id
        job, _ = create_job(session, owner_id, SPEC, name=SPEC["name"])
        session.commit()
        return job.id


def _job(session_factory: sessionmaker[Session], job_id: str) -> Job:
    with session_factory() as session:
        return session.get_one(Job, job_id)


def _artifact_ids(session_factory: sessionmaker[Session]) -> set[str]:
    with session_factory() as session:
        return set(session.scalars(select(Artifact.id)))


def _checkpoint_artifact_ids(session_factory: sessionmaker[Session], job_id: str) -> set[str]:
    with session_factory() as session:
        return {c.artifact_id for c in list_checkpoints(session, job_id)}


def _ending_as(monkeypatch: pytest.MonkeyPatch, status: str, outcome: Any) -> None:
    """Make the worker's transition into ``status`` raise ``outcome`` (an exception) or return it."""
    real = embedmix.worker.train_task.transition

    def transition(session: Session, job_id: str, from_statuses: Any, to_status: str, **fields: Any) -> bool:
        if to_status != status:
            return real(session, job_id, from_statuses, to_status, **fields)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(embedmix.worker.train_task, "transition", transition)


def test_the_succeeded_job_points_at_its_map_and_files(
    app_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    owner_id, [(_, key)] = owner_with_keys(app_settings, 1)
    job_id = _submit(session_factory, owner_id)
    assert run_job(job_id, _context(app_settings.database_url, session_factory, DatabaseArtifacts())) == "succeeded"

    job = _job(session_factory, job_id)
    pointer = job.projection
    assert pointer is not None and set(pointer) == {"artifact_id", "sha256", "bytes", "methods"}
    assert "pca" in pointer["methods"]
    files = {entry["artifact_id"] for entry in job.model_artifacts.values()}
    checkpoints = _checkpoint_artifact_ids(session_factory, job_id)
    assert _artifact_ids(session_factory) == checkpoints | files | {pointer["artifact_id"]}
    with session_factory() as session:
        events = list_events(session, job_id, limit=1000)
    assert not [e for e in events if e.type == "projection"]  # the pointer is on the row, not in an event
    assert any(e.message.startswith("embedding map of") for e in events)

    with TestClient(create_app(app_settings)) as client:
        response = client.get(f"/v1/jobs/{job_id}/projection", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.headers["etag"] == f'"{pointer["sha256"]}"'
    assert [m["method"] for m in response.json()["maps"]] == pointer["methods"]


def test_an_ending_that_never_commits_leaves_no_outputs(
    database_url: str, session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker dies inside its ending, after the files and the map went in: none of them stays."""
    job_id = _submit(session_factory)
    _ending_as(monkeypatch, "succeeded", WorkerDied())
    with pytest.raises(WorkerDied):
        run_job(job_id, _context(database_url, session_factory, DatabaseArtifacts()))

    job = _job(session_factory, job_id)
    assert job.status == "running"  # left to the reaper, as a dead worker leaves it
    assert job.model_artifacts is None and job.projection is None and job.card is None
    assert _artifact_ids(session_factory) == _checkpoint_artifact_ids(session_factory, job_id)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_refused_ending_removes_the_files_it_stored(
    database_url: str, session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The job moved on before the ending (the guarded UPDATE matched nothing): the rows roll back,
    and the bytes that live outside the database are removed too."""
    root = tmp_path / "blobs"
    job_id = _submit(session_factory)
    _ending_as(monkeypatch, "succeeded", False)
    assert run_job(job_id, _context(database_url, session_factory, FilesystemArtifacts(root))) is None

    job = _job(session_factory, job_id)
    assert job.model_artifacts is None and job.projection is None
    checkpoints = _checkpoint_artifact_ids(session_factory, job_id)
    assert _artifact_ids(session_factory) == checkpoints
    on_disk = {path.name for path in root.rglob("*") if path.is_file() and ".partial" not in path.parts}
    assert on_disk == checkpoints
