"""Saving, pruning and loading a job's checkpoints.

A checkpoint is written blob first, then verified by reading it back, then
recorded as a row, each step committed before the next: a crash at any point
leaves either no row or a row whose bytes are whole. Only the newest
``KEEP_CHECKPOINTS`` are kept; older blobs are deleted only after the newer row
is committed, so a job always has a checkpoint to resume from.

:class:`CheckpointWriter` does that writing on a thread of its own, so the
training loop hands over the bytes and carries on instead of waiting for the
database (storing, reading back and pruning were most of what the service's
callbacks cost the loop).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from embedmix.store.artifacts import ArtifactNotFound, ArtifactStore
from embedmix.store.checkpoints import add_checkpoint, list_checkpoints
from embedmix.store.db import DATABASE_DOWN
from embedmix.store.models import Checkpoint

log = logging.getLogger("embedmix.worker")

KEEP_CHECKPOINTS = 3
# Checkpoints handed over but not yet stored; a loop that makes them faster than
# the store takes them waits, rather than holding many copies of the state in memory.
MAX_PENDING_CHECKPOINTS = 2


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


class CheckpointWriter:
    """Stores a job's checkpoints in order on a background thread.

    ``submit`` returns at once (unless two are already waiting); ``drain``
    waits until every submitted checkpoint is stored, and is what a run calls
    before it ends, so that a cancelled or handed-back job's last checkpoint is
    in the store before anyone is told. A checkpoint that did not read back as
    written is an error the loop sees at its next ``submit`` or at ``drain``;
    one skipped because the database was down is only logged (the next one is
    tried as usual). ``skip_if`` (the lease is lost) drops what is still waiting.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        artifacts: ArtifactStore,
        job_id: str,
        skip_if: Callable[[], bool],
    ) -> None:
        self.session_factory = session_factory
        self.artifacts = artifacts
        self.job_id = job_id
        self.skip_if = skip_if
        self.saved = 0
        self._pending: queue.Queue[tuple[bytes, int, int] | None] = queue.Queue(MAX_PENDING_CHECKPOINTS)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"checkpoints-{job_id}", daemon=True)
        self._thread.start()

    def submit(self, state: bytes, step: int, epoch: int) -> None:
        self._raise_error()
        self._pending.put((state, step, epoch))

    def drain(self) -> None:
        """Wait for every submitted checkpoint to be stored (or skipped); raise a write error."""
        self._pending.join()
        self._raise_error()

    def close(self) -> None:
        """Stop the thread once what is waiting has been written (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        self._pending.put(None)
        self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while (item := self._pending.get()) is not None:
            try:
                self._write(*item)
            finally:
                self._pending.task_done()
        self._pending.task_done()

    def _write(self, state: bytes, step: int, epoch: int) -> None:
        if self.skip_if() or self._error is not None:
            return
        try:
            save_checkpoint(self.session_factory, self.artifacts, self.job_id, state, step=step, epoch=epoch)
        except DATABASE_DOWN:
            log.warning("job %s: checkpoint at step %d skipped: database unreachable", self.job_id, step)
        except Exception as exc:  # noqa: BLE001 - handed to the training thread, which fails the job
            self._error = exc
        else:
            self.saved += 1
