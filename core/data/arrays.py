"""Checks shared by every source of raw arrays: shapes, finiteness, dtypes, labels."""

from __future__ import annotations

import numpy as np

from embedmix.core.data.dataset import Task
from embedmix.core.errors import DataError


def check_features(x: np.ndarray, where: str) -> np.ndarray:
    """Refuse non-numeric, empty, non-finite or rank-0/1 feature arrays; return float32."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: features must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(f"{where}: features need shape (rows, ...), got shape {x.shape}")
    if x.shape[0] == 0 or x[0].size == 0:
        raise DataError(f"{where}: no rows or no features (shape {x.shape})")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataError(f"{where}: {int(bad.sum())} values are NaN or infinite (first in row {row})")
    return x


def labels_to_indices(y: np.ndarray, where: str) -> tuple[np.ndarray, Task, list[str] | None]:
    """Integer or string labels become class indices; floats become regression targets.

    Integer labels keep their values as indices (so `holdout_classes` can name them);
    string labels are mapped to indices in sorted order and the names are returned.
    """
    if y.ndim != 1:
        raise DataError(f"{where}: labels need shape (rows,), got {y.shape}")
    if y.dtype.kind in "US":
        names, idx = np.unique(y.astype(str), return_inverse=True)
        return idx.astype(np.int64), "classification", [str(n) for n in names]
    if y.dtype.kind in "biu":
        if y.min() < 0:
            raise DataError(f"{where}: integer class labels must be >= 0 (found {int(y.min())})")
        if y.max() > 1_000_000:
            raise DataError(f"{where}: class label {int(y.max())} is too large; use labels 0..num_classes-1 or strings")
        return y.astype(np.int64), "classification", None
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"{where}: {int((~np.isfinite(y)).sum())} labels are NaN or infinite")
        return y.astype(np.float32), "regression", None
    raise DataError(f"{where}: labels must be integers, strings or floats, got dtype {y.dtype}")


def check_rows(x: np.ndarray, y: np.ndarray | None, where: str) -> None:
    if y is not None and len(y) != len(x):
        raise DataError(f"{where}: {len(x)} feature rows but {len(y)} labels")
