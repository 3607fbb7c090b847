"""What an owner keeps in the artifact store: how much (for the storage quota), and removing a finished job.

An owner's bytes are their uploads, their jobs' checkpoints, and their jobs'
outputs (exported model files and the embedding map). The quota is checked
where new bytes are asked for (an upload, a submission); removing a finished
job is how an owner at the quota makes room without losing their datasets.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from embedmix.store.artifacts import ArtifactStore
from embedmix.store.jobs import active_jobs_starting_from
from embedmix.store.models import TERMINAL_STATUSES, Checkpoint, Dataset, Job


def storage_used(session: Session, owner_id: int) -> int:
    """Bytes the owner's uploads, checkpoints and job outputs take in the artifact store."""
    uploads = session.scalar(select(func.coalesce(func.sum(Dataset.bytes), 0)).where(Dataset.owner_id == owner_id))
    checkpoints = session.scalar(
        select(func.coalesce(func.sum(Checkpoint.bytes), 0))
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Job.owner_id == owner_id)
    )
    outputs = session.execute(
        select(Job.model_artifacts, Job.projection).where(Job.owner_id == owner_id, Job.model_artifacts.is_not(None))
    )
    output_bytes = sum(_output_bytes(files, projection) for files, projection in outputs)
    return int(uploads or 0) + int(checkpoints or 0) + output_bytes


class JobNotFinished(Exception):
    """Only a succeeded, failed or cancelled job can be removed (HTTP 409)."""

    def __init__(self, status: str) -> None:
        super().__init__(f"the job is {status}")
        self.status = status


class JobInUse(Exception):
    """Queued or running jobs start from this job's model (``model.init_from``; HTTP 409)."""

    def __init__(self, job_ids: list[str]) -> None:
        super().__init__(f"jobs {', '.join(job_ids)} start from this job's model")
        self.job_ids = job_ids


def delete_finished_job(session: Session, job: Job, artifacts: ArtifactStore) -> None:
    """Remove a finished job: its row (events, metrics and checkpoint rows go with it) and every byte it stored.

    The rows go first and the bytes after, as a checkpoint's are pruned: a
    crash in between leaves an unreferenced blob, never a row whose bytes are gone.
    Raises :class:`JobInUse` (the caller rolls back) while an active job starts from
    its model; as for a dataset in use (``store.datasets.delete_dataset``), the check
    comes after the delete is flushed, when this transaction holds the row's lock.
    """
    if job.status not in TERMINAL_STATUSES:
        raise JobNotFinished(job.status)
    artifact_ids = [c.artifact_id for c in session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id))]
    artifact_ids += [entry["artifact_id"] for entry in (job.model_artifacts or {}).values()]
    if job.projection and job.projection.get("artifact_id"):
        artifact_ids.append(job.projection["artifact_id"])
    session.execute(Checkpoint.__table__.delete().where(Checkpoint.job_id == job.id))
    session.delete(job)
    session.flush()
    starters = active_jobs_starting_from(session, job.owner_id, job.id)
    if starters:
        raise JobInUse(starters)
    for artifact_id in artifact_ids:
        artifacts.delete(session, artifact_id)


def _output_bytes(files: dict[str, Any] | None, projection: dict[str, Any] | None) -> int:
    size = sum(int(entry.get("bytes", 0)) for entry in (files or {}).values())
    return size + int((projection or {}).get("bytes", 0))
