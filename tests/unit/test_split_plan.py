"""`plan_split` works out from counts alone the sizes `split` makes from the rows themselves."""

from __future__ import annotations

import numpy as np
import pytest

from embedmix.core.data.split import plan_split, split
from embedmix.core.spec import SplitSpec

SPLITS = [
    SplitSpec(kind="random", test_fraction=0.2),
    SplitSpec(kind="random", test_fraction=0.33),
    SplitSpec(kind="classes", holdout_classes=[1, 3]),
    SplitSpec(kind="given"),
]


def raw_data(rng: np.random.Generator, counts: list[int], test_counts: list[int] | None) -> dict[str, np.ndarray]:
    y = np.repeat(np.arange(len(counts)), counts)
    raw = {"x": rng.normal(size=(len(y), 2)), "y": rng.permutation(y)}
    if test_counts is not None:
        y_test = np.repeat(np.arange(len(test_counts)), test_counts)
        raw |= {"x_test": rng.normal(size=(len(y_test), 2)), "y_test": y_test}
    return raw


@pytest.mark.parametrize("spec", SPLITS, ids=lambda s: f"{s.kind}-{s.test_fraction}")
@pytest.mark.parametrize("seed", range(6))
def test_the_plan_matches_the_split_it_predicts(spec: SplitSpec, seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 30, size=5).tolist()
    test_counts = rng.integers(1, 9, size=5).tolist() if spec.kind == "given" or seed % 2 else None
    arrays, _ = split(raw_data(rng, counts, test_counts), "classification", spec, seed)
    plan = plan_split(spec, counts, test_counts, sum(counts), sum(test_counts or []))
    assert (plan.train_rows, plan.test_rows) == (len(arrays["y_train"]), len(arrays["y_test"]))
    made = {int(c): int(k) for c, k in zip(*np.unique(arrays["y_train"], return_counts=True))}
    assert {c: k for c, k in plan.train_per_class.items() if k} == made


@pytest.mark.parametrize("rows", [1, 7, 40, 101])
def test_the_plan_of_unlabelled_rows_matches_the_random_split(rows: int) -> None:
    spec = SplitSpec(kind="random", test_fraction=0.3)
    raw = {"x": np.zeros((rows, 2))}
    plan = plan_split(spec, None, None, rows, 0)
    if plan.test_rows == 0:
        with pytest.raises(Exception, match="test set empty"):
            split(raw, None, spec, 0)
        return
    arrays, _ = split(raw, None, spec, 0)
    assert (plan.train_rows, plan.test_rows) == (len(arrays["x_train"]), len(arrays["x_test"]))
    assert plan.train_per_class is None
