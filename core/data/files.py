"""Reading user data files (npz, csv, parquet) without ever unpickling anything, within limits.

:class:`Limits` bound what a file may decode to (bytes) and how many rows it
may hold. Each format is judged by what it declares before it is inflated: the
.npy headers inside an npz, a parquet file's footer, a streaming pass over a
csv's rows. A file that breaks a limit is refused with a message naming it.
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedmix.core.data.arrays import check_features, check_rows
from embedmix.core.errors import DataError

SUFFIXES = (".npz", ".csv", ".parquet")
SPLIT_COLUMN = "split"
FEATURE_ARRAYS = ("x", "x_test")
# The npz arrays, each with the item size the engine holds it at once read:
# features become float32, labels int64 class indices (or float32 targets).
# x2 / x2_test: a second modality, row for row with x / x_test (two-modality losses; core.data.modalities).
_HELD_ITEMSIZE = {"x": 4, "y": 8, "x_test": 4, "y_test": 8, "x2": 4, "x2_test": 4}
# pandas spends about 100 us and 2.5 kB per column; wider samples belong in an npz.
MAX_TABLE_COLUMNS = 16_384
# Arrow reads a csv in blocks of this size; no row may be longer.
CSV_BLOCK_BYTES = 4 << 20
_ARROW_BAD_ROW = re.compile(r"Row #(\d+): Expected (\d+) columns, got (\d+)")


@dataclass(frozen=True)
class Limits:
    """The most one file may decode to: ``max_bytes`` of arrays, ``max_rows`` rows (None: no limit)."""

    max_bytes: int | None = None
    max_rows: int | None = None

    def check_rows(self, name: str, rows: int, at_least: bool = False) -> None:
        """``at_least``: ``rows`` is a count so far (a stream stopped early), not the total."""
        if self.max_rows is not None and rows > self.max_rows:
            found = f"more than {self.max_rows}" if at_least else str(rows)
            raise DataError(f"{name}: holds {found} rows; the limit is {self.max_rows} rows")

    def check_bytes(self, name: str, total: int, what: str) -> None:
        if self.max_bytes is not None and total > self.max_bytes:
            raise DataError(f"{name}: {what} take {total} bytes uncompressed; the limit is {self.max_bytes} bytes")


NO_LIMITS = Limits()


def read_npz(path: Path, limits: Limits) -> dict[str, Any]:
    """Arrays `x`, `y`, optionally `x_test`, `y_test` and a second modality `x2`, `x2_test`; object arrays
    (pickles) are refused.

    The members' headers are judged first (:func:`check_npz`), so nothing is
    inflated beyond what they declare and ``limits`` allow.
    """
    with open(path, "rb") as fh:
        magic = fh.read(4)
    # np.load also takes a bare .npy (returning an array, not an archive) and refuses
    # anything else as "pickled data"; say plainly that an npz is a zip archive instead.
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DataError(f"{path.name}: not a readable npz file (an npz is a zip archive of .npy arrays, as np.savez writes)")
    try:
        check_npz(path, limits)
        with np.load(path, allow_pickle=False) as f:
            out = {k: f[k] for k in f.files}
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


def check_npz(path: Path, limits: Limits) -> None:
    """Judge an npz by its members' names and .npy headers, before any array is inflated.

    Each header (the member's first bytes) states shape and dtype; numpy
    allocates exactly that and inflates exactly that much, so a header within
    the member's stated size and within ``limits`` bounds both the memory and
    the decompression, whatever the compression ratio. A header claiming more
    than its member holds is refused too (it could only be a lie meant to
    exhaust memory).
    """
    total = rows = 0
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        _check_npz_names(path, [info.filename.removesuffix(".npy") for info in members])
        for info in members:
            name = info.filename.removesuffix(".npy")
            shape, dtype = _npy_header(archive, info)
            if dtype.hasobject:
                raise DataError(f"{path.name}: holds a pickled object array, which is never loaded; store plain numeric or string arrays")
            declared = math.prod(shape) * dtype.itemsize
            if declared > info.file_size:
                raise DataError(f"{path.name}: array {info.filename!r} declares {declared} bytes but holds {info.file_size}; the file is corrupt")
            total += math.prod(shape) * max(dtype.itemsize, _HELD_ITEMSIZE[name])
            if name in FEATURE_ARRAYS and shape:
                rows += shape[0]
    limits.check_rows(path.name, rows)
    limits.check_bytes(path.name, total, "its arrays")


def _check_npz_names(path: Path, names: list[str]) -> None:
    if "x" not in names:
        raise DataError(f"{path.name}: npz needs an array named 'x' (found {sorted(names) or 'none'})")
    unknown = set(names) - set(_HELD_ITEMSIZE)
    if unknown:
        raise DataError(f"{path.name}: unknown arrays {sorted(unknown)}; allowed: {', '.join(_HELD_ITEMSIZE)}")


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype from a member's .npy header, inflating only the header's bytes."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(member)
    return shape, dtype


def check_parquet(path: Path, limits: Limits) -> list[str]:
    """Judge a parquet file by its footer before any column is read; return its text columns.

    Run-length and dictionary encoding store millions of equal values in a few
    bytes, so the compressed size says nothing. The footer states the rows,
    the columns and their types, and the pages' uncompressed size: the table
    is read into 8-byte numbers, so rows x columns x 8 is what it will cost at
    least. Text columns are returned so they can be read as dictionaries (one
    copy of each distinct value), never expanded row by row.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        metadata, schema = parquet.metadata, parquet.schema_arrow
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged footer
        raise DataError(f"{path.name}: not a readable parquet file ({exc.__class__.__name__}: {exc})") from None
    check_columns(path.name, metadata.num_columns)
    limits.check_rows(path.name, metadata.num_rows)
    pages = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    limits.check_bytes(path.name, pages, "its pages")
    limits.check_bytes(
        path.name, metadata.num_rows * metadata.num_columns * 8, f"its {metadata.num_rows} rows x {metadata.num_columns} columns"
    )
    nested = [f for f in schema if pa.types.is_nested(f.type)]
    if nested:
        raise DataError(
            f"{path.name}: column {nested[0].name!r} holds {nested[0].type} values; "
            "every column must hold one number (or one string, for the label) per row"
        )
    return [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]


def check_columns(name: str, columns: int, at_least: bool = False) -> None:
    """Tables are read column by column, at a cost per column; wider samples belong in an npz.

    ``at_least``: ``columns`` is only what was seen so far (a stream stopped early).
    """
    if columns > MAX_TABLE_COLUMNS:
        found = f"more than {MAX_TABLE_COLUMNS}" if at_least else str(columns)
        raise DataError(
            f"{name}: has {found} columns; a csv or parquet table may have at most {MAX_TABLE_COLUMNS} "
            "(store wider samples as an npz array)"
        )


def scan_csv(path: Path, limits: Limits) -> None:
    """Check every row of a csv against its header, and count the rows, before pandas reads it.

    pandas turns a first row longer than the header into a many-level index
    (a minute and a gigabyte for one 0.8 MB line) and spends as much on a
    header of many columns. This pass uses Arrow's parser, one block of
    CSV_BLOCK_BYTES at a time, converting one column only, so it costs a
    block's memory whatever the file holds, and stops at the first row whose
    field count differs from the header's. A csv number takes at least one
    byte in the file and 8 once read, so the table pandas then reads stays
    within 8x the file whatever its shape.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rows = -1  # the header is read as a row
    try:
        with pa_csv.open_csv(path, **_csv_scan_options()) as reader:
            for batch in reader:
                if rows < 0 and batch.num_rows and batch.column(1)[0].is_valid:
                    check_columns(path.name, MAX_TABLE_COLUMNS + 1, at_least=True)
                rows += batch.num_rows
                limits.check_rows(path.name, rows, at_least=True)
    except pa.ArrowInvalid as exc:
        raise _csv_error(path.name, str(exc)) from None


def _csv_scan_options() -> dict[str, Any]:
    """Arrow reads every row, one thread (so errors number rows), and converts two columns:
    the first, and the one past MAX_TABLE_COLUMNS, asked for by its generated name. That
    one exists, holding the header's text in the first row, only in a header too wide."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    beyond = f"f{MAX_TABLE_COLUMNS}"
    return {
        "read_options": pa_csv.ReadOptions(
            block_size=CSV_BLOCK_BYTES, use_threads=False, autogenerate_column_names=True
        ),
        "parse_options": pa_csv.ParseOptions(newlines_in_values=True),
        "convert_options": pa_csv.ConvertOptions(
            include_columns=["f0", beyond],
            include_missing_columns=True,
            column_types={"f0": pa.string(), beyond: pa.string()},
        ),
    }


def _csv_error(name: str, arrow_message: str) -> DataError:
    """Arrow's parse error in the user's terms. Arrow numbers a bad row from the header's 1
    (an invalid_row_handler would say the same, but Arrow cannot call one for a row that is
    not UTF-8, so its message is read instead)."""
    if bad_row := _ARROW_BAD_ROW.search(arrow_message):
        line, expected, found = bad_row.groups()
        return DataError(
            f"{name}: line {line} has {found} fields, the header {expected} "
            "(lines counted as rows: a quoted field spanning lines counts once)"
        )
    if "straddl" in arrow_message:
        return DataError(f"{name}: a row is longer than {CSV_BLOCK_BYTES} bytes, the longest a csv row may be")
    return DataError(f"{name}: not a readable csv file ({arrow_message})")


def read_table(path: Path, label_column: str | None, limits: Limits) -> dict[str, Any]:
    """Feature columns plus one label column; an optional 'split' column (train/test) gives a test set."""
    frame = _read_frame(path, limits)
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
    y_arr = _labels(y, path.name, limits)
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


def _read_frame(path: Path, limits: Limits) -> Any:
    """The table as a DataFrame, read only after its declared shape passed ``limits``."""
    import pandas as pd

    options: dict[str, Any] = {}
    if path.suffix == ".csv":
        scan_csv(path, limits)
    else:
        options["read_dictionary"] = check_parquet(path, limits) or None
    read = pd.read_csv if path.suffix == ".csv" else pd.read_parquet
    try:
        return read(path, **options)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types for malformed files
        raise DataError(f"{path.name}: not a readable {path.suffix[1:]} file ({exc.__class__.__name__}: {exc})") from None


def _labels(y: Any, name: str, limits: Limits) -> np.ndarray:
    """The label column as a numpy array; text labels become fixed-width strings.

    A fixed-width array gives every row the longest label's width, so one long
    label among many rows would cost rows x width x 4 bytes: that is checked
    from the distinct labels before the array is made.
    """
    import pandas as pd

    if y.dtype.kind != "O":  # numbers (and anything labels_to_indices refuses) stay as they are
        return y.to_numpy()
    codes, distinct = pd.factorize(y)
    names = [str(label) for label in distinct]
    width = max((len(label) for label in names), default=1)
    limits.check_bytes(name, len(y) * width * 4, f"its labels as text (the longest has {width} characters)")
    return np.array(names, dtype=f"<U{width}")[codes]


def read_file(path: str | Path, label_column: str | None = None, limits: Limits = NO_LIMITS) -> dict[str, Any]:
    """Raw arrays from a user file, with shapes and values checked, decoded within ``limits``."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path.name}: unsupported file type {path.suffix!r}; use one of {list(SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = read_npz(path, limits) if path.suffix == ".npz" else read_table(path, label_column, limits)
    for prefix in ("", "_test"):
        if f"x{prefix}" in raw:
            raw[f"x{prefix}"] = check_features(np.asarray(raw[f"x{prefix}"]), f"{path.name}: x{prefix}")
            check_rows(raw[f"x{prefix}"], raw.get(f"y{prefix}"), f"{path.name}: x{prefix}/y{prefix}")
    if "x_test" in raw and raw["x_test"].shape[1:] != raw["x"].shape[1:]:
        raise DataError(f"{path.name}: x_test samples have shape {raw['x_test'].shape[1:]}, x samples {raw['x'].shape[1:]}")
    return raw
