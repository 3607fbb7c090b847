"""What the side-by-side benchmarks (bench/text.py, bench/selfsupervised.py) report of their rounds."""

from __future__ import annotations

import os
import statistics
from typing import Any


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: a figure is only comparable with one measured under the same load."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def median(runs: list[dict[str, Any]], key: str) -> float:
    """The median of `key` over one side's rounds (a round's spread is larger than a mean hides)."""
    return statistics.median(r[key] for r in runs)
