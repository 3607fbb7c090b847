"""The body of the ``embedmix.train`` task: claim a job, train it, report how it ended.

Celery delivers a message at least once, so everything here is written to be
run again: the lease makes a second delivery exit while the first is alive or
once the job is finished; metrics are keyed by step and events by dedup key, so
a resumed attempt overwrites instead of duplicating; a new attempt resumes from
the newest checkpoint whose bytes still match their sha256.

Every ending is one transaction that renews the lease (proving this worker
still owns the job; on PostgreSQL it also locks the row), then makes the
guarded status change, clears the lease and writes the status event. A success
stores the job's outputs (model files, embedding map) in that same transaction,
before the renewal, and records the pointers to them with the status, so an
ending that never commits leaves no output behind. If that
transaction cannot happen (the database is down), the exception goes to Celery
and the lease is left to expire: the reaper then re-queues the job, which is
why the lease is not released on that path (a running job without a lease
would be invisible to the reaper).
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save_file
from sqlalchemy.orm import Session

from embedmix.core import catalog
from embedmix.core.cost import describe_bytes, rank_budget
from embedmix.core.data import Dataset, load_dataset
from embedmix.core.errors import INTERNAL_ERROR, OUT_OF_MEMORY
from embedmix.core.export import export
from embedmix.core.spec import JobSpec, validate_spec
from embedmix.core.train import TrainResult, pick_device, train
from embedmix.service.queue import job_devices
from embedmix.service.settings import Settings
from embedmix.store.artifacts import CHUNK_SIZE
from embedmix.store.db import DATABASE_DOWN
from embedmix.store.events import NewEvent, add_events
from embedmix.store.jobs import get_job_unscoped, release_lease, transition
from embedmix.store.models import Checkpoint, Job
from embedmix.worker.callbacks import StopReason, StoreCallbacks
from embedmix.worker.checkpoints import ResumePoint, load_resume_point
from embedmix.worker.context import WorkerContext
from embedmix.worker.dataset_files import dataset_file
from embedmix.worker.events import (
    ENQUEUED,
    TRACEBACK,
    log_event,
    record,
    status_event,
    warning_event,
)
from embedmix.worker.init_weights import source_weights
from embedmix.worker.lease import Lease
from embedmix.worker.memory_ceiling import memory_ceiling
from embedmix.worker.projection import (
    PROJECTION,
    Projection,
    make_projection,
    projection_event,
    store_projection,
)
from embedmix.worker.ranks import (
    EXPORT,
    INIT_WEIGHTS_FILE,
    RANK_LOST,
    RESUME_FILE,
    Failure,
    RankFailed,
    RankLost,
    RankRelay,
    RanksOutcome,
    RunDir,
    device_name,
    failure_of,
    run_info,
    run_ranks,
)

log = logging.getLogger("embedmix.worker")

Enqueue = Callable[[str, int], None]  # (job id, the devices it asks for): service.queue's route
# Stores a job's outputs in the ending's transaction; returns the job columns that point at them.
Outputs = Callable[[Session], dict[str, Any]]
T = TypeVar("T")

RETRY_FIRST_S, RETRY_MAX_S = 0.5, 5.0  # backoff for the final writes while the database is down
MAX_ERROR_MESSAGE = 2000
MAX_INTERNAL_MESSAGE = 200


class ModelStoreError(RuntimeError):
    """An exported file did not reach the artifact store intact."""


@dataclass(frozen=True)
class ClaimedJob:
    """What the run needs from the job row, read once when it starts."""

    job_id: str
    owner_id: int
    spec: dict[str, Any]
    attempt: int
    run_key: str


def run_job(
    job_id: str,
    context: WorkerContext,
    *,
    shutdown: threading.Event | None = None,
    enqueue: Enqueue | None = None,
) -> str | None:
    """Handle one delivery of a job's message; returns the status it left the job in, None if it did nothing.

    ``shutdown``, once set, makes the run save a checkpoint and hand the job
    back to the queue (re-sent through ``enqueue``; without one the reaper
    notices the job has no message and re-sends it).
    """
    lease = Lease.claim(context.session_factory, job_id, context.settings.lease_ttl_s)
    if lease is None:
        log.info("job %s: not claimable (finished, cancelled, or leased by a live worker); skipping", job_id)
        return None
    with lease:
        job = _start(context, lease)
        if job is None:
            return None
        try:
            return _train_and_finish(context, lease, job, shutdown or threading.Event(), enqueue)
        except DATABASE_DOWN:
            # The database went away: not the job's fault, and nothing can be
            # recorded now. The lease lapses, the reaper re-queues the job and
            # the next attempt resumes from the last checkpoint.
            log.exception("job %s: database unreachable; leaving the job to the reaper", job_id)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must end the job, whatever raised it
            return _fail(context, lease, job, exc)


def _start(context: WorkerContext, lease: Lease) -> ClaimedJob | None:
    """Move the claimed job to running; None (lease released) if it was cancelled meanwhile."""
    job_id, attempt = lease.job_id, lease.attempt
    with context.session_factory() as session:
        if not transition(session, job_id, ["queued", "running"], "running"):
            release_lease(session, job_id, lease.token)
            session.commit()
            log.info("job %s: no longer queued or running; skipping", job_id)
            return None
        job = get_job_unscoped(session, job_id)
        assert job is not None  # the transition just matched its row
        message = f"running (attempt {attempt} of {job.max_attempts})"
        add_events(session, job_id, [status_event(job_id, "running", message, key=lease.run_key, attempt=attempt)])
        claimed = ClaimedJob(job_id, job.owner_id, dict(job.spec), attempt, lease.run_key)
        session.commit()
    log.info("job %s: %s", job_id, message)
    return claimed


def _train_and_finish(
    context: WorkerContext,
    lease: Lease,
    job: ClaimedJob,
    shutdown: threading.Event,
    enqueue: Enqueue | None,
) -> str | None:
    """Load, train from the newest good checkpoint, then end the job as the run's outcome says."""
    spec = validate_spec(job.spec)
    if spec.resources.devices > 1:
        return _train_on_ranks(context, lease, job, spec, shutdown, enqueue)
    device = pick_device(spec)
    with _ceiling(context, device), tempfile.TemporaryDirectory(prefix="embedmix-", dir=_work_dir(context)) as scratch:
        data = _load_data(context, job, spec, Path(scratch))
        resume = _resume_point(context, job)
        # a checkpoint holds the weights the run had reached, so a resumed run needs no starting weights
        init_weights = source_weights(context, job.owner_id, spec) if resume is None else None
        record(context.session_factory, job.job_id, _start_event(job, spec, device_name(device), resume))
        # A cadence the spec asks for is kept exactly; the per-epoch default is rate-limited.
        min_interval = context.settings.checkpoint_min_interval_s if spec.train.checkpoint_every_steps is None else 0.0
        with StoreCallbacks(context, lease, shutdown=shutdown, checkpoint_min_interval_s=min_interval) as callbacks:
            result = train(
                spec,
                data,
                callbacks,
                resume=resume.state if resume else None,
                init_weights=init_weights,
                device=device,
            )
            callbacks.wait_for_checkpoints()
            _flush_before_ending(callbacks, lease)
        if result.stopped:
            return _end_stopped(context, lease, job, callbacks.stop_reason(), result, enqueue)
        info = _training_info(job, device, result, resume)
        return _succeed(context, lease, job, spec, data, result, Path(scratch) / "export", info)


