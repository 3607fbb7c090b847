"""Checkpoints: saved training states a new attempt resumes from.

The worker writes the blob first (``ArtifactStore.put``), verifies it, and only
then adds the row here, so a checkpoint row always points at whole, hashed
bytes.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from embedmix.store.models import Artifact, Checkpoint


def add_checkpoint(
    session: Session, job_id: str, *, step: int, epoch: int, artifact: Artifact
) -> Checkpoint:
    """Record a checkpoint whose bytes are ``artifact``; refuses an incomplete artifact."""
    if not artifact.complete:
        raise ValueError(f"artifact {artifact.id} is incomplete; a checkpoint needs whole bytes")
    checkpoint = Checkpoint(
        job_id=job_id,
        step=step,
        epoch=epoch,
        bytes=artifact.bytes,
        sha256=artifact.sha256,
        artifact_id=artifact.id,
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def list_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    """A job's checkpoints in training order."""
    query = (
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step, Checkpoint.created_at, Checkpoint.id)
    )
    return list(session.scalars(query))


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    """The furthest checkpoint (the newest one if a replayed step was saved twice)."""
    query = (
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc(), Checkpoint.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def get_checkpoint(session: Session, job_id: str, checkpoint_id: str) -> Checkpoint | None:
    """One checkpoint of this job (the caller has already checked the job is the owner's)."""
    query = select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.job_id == job_id)
    return session.scalars(query).first()
