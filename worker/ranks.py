"""A job of `resources.devices: N > 1` in the worker: N ranks started by torch's launcher, reporting through files.

The Celery task stays the job's owner: it holds the lease and its heartbeat,
polls the cancel flag, writes metrics, events and checkpoints to the store
through the same `StoreCallbacks` as a one-device run, and ends the job. The
training happens in a child process tree it never shares memory with: the
launcher (`python -m torch.distributed.run --standalone`, gloo on the CPU,
nccl on CUDA) and its N ranks. CUDA is touched only in the ranks, never in the
Celery process.

The two sides talk through a run directory (:class:`RunDir`), JSON and raw
bytes only (nothing is unpickled):

* ``plan.json`` (parent -> ranks): the resolved spec, the dataset file, the
  checkpoint to resume from and the starting weights (files beside it), the
  memory budget, what the model card says of the attempt.
* ``reports.jsonl`` (rank 0 -> parent): one JSON object a line (``started``,
  ``progress``, ``metrics``, ``checkpoint`` with its bytes in a file beside it,
  ``result`` with the exported files in ``export/``). Only rank 0 writes it, so
  each metric point and checkpoint arrives once.
* ``stop`` (parent -> ranks): its existence asks the group to stop; rank 0 reads
  it and broadcasts the request at the step boundary (`core.loop.GroupCallbacks`),
  so every rank stops at the same step and rank 0 checkpoints there.
* ``error-<rank>.json`` (each rank): the exception a rank ended with.

No rank outlives the task: the launcher and every rank carry a parent-death
signal (SIGKILL), and however the wait ends the task kills the launcher and
whatever of its tree is left. A rank that dies without saying why (killed,
crashed) is a lost rank: the job goes back to the queue while attempts are
left and the next attempt resumes from the newest checkpoint, like a job
whose worker vanished; an error a rank reports ends the job as that error.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import torch
from safetensors.torch import load_file

from embedmix.core.data import load_dataset
from embedmix.core.errors import INTERNAL_ERROR, SpecError, failure_code
from embedmix.core.export import export
from embedmix.core.launch import (
    STOP_GRACE_S,
    die_with_parent,
    exit_rank,
    join_group,
    launched_rank,
    leave_group,
    rank_command,
)
from embedmix.core.projection import project_test_set
from embedmix.core.spec import validate_spec
from embedmix.core.train import Callbacks, NullCallbacks, Progress, pick_device, train
from embedmix.worker.memory_ceiling import memory_ceiling

log = logging.getLogger("embedmix.worker")

PLAN, REPORTS, STOP, EXPORT = "plan.json", "reports.jsonl", "stop", "export"
RESUME_FILE, INIT_WEIGHTS_FILE, PROJECTION_FILE = "resume.pt", "init.safetensors", "projection.json"
RANK_LOST = "rank_lost"  # the error code of a job whose ranks kept dying until its attempts ran out
POLL_S = 0.1  # how often the parent reads the reports and the stop request while the ranks run
PROGRESS_EVERY_S = 0.2  # rank 0 writes a progress line at most this often (the store keeps the newest only)


class RankLost(RuntimeError):
    """A rank ended without reporting an error of its own (killed, crashed): the attempt is lost, not failed."""


@dataclass(frozen=True)
class Failure:
    """An exception as a failed job records it: a rank's, read from its error file, or the task's own.

    ``kind`` is the exception's type name, ``text`` its message, ``errors`` a
    SpecError's fields; ``rank`` is -1 for an exception of the task itself.
    """

    rank: int
    code: str
    kind: str
    text: str
    errors: list[dict[str, str]] | None
    traceback: str
    time: float


class RankFailed(Exception):
    """A rank ended with an error; ``error`` is the one the job fails with."""

    def __init__(self, error: Failure) -> None:
        super().__init__(error.text)
        self.error = error


def failure_of(exc: BaseException, rank: int = -1) -> Failure:
    """What a job records of ``exc``; the code is the engine's (``core.errors.failure_code``)."""
    return Failure(rank=rank, code=failure_code(exc), kind=type(exc).__name__, text=str(exc),
                   errors=exc.errors if isinstance(exc, SpecError) else None,
                   traceback="".join(traceback.format_exception(exc)), time=time.time())


