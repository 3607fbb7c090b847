"""The engine's callbacks inside a worker: they turn training into rows in the store.

The loop calls back every step, so nothing here writes every step: metric
points are buffered and written (with the job's progress and latest eval
values) at most every ``metrics_flush_s``, and the cancel flag is read from the
database at most every ``cancel_poll_s``. Checkpoints are the exception: they
are written when the engine makes them, because they are what a new attempt
resumes from.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable

from core.train import Progress
from store.jobs import get_job_status, update_progress
from store.metrics import MetricPoint, upsert_metrics
from worker.checkpoints import save_checkpoint
from worker.context import WorkerContext
from worker.events import record, warning_event
from worker.lease import Lease

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.context = context
        self.lease = lease
        self.job_id = lease.job_id
        self.shutdown = shutdown or threading.Event()
        self.clock = clock
        self.latest_eval: dict[str, float] = {}
        self.checkpoints_saved = 0
        self._points: list[MetricPoint] = []
        self._progress: Progress | None = None
        self._last_flush = clock()
        self._last_poll = -math.inf
        self._cancel_requested = False
        self._skipped_metrics: set[str] = set()

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
        self._flush_if_due()

    def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None:
        """Flush what came before (the checkpoint must not be ahead of the series), then save it."""
        if self.lease.lost:
            return
        self.flush()
        save_checkpoint(
            self.context.session_factory, self.context.artifacts, self.job_id, state, step=step, epoch=epoch
        )
        self.checkpoints_saved += 1

    def should_stop(self) -> bool:
        return self.stop_reason() is not None

    # -- for the task ------------------------------------------------------------
    def stop_reason(self) -> StopReason | None:
        """Why the run must stop now, if it must; a lost lease outranks everything."""
        if self.lease.lost:
            return StopReason.LEASE_LOST
        if self._cancelled():
            return StopReason.CANCELLED
        if self.shutdown.is_set():
            return StopReason.SHUTDOWN
        return None

    def flush(self) -> None:
        """Write buffered metric points, the progress and the latest eval values in one transaction."""
        self._last_flush = self.clock()
        if self.lease.lost or (not self._points and self._progress is None):
            return
        points, self._points = self._points, []
        progress = self._progress
        with self.context.session_factory() as session:
            upsert_metrics(session, self.job_id, points)
            if progress is not None:
                update_progress(
                    session,
                    self.job_id,
                    step=progress.step,
                    epoch=progress.epoch,
                    total_steps=progress.total_steps,
                    metrics=dict(self.latest_eval) if self.latest_eval else None,
                )
            session.commit()

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
        with self.context.session_factory() as session:
            self._cancel_requested = get_job_status(session, self.job_id) == "cancelling"
        return self._cancel_requested

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
