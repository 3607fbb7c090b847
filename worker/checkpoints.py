"""Saving, pruning and loading a job's checkpoints.

A checkpoint is written blob first, then verified by reading it back, then
recorded as a row, each step committed before the next: a crash at any point
leaves either no row or a row whose bytes are whole. Only the newest
``KEEP_CHECKPOINTS`` are kept; older blobs are deleted only after the newer row
is committed, so a job always has a checkpoint to resume from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from store.artifacts import ArtifactNotFound, ArtifactStore
from store.checkpoints import add_checkpoint, list_checkpoints
from store.models import Checkpoint

KEEP_CHECKPOINTS = 3


class CheckpointWriteError(RuntimeError):
    """The stored checkpoint did not read back as written."""


@dataclass(frozen=True)
class ResumePoint:
    """A verified checkpoint's bytes and where in training they lead back to."""

    state: bytes
    checkpoint_id: str
    step: int
    epoch: int


def save_checkpoint(
    session_factory: sessionmaker[Session],
    artifacts: ArtifactStore,
    job_id: str,
    state: bytes,
    *,
    step: int,
    epoch: int,
) -> str:
    """Store ``state`` as the job's newest checkpoint, then prune older ones; returns its id."""
    expected = hashlib.sha256(state).hexdigest()
    with session_factory() as session:
        artifact = artifacts.put(session, [state])
        if artifact.sha256 != expected or not artifacts.verify(session, artifact.id):
            session.rollback()
            raise CheckpointWriteError(f"checkpoint at step {step} did not read back as written")
        checkpoint = add_checkpoint(session, job_id, step=step, epoch=epoch, artifact=artifact)
        checkpoint_id = checkpoint.id
        session.commit()
    prune_checkpoints(session_factory, artifacts, job_id)
    return checkpoint_id


def prune_checkpoints(
    session_factory: sessionmaker[Session], artifacts: ArtifactStore, job_id: str, keep: int = KEEP_CHECKPOINTS
) -> int:
    """Delete all but the newest ``keep`` checkpoints (rows and blobs); returns how many went."""
    with session_factory() as session:
        old = list_checkpoints(session, job_id)[:-keep]
        for checkpoint in old:
            delete_checkpoint(session, artifacts, checkpoint)
        session.commit()
    return len(old)


def delete_checkpoint(session: Session, artifacts: ArtifactStore, checkpoint: Checkpoint) -> None:
    """Remove a checkpoint row and then its blob (the row refers to the blob)."""
    artifact_id = checkpoint.artifact_id
    session.delete(checkpoint)
    session.flush()
    artifacts.delete(session, artifact_id)


def load_resume_point(
    session_factory: sessionmaker[Session],
    artifacts: ArtifactStore,
    job_id: str,
    on_corrupt: Callable[[Checkpoint], None],
) -> ResumePoint | None:
    """The newest checkpoint whose bytes match its sha256, or None to start from scratch.

    Each checkpoint that fails the check is reported through ``on_corrupt`` and
    deleted, so neither a later attempt nor a user downloading it trips on it.
    """
    with session_factory() as session:
        for checkpoint in reversed(list_checkpoints(session, job_id)):
            state = _read_verified(session, artifacts, checkpoint)
            if state is not None:
                return ResumePoint(state, checkpoint.id, checkpoint.step, checkpoint.epoch)
            on_corrupt(checkpoint)
            delete_checkpoint(session, artifacts, checkpoint)
            session.commit()
    return None


def _read_verified(session: Session, artifacts: ArtifactStore, checkpoint: Checkpoint) -> bytes | None:
    """The checkpoint's bytes if their size and sha256 match the row; None if not (or unreadable)."""
    digest, pieces = hashlib.sha256(), []
    try:
        for piece in artifacts.open(session, checkpoint.artifact_id):
            digest.update(piece)
            pieces.append(piece)
    except (ArtifactNotFound, OSError):
        return None
    state = b"".join(pieces)
    if len(state) != checkpoint.bytes or digest.hexdigest() != checkpoint.sha256:
        return None
    return state