def _train_on_ranks(
    context: WorkerContext,
    lease: Lease,
    job: ClaimedJob,
    spec: JobSpec,
    shutdown: threading.Event,
    enqueue: Enqueue | None,
) -> str | None:
    """``resources.devices`` > 1: the ranks train in child processes (worker.ranks); this process keeps the job.

    The store sees what a one-device run writes: the same callbacks take rank
    0's metrics and checkpoints, the same endings end the job. A rank that dies
    without an error loses the attempt (see :func:`_rank_lost`).
    """
    with tempfile.TemporaryDirectory(prefix="embedmix-", dir=_work_dir(context)) as scratch:
        run = RunDir(Path(scratch))
        resume = _plan_ranks(context, job, spec, run)
        min_interval = context.settings.checkpoint_min_interval_s if spec.train.checkpoint_every_steps is None else 0.0

        def started(where: str) -> None:
            record(context.session_factory, job.job_id, _start_event(job, spec, where, resume))

        with StoreCallbacks(context, lease, shutdown=shutdown, checkpoint_min_interval_s=min_interval) as callbacks:
            try:
                outcome: RanksOutcome | None = run_ranks(spec.resources.devices, run, RankRelay(run, callbacks, started))
                lost = None
            except RankLost as exc:
                outcome, lost = None, str(exc)
            callbacks.wait_for_checkpoints()
            _flush_before_ending(callbacks, lease)
        if outcome is None:
            return _rank_lost(context, lease, job, lost or "", enqueue)
        if outcome.stopped:
            return _end_stopped(context, lease, job, callbacks.stop_reason(), outcome, enqueue)
        return _succeed_on_ranks(context, lease, job, run, outcome)


