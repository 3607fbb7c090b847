"""The engine's callbacks inside a worker: they turn training into rows in the store.

The loop calls back every step, so nothing here writes every step: metric
points are buffered and written (with the job's progress and latest eval
values) at most every ``metrics_flush_s``, and the cancel flag is read from the
database at most every ``cancel_poll_s`` (a flush's progress write returns it, so
a flush counts as a read). Checkpoints are the exception: they
are written when the engine makes them, because they are what a new attempt
resumes from.

A database outage does not stop training: points that could not be written
stay buffered for the next flush, the cancel flag keeps its last value, and a
checkpoint that cannot be stored is skipped (the next one will be). The lease's
heartbeat decides when an outage has lasted too long (a whole TTL), and the
task retries its final writes for as long as the lease lives.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable

from embedmix.core.loop import MIXING_STOPPED
from embedmix.core.train import Progress
from embedmix.store.db import DATABASE_DOWN
from embedmix.store.jobs import get_job_status, update_progress
from embedmix.store.metrics import MetricPoint, upsert_metrics
from embedmix.worker.checkpoints import CheckpointWriter
from embedmix.worker.context import WorkerContext
from embedmix.worker.events import log_event, record, warning_event
from embedmix.worker.lease import Lease

log = logging.getLogger("embedmix.worker")

EVAL_PREFIX = "eval/"


class StopReason(enum.Enum):
    """Why a run stopped before its last step; each one ends the job differently."""

    LEASE_LOST = "lease_lost"  # someone else owns the job now: write nothing more
    CANCELLED = "cancelled"  # the user asked: keep the checkpoint, end as cancelled
    SHUTDOWN = "shutdown"  # the worker is stopping: keep the checkpoint, hand the job back


class StoreCallbacks:
    """Implements ``core.train.Callbacks`` for one attempt of one job."""

    def __init__(
        self,
        context: WorkerContext,
        lease: Lease,
        *,
        shutdown: threading.Event | None = None,
        checkpoint_min_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.context = context
        self.lease = lease
        self.job_id = lease.job_id
        self.shutdown = shutdown or threading.Event()
        self.clock = clock
        self.latest_eval: dict[str, float] = {}
        self.checkpoints = CheckpointWriter(
            context.session_factory, context.artifacts, self.job_id, skip_if=lambda: lease.lost
        )
        self._points: list[MetricPoint] = []
        self._progress: Progress | None = None
        self._last_flush = clock()
        self._last_poll = -math.inf
        self._cancel_requested = False
        self._skipped_metrics: set[str] = set()
        self._database_down = False
        self.checkpoint_min_interval_s = checkpoint_min_interval_s
        self._last_checkpoint = clock()

    # -- the engine's protocol ---------------------------------------------------
    def on_progress(self, progress: Progress) -> None:
        self._progress = progress
        self._flush_if_due()

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            if not math.isfinite(value):
                self._warn_not_finite(name, step, value)
                continue
            self._points.append(MetricPoint(name=name, step=step, epoch=epoch, value=float(value)))
            if name.startswith(EVAL_PREFIX):
                self.latest_eval[name.removeprefix(EVAL_PREFIX)] = float(value)
            if name == MIXING_STOPPED:
                self._tell_mixing_stopped(step, epoch)
        self._flush_if_due()

    def _tell_mixing_stopped(self, step: int, epoch: int) -> None:
        """The switch of ``mixup.until`` on the job's timeline, where a user reading events looks for it."""
        record(
            self.context.session_factory,
            self.job_id,
            log_event(
                self.job_id,
                self.lease.run_key,
                "mixup-stopped",
                f"mixing stopped at step {step} (epoch {epoch}) as mixup.until asks; training goes on unmixed",
                step=step,
                epoch=epoch,
            ),
        )

    def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None:
        """Flush what came before (the checkpoint must not be ahead of the series), then hand the
        checkpoint to the background writer; the loop does not wait for the database.

        With the database down the checkpoint is skipped, not waited for: training
        goes on and the next checkpoint is tried as usual.
        """
        if self.lease.lost or not self._checkpoint_due(step):
            return
        if not self.flush():
            self._outage(f"checkpoint at step {step} skipped")
            return
        self._last_checkpoint = self.clock()
        self.checkpoints.submit(state, step, epoch)

    def should_stop(self) -> bool:
        return self.stop_reason() is not None

    # -- for the task ------------------------------------------------------------
    def __enter__(self) -> StoreCallbacks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.checkpoints.close()

    def wait_for_checkpoints(self) -> None:
        """Block until every checkpoint handed over is stored; raise a write error the writer met."""
        self.checkpoints.drain()

    def stop_reason(self) -> StopReason | None:
        """Why the run must stop now, if it must; a lost lease outranks everything."""
        if self.lease.lost:
            return StopReason.LEASE_LOST
        if self._cancelled():
            return StopReason.CANCELLED
        if self.shutdown.is_set():
            return StopReason.SHUTDOWN
        return None

    def flush(self) -> bool:
        """Write buffered metric points, the progress and the latest eval values in one transaction.

        Returns whether everything buffered is now in the database; with the
        database down the points stay buffered for the next try (the upsert by
        (job, name, step) makes writing one twice harmless).
        """
        self._last_flush = self.clock()
        if self.lease.lost:
            return False
        if not self._points and self._progress is None:
            return True
        points, progress = list(self._points), self._progress
        status = None
        try:
            with self.context.session_factory() as session:
                upsert_metrics(session, self.job_id, points)
                if progress is not None:
                    status = update_progress(
                        session,
                        self.job_id,
                        step=progress.step,
                        epoch=progress.epoch,
                        total_steps=progress.total_steps,
                        metrics=dict(self.latest_eval) if self.latest_eval else None,
                    )
                session.commit()
        except DATABASE_DOWN:
            self._outage(f"{len(self._points)} metric points kept for the next write")
            return False
        if status is not None:  # the progress write read the cancel flag too: no separate read is due yet
            self._last_poll = self._last_flush
            self._cancel_requested = self._cancel_requested or status == "cancelling"
        del self._points[: len(points)]
        if self._database_down:
            self._database_down = False
            log.info("job %s: database reachable again; buffered metrics written", self.job_id)
        return True

    # -- internals -------------------------------------------------------------------
    def _flush_if_due(self) -> None:
        if self.clock() - self._last_flush >= self.context.settings.metrics_flush_s:
            self.flush()

    def _cancelled(self) -> bool:
        """Read the job's status at most every cancel_poll_s; 'cancelling' means the user asked to stop."""
        if self._cancel_requested:
            return True
        now = self.clock()
        if now - self._last_poll < self.context.settings.cancel_poll_s:
            return False
        self._last_poll = now
        try:
            with self.context.session_factory() as session:
                self._cancel_requested = get_job_status(session, self.job_id) == "cancelling"
        except DATABASE_DOWN:
            self._outage("cancel flag not read")
        return self._cancel_requested

    def _checkpoint_due(self, step: int) -> bool:
        """A run's last checkpoint and one made to stop are always stored; periodic ones at most
        every ``checkpoint_min_interval_s``, so an epoch of a second does not pay for a
        database write each time (a crash costs at most that much training)."""
        last = self._progress is not None and step >= self._progress.total_steps
        if last or self.checkpoint_min_interval_s <= 0 or self.stop_reason() is not None:
            return True
        return self.clock() - self._last_checkpoint >= self.checkpoint_min_interval_s

    def _outage(self, what: str) -> None:
        """Log the first failure of an outage as a warning, the rest quietly: training goes on."""
        level = logging.DEBUG if self._database_down else logging.WARNING
        self._database_down = True
        log.log(level, "job %s: database unreachable (%s); training goes on", self.job_id, what)

    def _warn_not_finite(self, name: str, step: int, value: float) -> None:
        """Neither SQL nor JSON carries NaN: say once per series that points were left out."""
        if name in self._skipped_metrics:
            return
        self._skipped_metrics.add(name)
        record(
            self.context.session_factory,
            self.job_id,
            warning_event(
                self.job_id,
                self.lease.run_key,
                f"not-finite:{name}",
                f"{name} was {value} at step {step}; non-finite values are not recorded",
                metric=name,
                step=step,
            ),
        )
