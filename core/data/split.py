"""Train/test splits: random (stratified when labelled), class hold-out, or the file's own; and validation carves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedmix.core.data.dataset import Task
from embedmix.core.errors import DataError
from embedmix.core.spec import SplitSpec


def test_share(rows: int, fraction: float) -> int:
    """How many of `rows` (one class's, or all of unlabelled data's) a random split puts in the test set."""
    return int(round(fraction * rows))


VALIDATION_SEED_OFFSET = 1000  # a validation carve's seed is the split's seed + this: never the test split's draw
VALIDATION_FIELD = "dataset.split.validation_fraction"


def _random(x: np.ndarray, y: np.ndarray | None, task: Task | None, fraction: float, seed: int,
            side: str = "test") -> np.ndarray:
    """The rows a seeded random share (stratified by class when labelled) puts on `side`; both sides must keep rows."""
    rng = np.random.default_rng(seed)
    n = len(x)
    if task == "classification":
        test = np.zeros(n, dtype=bool)
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            test[idx[:test_share(len(idx), fraction)]] = True
    else:
        test = np.zeros(n, dtype=bool)
        test[rng.permutation(n)[:test_share(n, fraction)]] = True
    if test.all() or not test.any():
        counts = np.unique(y, return_counts=True)[1].tolist() if task == "classification" else None
        raise DataError(empty_split_message(counts, n, fraction, test.all(), side))
    return test


def empty_split_message(class_counts: list[int] | None, n: int, fraction: float, all_test: bool,
                        side: str = "test") -> str:
    """Why a random split left one side empty, in the data's own numbers (classes, rows, fraction).

    `side` is the share drawn: "test" (of all rows) or "validation" (of the training rows).
    """
    empty = "train" if all_test else side
    field = f"{side}_fraction"
    if class_counts is None:
        return f"a {field} of {fraction} of {n} rows leaves the {empty} set empty; change {field} or add rows"
    return (f"the split is stratified: each class puts round({fraction} x its rows) in the {side} set, and "
            f"{len(class_counts)} classes over {n} rows (at most {max(class_counts)} per class) "
            f"leave the {empty} set empty; use fewer classes, more rows or another {field}")


def carve_validation(arrays: dict[str, np.ndarray], task: Task | None, fraction: float, seed: int
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Cut `fraction` of the training side off as a validation set (x_val/y_val), drawn as a random test split is.

    Only training rows are drawn from, so validation and test never share a row,
    and the seed is offset (VALIDATION_SEED_OFFSET) so the draw is not the test
    split's. Returns the arrays and what the model card records.
    """
    y = arrays["y_train"]
    val = _random(arrays["x_train"], y, task, fraction, seed + VALIDATION_SEED_OFFSET, "validation")
    out = arrays | {"x_train": arrays["x_train"][~val], "y_train": None if y is None else y[~val],
                    "x_val": arrays["x_train"][val], "y_val": None if y is None else y[val]}
    return out, {"validation_fraction": fraction, "validation_seed": seed + VALIDATION_SEED_OFFSET,
                 "validation_rows": int(val.sum())}