def _plan_ranks(context: WorkerContext, job: ClaimedJob, spec: JobSpec, run: RunDir) -> ResumePoint | None:
    """Write what the ranks start from into the run directory; returns the checkpoint they resume from.

    The dataset is read here once (its summary goes to the timeline, a bad file
    fails the job before any rank starts) and dropped: each rank reads its own copy.
    """
    file_path = dataset_file(context.session_factory, context.artifacts, job.owner_id, spec, run.path)
    _read_data(context, job, spec, file_path)
    resume = _resume_point(context, job)
    init_weights = source_weights(context, job.owner_id, spec) if resume is None else None
    if resume is not None:
        (run.path / RESUME_FILE).write_bytes(resume.state)
    if init_weights is not None:
        save_file(init_weights, str(run.path / INIT_WEIGHTS_FILE))
    run.write_plan({
        "spec": job.spec,
        "dataset_file": str(file_path) if file_path is not None else None,
        "resume": resume is not None,
        "init_weights": init_weights is not None,
        "memory_bytes": rank_budget(context.settings.worker_memory_bytes, job_devices(job.spec)),  # each rank's share
        "training": _attempt_info(job, resume),
    })
    return resume


def _succeed_on_ranks(
    context: WorkerContext, lease: Lease, job: ClaimedJob, run: RunDir, outcome: RanksOutcome
) -> str | None:
    """End the job as succeeded with what rank 0 exported (the model files, the card, the map)."""
    assert outcome.card is not None  # rank 0 exports whenever the run was not stopped
    projection = None
    if outcome.projection is not None:
        entry = outcome.projection
        body = (run.path / entry["file"]).read_bytes()
        projection = Projection(body, entry["points"], entry["methods"], entry["seconds"])
    elif outcome.projection_error is not None:
        record(context.session_factory, job.job_id,
               warning_event(job.job_id, job.run_key, PROJECTION, outcome.projection_error))
    return _store_success(context, lease, job, outcome.step, outcome.epoch, outcome.metrics, outcome.card,
                          projection, run.path / EXPORT)


def _rank_lost(context: WorkerContext, lease: Lease, job: ClaimedJob, reason: str, enqueue: Enqueue | None) -> str | None:
    """A rank died without an error: the attempt is lost as if the worker had vanished, without waiting for the reaper.

    A job being cancelled ends cancelled; one with attempts left goes back to
    the queue (its next attempt resumes from the newest checkpoint); the last
    attempt fails the job with ``rank_lost``.
    """
    with context.session_factory() as session:
        row = get_job_unscoped(session, job.job_id)
        assert row is not None  # a leased job is not deleted
        status, attempts, max_attempts = row.status, row.attempts, row.max_attempts
    log.warning("job %s: %s", job.job_id, reason)
    if status == "cancelling":
        event = status_event(job.job_id, "cancelled", "cancelled (a training rank died while cancelling)", key="final")
        return "cancelled" if _finalize(context, lease, ["cancelling"], "cancelled", [event]) else None
    if attempts >= max_attempts:
        text = f"{reason}; all {max_attempts} attempts are used"
        return _fail_with(context, lease, job, Failure(-1, RANK_LOST, "RankLost", text, None, "", time.time()))
    key = f"{job.run_key}:rank-lost"
    events = [
        status_event(job.job_id, "queued", f"{reason}; re-queued after attempt {attempts} of {max_attempts}",
                     key=key, reason=RANK_LOST, attempt=attempts),
        NewEvent(type=ENQUEUED, message="message re-sent: a training rank died", data={"reason": RANK_LOST},
                 dedup_key=f"{job.job_id}:{key}:enqueued"),
    ]
    if not _finalize(context, lease, ["running"], "queued", events):
        return None
    _send_again(job, enqueue)
    return "queued"


