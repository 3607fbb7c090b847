"""The run directory between a job's task and its ranks (worker/ranks.py), without processes.

Rank 0's side (`ReportingCallbacks`) writes what the loop reports; the task's
side (`RankRelay`) must hand the same calls, in the same order, to its own
callbacks, and the task's stop request must reach the ranks. `group_outcome`
decides what a group's end means for the job.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from embedmix.core.errors import INTERNAL_ERROR
from embedmix.core.train import Progress
from embedmix.worker.ranks import (
    Failure,
    RankFailed,
    RankLost,
    RankRelay,
    RanksOutcome,
    ReportingCallbacks,
    RunDir,
    group_outcome,
)


class Recorder:
    """Callbacks that record each call, and ask to stop once told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.stop = False

    def on_progress(self, progress: Progress) -> None:
        self.calls.append(("progress", progress.step, progress.eta_s))

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self.calls.append(("metrics", step, epoch, values))

    def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None:
        self.calls.append(("checkpoint", state, step, epoch))

    def should_stop(self) -> bool:
        return self.stop


def _progress(step: int) -> Progress:
    return Progress(step=step, total_steps=10, epoch=0, epochs=1, loss=0.5, lr=0.1, elapsed_s=1.0,
                    eta_s=math.inf, samples_per_s=3.0)


def test_rank_zero_reports_reach_the_task_once_and_in_order(tmp_path: Path) -> None:
    now = [0.0]
    rank, parent = ReportingCallbacks(RunDir(tmp_path), lambda: now[0]), Recorder()
    started: list[str] = []
    relay = RankRelay(RunDir(tmp_path), parent, started.append)
    RunDir(tmp_path).report("started", device="cpu")
    rank.on_progress(_progress(1))
    now[0] = 0.05
    rank.on_progress(_progress(2))  # too soon to be written on its own: it goes out before the next report
    relay.poll()
    assert parent.calls == [("progress", 1, math.inf)]
    rank.on_metrics(2, 0, {"train/loss": 0.5, "eval/x": math.nan})
    rank.on_checkpoint(b"state at 2", 2, 0)
    rank.on_checkpoint(b"stop state at 2", 2, 0)  # a stop checkpoints the step a periodic checkpoint just did
    relay.poll()

    assert started == ["cpu"]
    assert parent.calls[0] == ("progress", 1, math.inf)
    assert parent.calls[1:3] == [("progress", 2, math.inf), ("metrics", 2, 0, parent.calls[2][3])]
    assert parent.calls[2][3]["train/loss"] == 0.5 and math.isnan(parent.calls[2][3]["eval/x"])
    assert parent.calls[3:] == [("checkpoint", b"state at 2", 2, 0), ("checkpoint", b"stop state at 2", 2, 0)]
    assert not list(tmp_path.glob("checkpoint-*"))  # read once, then removed
    relay.poll()
    assert len(parent.calls) == 5  # nothing is handed over twice


def test_a_line_still_being_written_waits_for_the_next_read(tmp_path: Path) -> None:
    run, parent = RunDir(tmp_path), Recorder()
    relay = RankRelay(RunDir(tmp_path), parent, print)
    run.report("metrics", step=1, epoch=0, values={"a": 1.0})
    with (tmp_path / "reports.jsonl").open("ab") as file:
        file.write(b'{"kind": "metrics", "step": 2, ')
    relay.poll()
    with (tmp_path / "reports.jsonl").open("ab") as file:
        file.write(b'"epoch": 0, "values": {"a": 2.0}}\n')
    relay.poll()
    assert parent.calls == [("metrics", 1, 0, {"a": 1.0}), ("metrics", 2, 0, {"a": 2.0})]


def test_the_tasks_stop_request_reaches_the_ranks(tmp_path: Path) -> None:
    parent = Recorder()
    relay, rank = RankRelay(RunDir(tmp_path), parent, print), ReportingCallbacks(RunDir(tmp_path))
    relay.poll()
    assert not rank.should_stop()
    parent.stop = True
    relay.poll()
    assert rank.should_stop()


OUTCOME = RanksOutcome(step=3, epoch=1, stopped=False, seconds=1.0, metrics={}, card={}, projection=None,
                       projection_error=None)


def _failure(rank: int, code: str, at: float) -> Failure:
    return Failure(rank=rank, code=code, kind="E", text=f"rank {rank}", errors=None, traceback="", time=at)


def test_a_clean_exit_is_rank_zeros_outcome() -> None:
    assert group_outcome(0, OUTCOME, [], 2) is OUTCOME


@pytest.mark.parametrize(
    ("errors", "failed_rank"),
    [
        ([_failure(0, INTERNAL_ERROR, 2.0), _failure(1, INTERNAL_ERROR, 1.0)], 1),  # the first one is the cause
        ([_failure(0, INTERNAL_ERROR, 1.0), _failure(1, "diverged", 2.0)], 1),  # a user's error wins
        ([_failure(1, "out_of_memory", 1.0)], 1),  # even when a rank was torn down before it could say why
    ],
)
def test_a_reported_error_fails_the_job(errors: list[Failure], failed_rank: int) -> None:
    ordered = sorted(errors, key=lambda e: e.time)
    with pytest.raises(RankFailed) as raised:
        group_outcome(1, None, ordered, 2)
    assert raised.value.error.rank == failed_rank


@pytest.mark.parametrize(("exit_code", "errors"), [(1, []), (1, [_failure(0, INTERNAL_ERROR, 1.0)]), (0, [])])
def test_a_rank_that_said_nothing_is_lost(exit_code: int, errors: list[Failure]) -> None:
    """Killed (rank 1 gave no reason; rank 0's broken collective is not one), or an exit without a result."""
    with pytest.raises(RankLost):
        group_outcome(exit_code, None, errors, 2)


def test_errors_read_back_first_one_first(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for rank, message in [(1, "earlier"), (0, "later")]:
        try:
            raise ValueError(message)
        except ValueError as exc:
            run.write_error(rank, exc)
    errors = run.errors()
    assert [e.rank for e in errors] == [1, 0] and [e.text for e in errors] == ["earlier", "later"]
    assert errors[0].code == INTERNAL_ERROR and errors[0].kind == "ValueError" and "ValueError" in errors[0].traceback
