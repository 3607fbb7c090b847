"""Training callbacks the tests share: stop a run at a given step and keep what it reported."""

from __future__ import annotations

from embedmix.core.loop import Progress


class StopAt:
    """Asks the run to stop once it has reached `step`, keeping each checkpoint and metrics report it made."""

    def __init__(self, step: int) -> None:
        self.at, self.step = step, 0
        self.checkpoints: list[bytes] = []
        self.metrics: list[dict[str, float]] = []

    def on_progress(self, progress: Progress) -> None:
        self.step = progress.step

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self.metrics.append(values)

    def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None:
        self.checkpoints.append(state)

    def should_stop(self) -> bool:
        return self.step >= self.at