def _ceiling(context: WorkerContext, device: torch.device) -> AbstractContextManager[None]:
    """The job's host-memory ceiling on a CPU worker (see worker.memory_ceiling).

    A GPU job's device memory is bounded by torch's own allocator, which raises
    ``OutOfMemoryError``; CUDA's driver maps host memory of its own that the
    ceiling must not starve.
    """
    if device.type != "cpu":
        return nullcontext()
    return memory_ceiling(context.settings.worker_memory_bytes)


def _flush_before_ending(callbacks: StoreCallbacks, lease: Lease) -> None:
    """The run's last metric points must be written before it ends: retried while the database
    is down, for as long as the lease lives (after that the ending fails and the reaper takes over)."""
    delay = RETRY_FIRST_S
    while not callbacks.flush() and not lease.lost:
        time.sleep(delay)
        delay = min(2 * delay, RETRY_MAX_S)


def _work_dir(context: WorkerContext) -> Path | None:
    """Where the job's scratch directory goes (dataset copy, exported files); None: the system temp dir."""
    if not context.settings.work_dir:
        return None
    path = Path(context.settings.work_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _load_data(context: WorkerContext, job: ClaimedJob, spec: JobSpec, scratch: Path) -> Dataset:
    """The job's dataset, built in or copied from its upload, with a summary in the timeline."""
    file_path = dataset_file(context.session_factory, context.artifacts, job.owner_id, spec, scratch)
    return _read_data(context, job, spec, file_path)


def _read_data(context: WorkerContext, job: ClaimedJob, spec: JobSpec, file_path: Path | None) -> Dataset:
    """Read the dataset (its upload at ``file_path``, if any) and put its summary in the timeline."""
    data = load_dataset(spec, file_path=file_path)
    summary = {k: v for k, v in data.describe().items() if k != "class_names"}
    classes = summary["num_classes"] or "no"
    message = (
        f"dataset {summary['source']}: {summary['train_rows']} train / {summary['test_rows']} test rows, "
        f"input shape {summary['input_shape']}, {classes} classes"
    )
    record(context.session_factory, job.job_id, log_event(job.job_id, job.run_key, "dataset", message, **summary))
    return data


def _resume_point(context: WorkerContext, job: ClaimedJob) -> ResumePoint | None:
    """The newest intact checkpoint; each corrupt one on the way is reported and dropped."""

    def report(checkpoint: Checkpoint) -> None:
        record(
            context.session_factory,
            job.job_id,
            warning_event(
                job.job_id,
                job.run_key,
                f"corrupt-checkpoint:{checkpoint.id}",
                f"checkpoint at step {checkpoint.step} does not match its sha256; "
                "falling back to the one before it",
                checkpoint_id=checkpoint.id,
                step=checkpoint.step,
            ),
        )

    return load_resume_point(context.session_factory, context.artifacts, job.job_id, report)


def _start_event(job: ClaimedJob, spec: JobSpec, where: str, resume: ResumePoint | None) -> NewEvent:
    """One line saying where training starts: from scratch, from pretrained weights, from another job's model
    or from which checkpoint, on which device (``where``, as `worker.ranks.device_name` names it)."""
    source = spec.model.init_from
    if resume is None and source is not None:
        message = f"training from the model of job {source.job} on {where}"
        return log_event(job.job_id, job.run_key, "start", message, device=where, init_from=source.job)
    if resume is None:
        pretrained = catalog.ENCODERS[spec.model.encoder].extra.get("pretrained")
        start = f"fine-tuning {pretrained}" if pretrained else "training from scratch"
        return log_event(job.job_id, job.run_key, "start", f"{start} on {where}", device=where)
    return log_event(
        job.job_id,
        job.run_key,
        "start",
        f"resumed from checkpoint at step {resume.step} (epoch {resume.epoch}) on {where}",
        device=where,
        resumed_from_step=resume.step,
        checkpoint_id=resume.checkpoint_id,
    )


def _training_info(
    job: ClaimedJob, device: torch.device, result: TrainResult, resume: ResumePoint | None
) -> dict[str, Any]:
    """What the model card records about how this model was trained."""
    return {**_attempt_info(job, resume), **run_info(device_name(device), result.step, result.epoch, result.seconds)}


def _attempt_info(job: ClaimedJob, resume: ResumePoint | None) -> dict[str, Any]:
    """The model card's part about the attempt that trained the model (the run's own part is `worker.ranks.run_info`)."""
    return {"job_id": job.job_id, "attempt": job.attempt, "resumed_from_step": resume.step if resume else None}


def _end_stopped(
    context: WorkerContext,
    lease: Lease,
    job: ClaimedJob,
    reason: StopReason | None,
    result: TrainResult | RanksOutcome,
    enqueue: Enqueue | None,
) -> str | None:
    """End a run the loop stopped early; the engine has saved a checkpoint (unless the lease was lost)."""
    if reason is StopReason.LEASE_LOST or reason is None:
        log.warning("job %s: lease lost at step %d; leaving the job to its new owner", job.job_id, result.step)
        return None
    if reason is StopReason.SHUTDOWN and _hand_back(context, lease, job, result):
        _send_again(job, enqueue)
        return "queued"
    event = status_event(
        job.job_id,
        "cancelled",
        f"cancelled at step {result.step}; its checkpoint is kept",
        key="final",
        step=result.step,
    )
    done = _finalize(context, lease, ["cancelling"], "cancelled", [event], step=result.step, epoch=result.epoch)
    return "cancelled" if done else None


def _hand_back(context: WorkerContext, lease: Lease, job: ClaimedJob, result: TrainResult | RanksOutcome) -> bool:
    """Return a running job to the queue because this worker is stopping; False if it is being cancelled.

    The attempt is given back too (``attempts - 1``): a worker that was asked
    to stop did not fail, and a deploy must not use up a job's attempts.
    """
    key = f"{job.run_key}:handback"
    events = [
        status_event(
            job.job_id,
            "queued",
            f"worker stopping; re-queued at step {result.step} (this attempt does not count)",
            key=key,
            reason="worker_shutdown",
            step=result.step,
        ),
        NewEvent(
            type=ENQUEUED,
            message="message re-sent: the worker handed the job back",
            data={"reason": "worker_shutdown"},
            dedup_key=f"{job.job_id}:{key}:enqueued",
        ),
    ]
    return _finalize(context, lease, ["running"], "queued", events, attempts=Job.attempts - 1)


def _send_again(job: ClaimedJob, enqueue: Enqueue | None) -> None:
    """Re-send a handed-back job's message; if that fails, the reaper's lost-message pass sends it."""
    if enqueue is None:
        return
    try:
        enqueue(job.job_id, job_devices(job.spec))
    except Exception:  # noqa: BLE001 - kombu raises many kinds of errors for an unreachable broker
        log.warning("job %s: could not re-send its message; the reaper will", job.job_id, exc_info=True)


def _succeed(
    context: WorkerContext,
    lease: Lease,
    job: ClaimedJob,
    spec: JobSpec,
    data: Dataset,
    result: TrainResult,
    out_dir: Path,
    info: dict[str, Any],
) -> str | None:
    """Export every format and make the embedding map, then end the job as succeeded with its outputs.

    The files and the map are stored by the ending's own transaction, with the
    pointers to them (``model_artifacts``, ``projection``) and the status: a
    lost ending leaves no artifact behind that no job points at. Non-finite
    metric values are left out: JSON (and so the job row and the model card)
    cannot carry NaN; the run's events already warned about them.
    """
    metrics = {name: value for name, value in result.metrics.items() if math.isfinite(value)}
    card = export(result, data, out_dir, metrics, info)
    projection = make_projection(
        context, job.job_id, job.run_key, result.encoder, data, pick_device(spec), spec.train.seed
    )
    return _store_success(context, lease, job, result.step, result.epoch, metrics, card, projection, out_dir)


def _store_success(
    context: WorkerContext,
    lease: Lease,
    job: ClaimedJob,
    step: int,
    epoch: int,
    metrics: dict[str, float],
    card: dict[str, Any],
    projection: Projection | None,
    out_dir: Path,
) -> str | None:
    """End the job as succeeded: the exported files in ``out_dir`` and the map stored by the ending's transaction."""
    summary = ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())
    events = [projection_event(job.job_id, job.run_key, projection)] if projection is not None else []
    events.append(
        status_event(
            job.job_id,
            "succeeded",
            f"succeeded at step {step}" + (f": {summary}" if summary else ""),
            key="final",
            metrics=metrics,
        )
    )

    def outputs(session: Session) -> dict[str, Any]:
        return {
            "model_artifacts": _store_model_files(context, session, out_dir, card),
            "projection": store_projection(session, context.artifacts, projection) if projection else None,
        }

    done = _finalize(
        context,
        lease,
        ["running", "cancelling"],
        "succeeded",
        events,
        outputs=outputs,
        metrics=metrics,
        step=step,
        epoch=epoch,
        card=card,
    )
    return "succeeded" if done else None


