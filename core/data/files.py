"""Reading user data files (npz, csv, parquet) without ever unpickling anything."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from core.data.arrays import check_features, check_rows
from core.errors import DataError

SUFFIXES = (".npz", ".csv", ".parquet")
SPLIT_COLUMN = "split"


def read_npz(path: Path, max_bytes: int | None = None) -> dict[str, Any]:
    """Arrays `x`, `y`, optionally `x_test`, `y_test`; object arrays (pickles) are refused.

    With ``max_bytes``, the arrays' declared sizes are checked before any is
    loaded: np.savez_compressed packs a gigabyte of zeros into a megabyte.
    """
    with open(path, "rb") as fh:
        magic = fh.read(4)
    # np.load also takes a bare .npy (returning an array, not an archive) and refuses
    # anything else as "pickled data"; say plainly that an npz is a zip archive instead.
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DataError(f"{path.name}: not a readable npz file (an npz is a zip archive of .npy arrays, as np.savez writes)")
    try:
        if max_bytes is not None:
            check_npz_size(path, max_bytes)
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if "x" not in keys:
                raise DataError(f"{path.name}: npz needs an array named 'x' (found {sorted(keys) or 'none'})")
            unknown = keys - {"x", "y", "x_test", "y_test"}
            if unknown:
                raise DataError(f"{path.name}: unknown arrays {sorted(unknown)}; allowed: x, y, x_test, y_test")
            out = {k: f[k] for k in keys}
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{path.name}: holds a pickled object array, which is never loaded; store plain numeric or string arrays") from None
        raise DataError(f"{path.name}: not a readable npz file ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path.name}: not a readable npz file ({exc.__class__.__name__}: {exc})") from None
    if ("x_test" in out) != ("y_test" in out) and "y" in out:
        raise DataError(f"{path.name}: give both x_test and y_test, or neither")
    if "y_test" in out and "y" not in out:
        raise DataError(f"{path.name}: y_test without y; give labels for the training rows too, or drop y_test")
    return out


def check_npz_size(path: Path, max_bytes: int) -> None:
    """Refuse an npz whose arrays would take more than ``max_bytes``, reading only headers.

    Each member's .npy header states its shape and dtype; numpy allocates that
    much before reading, so a header claiming more than the member holds is
    refused too (it could only be a lie meant to exhaust memory).
    """
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(member)
            if dtype.hasobject:
                raise DataError(f"{path.name}: holds a pickled object array, which is never loaded; store plain numeric or string arrays")
            declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if declared > info.file_size:
                raise DataError(f"{path.name}: array {info.filename!r} declares {declared} bytes but holds {info.file_size}; the file is corrupt")
            total += declared
    if total > max_bytes:
        raise DataError(f"{path.name}: its arrays take {total} bytes uncompressed; the limit is {max_bytes} bytes")


def check_parquet_size(path: Path, max_bytes: int) -> None:
    """Refuse a parquet file whose table decodes to more than ``max_bytes``, from its footer alone.

    Run-length and dictionary encoding store millions of equal values in a few
    bytes, so the footer's stored sizes say nothing; the table is read into
    8-byte numbers, so rows x columns x 8 is what it will cost at least.
    """
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
    except Exception as exc:  # pyarrow raises several types for a damaged footer
        raise DataError(f"{path.name}: not a readable parquet file ({exc.__class__.__name__}: {exc})") from None
    total = metadata.num_rows * metadata.num_columns * 8
    if total > max_bytes:
        raise DataError(
            f"{path.name}: its {metadata.num_rows} rows x {metadata.num_columns} columns take {total} bytes "
            f"uncompressed; the limit is {max_bytes} bytes"
        )


def read_table(path: Path, label_column: str | None) -> dict[str, Any]:
    """Feature columns plus one label column; an optional 'split' column (train/test) gives a test set."""
    import pandas as pd

    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas raises many types for malformed files
        raise DataError(f"{path.name}: not a readable {path.suffix[1:]} file ({exc.__class__.__name__}: {exc})") from None
    column = label_column or ("label" if "label" in frame.columns else None)
    if column is None:
        raise DataError(f"{path.name}: no label column; name it with dataset.label_column (columns: {list(frame.columns)[:20]})")
    if column not in frame.columns:
        raise DataError(f"{path.name}: label column {column!r} not found (columns: {list(frame.columns)[:20]})")
    y = frame.pop(column)
    split = frame.pop(SPLIT_COLUMN).astype(str).str.lower() if SPLIT_COLUMN in frame.columns else None
    non_numeric = [c for c in frame.columns if frame[c].dtype.kind not in "biuf"]
    if non_numeric:
        raise DataError(f"{path.name}: feature columns must be numeric; not numeric: {non_numeric[:10]}")
    empty = [c for c in frame.columns if frame[c].isna().any()]
    if empty:
        raise DataError(f"{path.name}: feature columns have empty (NaN) values: {empty[:10]}")
    if y.isna().any():
        raise DataError(f"{path.name}: label column {column!r} has {int(y.isna().sum())} empty values")
    y_arr = y.to_numpy().astype(str) if y.dtype.kind == "O" else y.to_numpy()
    x = frame.to_numpy(dtype=np.float64)  # also turns nullable (Int64, boolean) columns into plain numbers
    if split is None:
        return {"x": x, "y": y_arr}
    bad = set(split.unique()) - {"train", "test"}
    if bad:
        raise DataError(f"{path.name}: column 'split' may only hold 'train' or 'test', found {sorted(bad)[:5]}")
    test = (split == "test").to_numpy()
    if not test.any():  # a split column with only training rows gives no test set ('given' then says so)
        return {"x": x, "y": y_arr}
    return {"x": x[~test], "y": y_arr[~test], "x_test": x[test], "y_test": y_arr[test]}


def read_file(path: str | Path, label_column: str | None = None, max_bytes: int | None = None) -> dict[str, Any]:
    """Raw arrays from a user file, with shapes and values checked.

    ``max_bytes`` bounds what compressed formats (npz, parquet) may expand to,
    checked from their headers before anything is decoded.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path.name}: unsupported file type {path.suffix!r}; use one of {list(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet" and max_bytes is not None:
        check_parquet_size(path, max_bytes)
    raw = read_npz(path, max_bytes) if path.suffix == ".npz" else read_table(path, label_column)
    for prefix in ("", "_test"):
        if f"x{prefix}" in raw:
            raw[f"x{prefix}"] = check_features(np.asarray(raw[f"x{prefix}"]), f"{path.name}: x{prefix}")
            check_rows(raw[f"x{prefix}"], raw.get(f"y{prefix}"), f"{path.name}: x{prefix}/y{prefix}")
    if "x_test" in raw and raw["x_test"].shape[1:] != raw["x"].shape[1:]:
        raise DataError(f"{path.name}: x_test samples have shape {raw['x_test'].shape[1:]}, x samples {raw['x'].shape[1:]}")
    return raw