class RunDir:
    """The files between the task and its ranks (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def write_plan(self, plan: dict[str, Any]) -> None:
        (self.path / PLAN).write_text(json.dumps(plan))

    def plan(self) -> dict[str, Any]:
        return json.loads((self.path / PLAN).read_text())

    def request_stop(self) -> None:
        (self.path / STOP).touch()

    def stop_requested(self) -> bool:
        return (self.path / STOP).exists()

    def report(self, kind: str, **fields: Any) -> None:
        """Append one report line (rank 0); a line is written whole and flushed before the call returns."""
        line = json.dumps({"kind": kind, **fields}).encode() + b"\n"
        with (self.path / REPORTS).open("ab") as file:
            file.write(line)

    def write_blob(self, name: str, data: bytes) -> None:
        """Write a file the parent reads after its report line arrives (renamed into place: never seen half-written)."""
        tmp = self.path / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.path / name)

    def new_reports(self) -> list[dict[str, Any]]:
        """The report lines written since the last call (a line still being written waits for the next)."""
        path = self.path / REPORTS
        if not path.exists():
            return []
        with path.open("rb") as file:
            file.seek(self._offset)
            chunk = file.read()
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        return [json.loads(line) for line in lines if line]

    def take_blob(self, name: str) -> bytes:
        """A file rank 0 wrote, removed once read (checkpoints would otherwise pile up)."""
        path = self.path / name
        data = path.read_bytes()
        path.unlink()
        return data

    def write_error(self, rank: int, exc: BaseException) -> None:
        self.write_blob(f"error-{rank}.json", json.dumps(vars(failure_of(exc, rank))).encode())

    def errors(self) -> list[Failure]:
        """The errors the ranks reported, the first one first."""
        found = [Failure(**json.loads(p.read_text())) for p in self.path.glob("error-*.json")]
        return sorted(found, key=lambda e: (e.time, e.rank))


# -- the parent: launch, relay, tear down ---------------------------------------------------


@dataclass(frozen=True)
class RanksOutcome:
    """How the group's run ended, as rank 0 reported it; the fields `worker.train_task` ends a job with."""

    step: int
    epoch: int
    stopped: bool
    seconds: float
    metrics: dict[str, float]
    card: dict[str, Any] | None  # the model card of the exported files (in RunDir/export), when it succeeded
    projection: dict[str, Any] | None  # the embedding map's file and figures, when one was made
    projection_error: str | None


class RankRelay:
    """Relays rank 0's reports to the task's callbacks and the task's stop request to the ranks."""

    def __init__(self, run: RunDir, callbacks: Callbacks, on_started: Callable[[str], None]) -> None:
        self.run, self.callbacks, self.on_started = run, callbacks, on_started
        self.outcome: RanksOutcome | None = None
        self._stopping = False

    def poll(self) -> None:
        """Hand new reports over; ask the ranks to stop once the callbacks say the run must."""
        for report in self.run.new_reports():
            self._dispatch(report)
        if not self._stopping and self.callbacks.should_stop():
            self._stopping = True
            self.run.request_stop()

    def _dispatch(self, report: dict[str, Any]) -> None:
        kind = report.pop("kind")
        if kind == "started":
            self.on_started(report["device"])
        elif kind == "progress":
            self.callbacks.on_progress(Progress(**report))
        elif kind == "metrics":
            self.callbacks.on_metrics(report["step"], report["epoch"], report["values"])
        elif kind == "checkpoint":
            self.callbacks.on_checkpoint(self.run.take_blob(report["file"]), report["step"], report["epoch"])
        elif kind == "result":
            self.outcome = RanksOutcome(**report)


def run_ranks(world_size: int, run: RunDir, relay: RankRelay) -> RanksOutcome:
    """Start the launcher on the run directory, relay until it exits, and return rank 0's outcome.

    Raises the first error a rank reported (as :class:`RankFailed`), or
    :class:`RankLost` when a rank ended without one. Whatever ends the wait,
    nothing of the launcher's tree is left running.
    """
    with _launched(rank_command(world_size, "embedmix.worker.ranks", [str(run.path)]), run) as launcher:
        while launcher.poll() is None:
            relay.poll()
            time.sleep(POLL_S)
        relay.poll()
    return group_outcome(launcher.returncode, relay.outcome, run.errors(), world_size)


def group_outcome(
    exit_code: int, outcome: RanksOutcome | None, errors: list[Failure], world_size: int
) -> RanksOutcome:
    """What the group's end means: rank 0's outcome, an error to fail with, or a lost rank.

    An error a user can act on (a code other than internal_error) is the job's,
    whichever rank reported it; when every rank reported an internal error, the
    first one is the cause (the rest are its peers' broken collectives). A rank
    that reported nothing was killed or crashed: the attempt is lost.
    """
    if exit_code == 0 and outcome is not None:
        return outcome
    if len(errors) == world_size or any(e.code != INTERNAL_ERROR for e in errors):
        raise RankFailed(next((e for e in errors if e.code != INTERNAL_ERROR), errors[0]))
    raise RankLost(f"a training rank ended without an error (launcher exit status {exit_code})")


@contextmanager
def _launched(command: list[str], run: RunDir) -> Iterator[subprocess.Popen[bytes]]:
    """The launcher, in a session of its own and dying with this thread; torn down with its ranks on the way out."""
    # The preexec_fn only calls prctl, through a library loaded before the fork (core.launch._LIBC).
    launcher = subprocess.Popen(
        command, start_new_session=True, preexec_fn=partial(die_with_parent, os.getpid())  # noqa: PLW1509
    )
    try:
        yield launcher
    finally:
        _tear_down(launcher, run)