def _store_model_files(
    context: WorkerContext, session: Session, out_dir: Path, card: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Put each exported file into the artifact store in the caller's transaction; check what was stored."""
    files = {}
    for fmt, entry in card["files"].items():
        artifact = context.artifacts.put(session, _file_chunks(out_dir / entry["file"]))
        if artifact.sha256 != entry["sha256"] or artifact.bytes != entry["bytes"]:
            raise ModelStoreError(f"{entry['file']} did not reach the artifact store intact")
        files[fmt] = {
            "artifact_id": artifact.id,
            "sha256": artifact.sha256,
            "bytes": artifact.bytes,
            "file": entry["file"],
        }
    return files


def _file_chunks(path: Path) -> Iterator[bytes]:
    """A file's bytes in the store's chunk size, so a large model never sits in memory whole."""
    with path.open("rb") as file:
        while piece := file.read(CHUNK_SIZE):
            yield piece


def _output_artifact_ids(outputs: dict[str, Any]) -> list[str]:
    """The artifacts an ending's outputs point at."""
    files = outputs.get("model_artifacts") or {}
    projection = outputs.get("projection")
    return [entry["artifact_id"] for entry in files.values()] + ([projection["artifact_id"]] if projection else [])


def _drop_outputs(context: WorkerContext, session: Session, job_id: str, outputs: dict[str, Any]) -> None:
    """Remove the outputs stored for an ending that will not happen, before its rollback.

    The rollback alone removes every row, and the bytes of database blobs; files
    and S3 objects are outside the transaction, so they are deleted here.
    """
    for artifact_id in _output_artifact_ids(outputs):
        try:
            context.artifacts.delete(session, artifact_id)
        except Exception:  # noqa: BLE001 - a leftover file is harmless; the ending's answer is what matters
            log.warning("job %s: could not remove artifact %s", job_id, artifact_id, exc_info=True)


def _fail(context: WorkerContext, lease: Lease, job: ClaimedJob, exc: Exception) -> str | None:
    """Mark the job failed: a code and message the user can act on, the traceback only in an event.

    The code is the engine's (``core.errors.failure_code``): an error the user
    can act on says which, anything else is our fault and reads as internal_error.
    """
    failure = exc.error if isinstance(exc, RankFailed) else failure_of(exc)
    if failure.code == INTERNAL_ERROR and failure.rank < 0:
        log.exception("job %s: internal error", job.job_id)
    return _fail_with(context, lease, job, failure)


def _fail_with(context: WorkerContext, lease: Lease, job: ClaimedJob, failure: Failure) -> str | None:
    """Mark the job failed with ``failure`` (an exception of this process or the one a rank reported)."""
    code = failure.code
    error: dict[str, Any] = {"code": code, "message": _error_message(code, failure.kind, failure.text, context.settings)}
    if failure.errors is not None:
        error["errors"] = failure.errors
    events = [status_event(job.job_id, "failed", f"failed: {error['message']}", key="final", code=code)]
    if code == INTERNAL_ERROR:
        if failure.rank >= 0:
            log.error("job %s: internal error in rank %d:\n%s", job.job_id, failure.rank, failure.traceback)
        events.append(
            NewEvent(
                type=TRACEBACK,
                message=f"internal error: {error['message']}",
                level="error",
                data={"traceback": failure.traceback},
                dedup_key=f"{job.job_id}:{job.run_key}:traceback",
            )
        )
    else:
        # The message goes to the owner's events, not the log: a data error may quote the file.
        log.info("job %s: failed with %s", job.job_id, code)
    return "failed" if _finalize(context, lease, ["running", "cancelling"], "failed", events, error=error) else None


def _error_message(code: str, kind: str, text: str, settings: Settings) -> str:
    """User errors keep their (helpful) message; internal ones say only what kind of error (``kind``) it was."""
    if code == OUT_OF_MEMORY:
        first_line = (text.splitlines() or [""])[0][:MAX_INTERNAL_MESSAGE]
        return (
            f"the job ran out of memory ({first_line}); a job may use "
            f"{describe_bytes(settings.worker_memory_bytes)} on this service's workers: "
            "shrink train.batch_size, dataset.size or model.width"
        )
    if code != INTERNAL_ERROR:
        return text[:MAX_ERROR_MESSAGE]
    first_line = (text.splitlines() or [""])[0]
    return f"{kind}: {first_line}"[:MAX_INTERNAL_MESSAGE]


def _finalize(
    context: WorkerContext,
    lease: Lease,
    from_statuses: list[str],
    to_status: str,
    events: list[NewEvent],
    *,
    outputs: Outputs | None = None,
    **fields: Any,
) -> bool:
    """One transaction: store the outputs, prove the lease, change the status, clear the lease, write the events.

    ``outputs`` stores the job's outputs in that transaction and returns the
    columns that point at them; they are stored before the lease is renewed, so
    on PostgreSQL the job's row is locked (by the renewal) only for the short
    rest of the transaction, not while the files go in.
    """
    return _while_leased(
        lease,
        f"ending as {to_status}",
        lambda: _finalize_once(context, lease, from_statuses, to_status, events, outputs, **fields),
    )


def _while_leased(lease: Lease, what: str, write: Callable[[], T]) -> T:
    """Run the ending's write, waiting out a database outage (with backoff) while the lease lives.

    The write is one transaction, so a try cut off by the outage left nothing
    behind (but the bytes of file and S3 artifacts, which no row names) and the
    next try starts clean; a run that trained through an outage is not thrown
    away for want of its last write.
    """
    delay = RETRY_FIRST_S
    while True:
        try:
            return write()
        except DATABASE_DOWN:
            if lease.lost:
                raise
            log.warning("job %s: database unreachable while %s; retrying in %.1f s", lease.job_id, what, delay)
            time.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_S)


def _finalize_once(
    context: WorkerContext,
    lease: Lease,
    from_statuses: list[str],
    to_status: str,
    events: list[NewEvent],
    outputs: Outputs | None,
    **fields: Any,
) -> bool:
    with context.session_factory() as session:
        stored = outputs(session) if outputs is not None else {}
        if not lease.renew(session):
            _drop_outputs(context, session, lease.job_id, stored)
            session.rollback()
            log.warning("job %s: lease lost before it could become %s", lease.job_id, to_status)
            return False
        moved = transition(
            session,
            lease.job_id,
            from_statuses,
            to_status,
            lease_owner=None,
            lease_expires_at=None,
            **fields,
            **stored,
        )
        if not moved:
            _drop_outputs(context, session, lease.job_id, stored)
            session.rollback()
            log.info("job %s: not in %s any more; leaving it", lease.job_id, from_statuses)
            return False
        add_events(session, lease.job_id, events)
        lease.end()
        session.commit()
    log.info("job %s: %s", lease.job_id, to_status)
    return True
