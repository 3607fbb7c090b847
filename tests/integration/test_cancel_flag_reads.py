"""A worker's progress write reads the cancel flag too, so a fleet of running jobs sends one statement fewer per flush.

bench/fleet.py found the cancel-flag read to be the most frequent statement a
running job sends; the flush's UPDATE returns the job's status instead.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from embedmix.core.loop import Progress
from embedmix.service.settings import Settings
from embedmix.store.accounts import create_owner
from embedmix.store.artifacts import DatabaseArtifacts
from embedmix.store.jobs import create_job, request_cancel, transition
from embedmix.worker.callbacks import StopReason, StoreCallbacks
from embedmix.worker.context import WorkerContext
from embedmix.worker.lease import Lease

SPEC = {"name": "t", "dataset": {"name": "iris"}, "objective": {"loss": "supcon"}}


def _progress(step: int) -> Progress:
    return Progress(step, 100, 0, 1, 0.5, 1e-3, 0.0, 0.0, 0.0)


def test_a_flush_tells_the_job_it_was_cancelled_without_a_status_read(
    engine: Engine, session_factory: sessionmaker[Session], database_url: str, tmp_path: Path
) -> None:
    with session_factory() as session:
        owner = create_owner(session, "alice").id
        job, _ = create_job(session, owner, SPEC, name="t")
        session.commit()
    lease = Lease.claim(session_factory, job.id, ttl_s=30.0)
    assert lease is not None
    with session_factory() as session:
        assert transition(session, job.id, ["queued"], "running")
        session.commit()
    status_reads: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn, cursor, statement: str, parameters, context, executemany) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT JOBS.STATUS"):
            status_reads.append(statement)

    now = [0.0]
    settings = Settings(database_url=database_url, work_dir=str(tmp_path), cancel_poll_s=0.5, metrics_flush_s=1.0)
    context = WorkerContext(settings, session_factory, DatabaseArtifacts())
    with StoreCallbacks(context, lease, clock=lambda: now[0]) as callbacks:
        callbacks.on_progress(_progress(1))
        assert callbacks.flush()
        with session_factory() as session:
            assert request_cancel(session, owner, job.id).status == "cancelling"
            session.commit()
        now[0] = 0.1  # within cancel_poll_s of the flush, which counted as a read: none is due
        assert callbacks.stop_reason() is None
        now[0] = 0.2
        callbacks.on_progress(_progress(2))
        assert callbacks.flush()
        assert callbacks.stop_reason() is StopReason.CANCELLED
    assert status_reads == []
