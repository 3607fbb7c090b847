"""Uploaded datasets, always scoped by owner: another owner's dataset does not exist."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.artifacts import ArtifactStore
from store.models import Artifact, Dataset
from store.paging import page

MAX_FILENAME = 200
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


def get_dataset(session: Session, owner_id: int, dataset_id: str) -> Dataset | None:
    """The owner's dataset, or None if absent or someone else's (both are 404)."""
    query = select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == owner_id)
    return session.scalars(query).first()


def list_datasets(
    session: Session, owner_id: int, *, limit: int = 20, cursor: str | None = None
) -> tuple[list[Dataset], str | None]:
    """The owner's datasets, newest first; returns ``(rows, next_cursor)``."""
    query = select(Dataset).where(Dataset.owner_id == owner_id)
    return page(session, query, Dataset.created_at, Dataset.id, limit, cursor)


def delete_dataset(
    session: Session, owner_id: int, dataset_id: str, artifacts: ArtifactStore
) -> bool:
    """Delete the owner's dataset and its bytes; False if there is no such dataset of theirs."""
    dataset = get_dataset(session, owner_id, dataset_id)
    if dataset is None:
        return False
    artifact_id = dataset.artifact_id
    session.delete(dataset)
    session.flush()
    artifacts.delete(session, artifact_id)
    return True