def carve_validation_rows(x: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unlabelled rows (a held-out outlier pool) cut like `carve_validation`: (the rows kept, the validation rows)."""
    val = _random(x, None, None, fraction, seed + VALIDATION_SEED_OFFSET, "validation")
    return x[~val], x[val]


@dataclass(frozen=True)
class SplitPlan:
    """The sizes `split` would give, worked out from the data's counts alone (no row is read)."""

    train_per_class: dict[int, int] | None  # classification: training rows per class id; else None
    train_rows: int
    test_rows: int
    validation_rows: int = 0  # carved from the training side when the split has a validation_fraction


def plan_split(spec: SplitSpec, class_counts: list[int] | None, test_class_counts: list[int] | None,
               rows: int, test_rows: int) -> SplitPlan:
    """What `split` (then `carve_validation`) makes of a file with these counts: `class_counts` over
    its rows and `test_class_counts` over its own test rows (both None for data without class labels).

    The service uses it to refuse a job whose split cannot work before any worker reads the file.
    """
    plan = _plan_test(spec, class_counts, test_class_counts, rows, test_rows)
    fraction = spec.validation_fraction
    if fraction is None:
        return plan
    if plan.train_per_class is None:
        val = test_share(plan.train_rows, fraction)
        return SplitPlan(None, plan.train_rows - val, plan.test_rows, val)
    per_class = {c: k - test_share(k, fraction) for c, k in plan.train_per_class.items()}
    train = sum(per_class.values())
    return SplitPlan(per_class, train, plan.test_rows, plan.train_rows - train)


def _plan_test(spec: SplitSpec, class_counts: list[int] | None, test_class_counts: list[int] | None,
               rows: int, test_rows: int) -> SplitPlan:
    if spec.kind == "given":
        per_class = None if class_counts is None else dict(enumerate(class_counts))
        return SplitPlan(per_class, rows, test_rows)
    n = rows + test_rows
    if class_counts is None:
        test = test_share(n, spec.test_fraction)
        return SplitPlan(None, n - test, test)
    pooled = [k + (test_class_counts[c] if test_class_counts else 0) for c, k in enumerate(class_counts)]
    if spec.kind == "classes":
        held = set(spec.holdout_classes or [])
        test = sum(k for c, k in enumerate(pooled) if c in held)
        return SplitPlan({c: k for c, k in enumerate(pooled) if c not in held}, n - test, test)
    per_class = {c: k - test_share(k, spec.test_fraction) for c, k in enumerate(pooled) if k}
    train = sum(per_class.values())
    return SplitPlan(per_class, train, n - train)


def split(raw: dict[str, Any], task: Task | None, spec: SplitSpec, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Return x_train, y_train, x_test, y_test and a description for the model card.

    'random' pools any test arrays the file carries and draws a fresh stratified split;
    'given' uses the file's x_test/y_test as they are.
    """
    if spec.kind == "given":
        if "x_test" not in raw:
            raise DataError("split kind 'given' needs a test set in the data (x_test/y_test arrays, or a 'split' column)")
        arrays = {"x_train": raw["x"], "y_train": raw.get("y"), "x_test": raw["x_test"], "y_test": raw.get("y_test")}
        return arrays, {"kind": "given"}
    x, y = raw["x"], raw.get("y")
    if "x_test" in raw:
        x = np.concatenate([x, raw["x_test"]])
        y = None if y is None else np.concatenate([y, raw["y_test"]])
    if spec.kind == "classes":
        if task != "classification":
            raise DataError("split kind 'classes' needs class labels")
        present = set(np.unique(y).tolist())
        missing = [c for c in spec.holdout_classes if c not in present]
        if missing:
            raise DataError(f"holdout_classes {missing} do not occur in the data (classes: {sorted(present)[:20]})")
        test = np.isin(y, spec.holdout_classes)
        if test.all():
            raise DataError("holdout_classes hold out every class; nothing is left to train on")
        desc = {"kind": "classes", "holdout_classes": list(spec.holdout_classes)}
    else:
        test = _random(x, y, task, spec.test_fraction, seed)
        desc = {"kind": "random", "test_fraction": spec.test_fraction, "seed": seed, "stratified": task == "classification"}
    arrays = {"x_train": x[~test], "x_test": x[test],
              "y_train": None if y is None else y[~test], "y_test": None if y is None else y[test]}
    return arrays, desc


OUTLIER_FIELD = "mixup.params.outlier_classes"


def hold_out_outliers(arrays: dict[str, np.ndarray], count: int, class_names: list[str] | None = None
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Take the `count` largest class ids out of a split as a real outlier set (MixOE's outliers 'holdout').

    Returns the in-distribution arrays (the outlier classes' rows removed from both
    sides), the outlier rows ({"x_train": pool, "x_test": OOD test set}) and what
    the model card records. The largest ids are taken so that the in-distribution
    classes keep their ids and the classifier head is sized to them alone, with no
    relabelling.
    """
    present = np.unique(np.concatenate([arrays["y_train"], arrays["y_test"]]))
    if count > len(present) - 2:
        raise DataError(f"{OUTLIER_FIELD}: {count} of the data's {len(present)} classes leaves fewer than 2 "
                        "in-distribution classes to train on; hold out fewer")
    held = present[len(present) - count:]
    out_train, out_test = np.isin(arrays["y_train"], held), np.isin(arrays["y_test"], held)
    for rows, side in ((out_train, "training"), (out_test, "test")):
        if not rows.any():
            raise DataError(f"{OUTLIER_FIELD}: the outlier classes {held.tolist()} have no rows in the {side} split; "
                            "hold out other classes or use a split that gives them rows on both sides")
        if rows.all():
            raise DataError(f"{OUTLIER_FIELD}: the {side} split holds only the outlier classes {held.tolist()}; "
                            "hold out fewer classes or use a split with in-distribution rows on both sides")
    inside = arrays | {"x_train": arrays["x_train"][~out_train], "y_train": arrays["y_train"][~out_train],
                    "x_test": arrays["x_test"][~out_test], "y_test": arrays["y_test"][~out_test]}
    outliers = {"x_train": arrays["x_train"][out_train], "x_test": arrays["x_test"][out_test]}
    desc: dict[str, Any] = {"outlier_classes": held.tolist(), "outlier_train_rows": int(out_train.sum()),
                            "outlier_test_rows": int(out_test.sum())}
    if class_names is not None:
        desc["outlier_class_names"] = [class_names[c] for c in held.tolist()]
    return inside, outliers, desc
