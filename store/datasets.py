"""Uploaded datasets, always scoped by owner: another owner's dataset does not exist."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from embedmix.store.artifacts import ArtifactStore
from embedmix.store.models import ACTIVE_STATUSES, Artifact, Dataset, Job
from embedmix.store.paging import page

MAX_FILENAME = 200
MAX_JOBS_NAMED = 5  # a refused delete names this many of the jobs that hold it
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_filename(filename: str) -> str:
    """A display name safe anywhere: no directories, no hidden or dot-dot names, plain characters.

    The name is shown back to its owner only; bytes are stored under the
    artifact id, so this is about what gets echoed, not where files go.
    """
    base = re.split(r"[/\\]", filename)[-1]
    cleaned = _UNSAFE.sub("_", base).lstrip(".")
    return cleaned[-MAX_FILENAME:] or "upload"


def create_dataset(
    session: Session,
    owner_id: int,
    *,
    filename: str,
    format: str,
    rows: int,
    info: dict[str, Any],
    artifact: Artifact,
) -> Dataset:
    """Record a validated upload whose bytes are ``artifact`` (size and hash are taken from it)."""
    if not artifact.complete:
        raise ValueError(f"artifact {artifact.id} is incomplete")
    dataset = Dataset(
        owner_id=owner_id,
        filename=sanitize_filename(filename),
        format=format,
        bytes=artifact.bytes,
        sha256=artifact.sha256,
        rows=rows,
        info=info,
        artifact_id=artifact.id,
    )
    session.add(dataset)
    session.flush()
    return dataset


class DatasetInUse(Exception):
    """Jobs that will still read the dataset are queued or running (HTTP 409)."""

    def __init__(self, job_ids: list[str]) -> None:
        super().__init__(f"the dataset is used by active jobs {', '.join(job_ids)}")
        self.job_ids = job_ids


def get_dataset(session: Session, owner_id: int, dataset_id: str, *, for_job: bool = False) -> Dataset | None:
    """The owner's dataset, or None if absent or someone else's (both are 404).

    ``for_job`` is the read of a submission that will refer to the dataset: on
    PostgreSQL it holds a share lock until the submission commits, so a delete
    waits for it and then sees the job (see :func:`delete_dataset`).
    """
    query = select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == owner_id)
    if for_job:
        query = query.with_for_update(read=True)
    return session.scalars(query).first()


def active_jobs_using(session: Session, owner_id: int, dataset_id: str) -> list[str]:
    """Ids of the owner's queued or running jobs whose spec names the dataset."""
    query = select(Job.id).where(
        Job.owner_id == owner_id,
        Job.status.in_(ACTIVE_STATUSES),
        Job.spec["dataset"]["id"].as_string() == dataset_id,
    )
    return list(session.scalars(query.order_by(Job.id).limit(MAX_JOBS_NAMED)))


def list_datasets(
    session: Session, owner_id: int, *, limit: int = 20, cursor: str | None = None
) -> tuple[list[Dataset], str | None]:
    """The owner's datasets, newest first; returns ``(rows, next_cursor)``."""
    query = select(Dataset).where(Dataset.owner_id == owner_id)
    return page(session, query, Dataset.created_at, Dataset.id, limit, cursor)


def delete_dataset(
    session: Session, owner_id: int, dataset_id: str, artifacts: ArtifactStore
) -> bool:
    """Delete the owner's dataset and its bytes; False if there is no such dataset of theirs.

    Raises :class:`DatasetInUse` (the caller rolls back) while an active job
    names it. The check comes after the delete is flushed: by then this
    transaction holds the row's lock on PostgreSQL and SQLite's write lock, so a
    submission racing it has either committed its job (and is seen here) or
    will find the dataset gone.
    """
    query = select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == owner_id).with_for_update()
    dataset = session.scalars(query).first()
    if dataset is None:
        return False
    artifact_id = dataset.artifact_id
    session.delete(dataset)
    session.flush()
    users = active_jobs_using(session, owner_id, dataset_id)
    if users:
        raise DatasetInUse(users)
    artifacts.delete(session, artifact_id)
    return True