def _tear_down(launcher: subprocess.Popen[bytes], run: RunDir) -> None:
    """Stop the launcher (SIGTERM: it stops its ranks), then kill whatever of the run is still alive.

    torch starts each rank in a session of its own, so what is left is found by
    its command line, which names the run directory: no unrelated process (a
    reused pid) matches it.
    """
    if launcher.poll() is None:
        launcher.terminate()
        try:
            launcher.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
    left = [p for p in psutil.process_iter(["cmdline"]) if str(run.path) in (p.info["cmdline"] or [])]
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=STOP_GRACE_S)


# -- a rank -------------------------------------------------------------------------------------


class ReportingCallbacks:
    """Rank 0's `core.loop.Callbacks`: every report goes to the parent as a line of the run directory."""

    def __init__(self, run: RunDir, clock: Callable[[], float] = time.monotonic) -> None:
        self.run, self.clock = run, clock
        self._progress: dict[str, Any] | None = None
        self._last_progress = -math.inf
        self._checkpoints = 0  # names each checkpoint's file: a stop can checkpoint the step a periodic one just did

    def on_progress(self, progress: Progress) -> None:
        self._progress = dict(vars(progress))
        if self.clock() - self._last_progress >= PROGRESS_EVERY_S:
            self.flush_progress()

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self.flush_progress()
        self.run.report("metrics", step=step, epoch=epoch, values=values)

    def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None:
        self.flush_progress()  # the parent tells the run's last checkpoint by the progress's total
        self._checkpoints += 1
        name = f"checkpoint-{self._checkpoints}.pt"
        self.run.write_blob(name, state)
        self.run.report("checkpoint", step=step, epoch=epoch, file=name)

    def should_stop(self) -> bool:
        return self.run.stop_requested()

    def flush_progress(self) -> None:
        if self._progress is not None:
            self.run.report("progress", **self._progress)
            self._progress = None
        self._last_progress = self.clock()


def run_info(where: str, step: int, epoch: int, seconds: float) -> dict[str, Any]:
    """What the model card says of the run itself (the task adds the attempt's part)."""
    return {"device": where, "steps": step, "epochs": epoch, "seconds_last_attempt": round(seconds, 3)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def rank_main(path: Path) -> None:
    """One rank's life: join the group, train, and (rank 0) report and export; any error goes to its file."""
    run, rank = RunDir(path), launched_rank()
    try:
        _train_rank(run, rank)
    except BaseException as exc:
        run.write_error(rank, exc)
        raise


def _train_rank(run: RunDir, rank: int) -> None:
    plan = run.plan()
    spec = validate_spec(plan["spec"])
    device = pick_device(spec)
    ceiling = memory_ceiling(plan["memory_bytes"]) if device.type == "cpu" else nullcontext()
    with ceiling:
        ranks = join_group(device)
        try:
            data = load_dataset(spec, file_path=plan["dataset_file"])
            resume = (run.path / RESUME_FILE).read_bytes() if plan["resume"] else None
            init_weights = load_file(str(run.path / INIT_WEIGHTS_FILE)) if plan["init_weights"] else None
            lead = ranks.rank == 0
            callbacks = ReportingCallbacks(run) if lead else NullCallbacks()
            if lead:
                run.report("started", device=device_name(device))
            result = train(spec, data, callbacks, resume=resume, init_weights=init_weights, device=device)
        finally:
            leave_group()
        if not lead:
            return
        callbacks.flush_progress()
        outcome = {"step": result.step, "epoch": result.epoch, "stopped": result.stopped, "seconds": result.seconds,
                   "metrics": {k: v for k, v in result.metrics.items() if math.isfinite(v)},
                   "card": None, "projection": None, "projection_error": None}
        if not result.stopped:
            info = {**plan["training"], **run_info(device_name(device), result.step, result.epoch, result.seconds)}
            outcome["card"] = export(result, data, run.path / EXPORT, outcome["metrics"], info)
            outcome.update(_projection(run, result.encoder, data, device, spec.train.seed))
        run.report("result", **outcome)


def _projection(run: RunDir, encoder: Any, data: Any, device: Any, seed: int) -> dict[str, Any]:
    """The embedding map into its file, or why there is none (a missing map must not fail a trained model)."""
    try:
        maps = project_test_set(encoder, data, device, seed=seed)
    except Exception as exc:  # noqa: BLE001 - as worker.projection.make_projection
        return {"projection_error": f"no embedding map: {type(exc).__name__}: {str(exc)[:200]}"}
    if maps is None:
        return {}
    run.write_blob(PROJECTION_FILE, json.dumps(maps, separators=(",", ":")).encode())
    return {"projection": {"file": PROJECTION_FILE, "points": maps["points"],
                           "methods": [m["method"] for m in maps["maps"]], "seconds": maps["seconds"]}}


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]))
    exit_rank()  # an error above exits the usual way, with its traceback
