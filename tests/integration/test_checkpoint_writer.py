"""The worker's background checkpoint writer (worker.checkpoints.CheckpointWriter), on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from embedmix.store import create_job, create_owner, list_checkpoints
from embedmix.store.artifacts import DatabaseArtifacts
from embedmix.worker.checkpoints import CheckpointWriteError, CheckpointWriter


class ReadsBackWrong(DatabaseArtifacts):
    """A store whose read-back check fails, as a store that corrupted the bytes would."""

    def verify(self, session: Session, artifact_id: str) -> bool:
        return False


def _job(session_factory: sessionmaker[Session]) -> str:
    with session_factory() as session:
        owner = create_owner(session, "owner")
        job, _ = create_job(session, owner.id, {"name": "j"}, name="j")
        session.commit()
        return job.id


def _steps(session_factory: sessionmaker[Session], job_id: str) -> list[int]:
    with session_factory() as session:
        return [c.step for c in list_checkpoints(session, job_id)]


def test_checkpoints_are_stored_in_order_and_drain_waits_for_them(session_factory: sessionmaker[Session]) -> None:
    job_id = _job(session_factory)
    writer = CheckpointWriter(session_factory, DatabaseArtifacts(), job_id, skip_if=lambda: False)
    for step in (1, 2, 3, 4):
        writer.submit(b"state-%d" % step, step, step)
    writer.drain()
    assert writer.saved == 4
    assert _steps(session_factory, job_id) == [2, 3, 4]  # the newest three kept
    writer.close()
    writer.close()  # a second close does nothing


def test_a_checkpoint_that_does_not_read_back_fails_the_run_at_drain(session_factory: sessionmaker[Session]) -> None:
    job_id = _job(session_factory)
    writer = CheckpointWriter(session_factory, ReadsBackWrong(), job_id, skip_if=lambda: False)
    writer.submit(b"state", 1, 1)
    with pytest.raises(CheckpointWriteError):
        writer.drain()
    writer.close()
    assert _steps(session_factory, job_id) == []


def test_database_down_skips_the_checkpoint_without_failing(session_factory: sessionmaker[Session]) -> None:
    job_id = _job(session_factory)

    def unreachable() -> Session:
        raise OperationalError("connect", {}, Exception("connection refused"))

    writer = CheckpointWriter(unreachable, DatabaseArtifacts(), job_id, skip_if=lambda: False)  # type: ignore[arg-type]
    writer.submit(b"state", 1, 1)
    writer.drain()  # no error: training goes on, the next checkpoint is tried as usual
    writer.close()
    assert writer.saved == 0


def test_a_lost_lease_drops_what_is_waiting(session_factory: sessionmaker[Session]) -> None:
    job_id = _job(session_factory)
    writer = CheckpointWriter(session_factory, DatabaseArtifacts(), job_id, skip_if=lambda: True)
    writer.submit(b"state", 1, 1)
    writer.drain()
    writer.close()
    assert writer.saved == 0 and _steps(session_factory, job_id) == []
