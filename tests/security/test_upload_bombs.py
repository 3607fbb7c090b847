"""Upload bombs against the API as a real process: each is a 422 naming the limit it breaks, and costs
the process next to no memory.

The API runs as `embedmix api` under a 4 GiB address-space limit (so a bomb that
got through would fail there, not take the host), with a 32 MiB upload limit,
hence a 256 MiB decode budget (MAX_EXPANSION x the upload limit), and the
default row limit of 5 million. Its peak resident memory (VmHWM) is read after
one good upload of each format (the first csv and parquet uploads load pandas
and pyarrow) and again after every bomb; the growth must stay under
PEAK_GROWTH_BOUND, half the decode budget. Before these limits, the 3 MB csv
cost the API about a gigabyte and the 1 MB npz bomb 6.3 GB (issue 13).

The bombs are built piece by piece (zip members and parquet row groups written
in slices), so the test process never holds what they decode to.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from embedmix.api.datasets import MAX_EXPANSION
from embedmix.core.data.files import CSV_BLOCK_BYTES, MAX_TABLE_COLUMNS
from tests.security.api_process import ApiProcess

UPLOAD_LIMIT = 32 * 2**20
DECODE_BUDGET = MAX_EXPANSION * UPLOAD_LIMIT
MAX_ROWS = 5_000_000
PEAK_GROWTH_BOUND = DECODE_BUDGET // 2


@pytest.fixture
def api(tmp_path: Path, broker: redis.Redis) -> Iterator[ApiProcess]:
    process = ApiProcess(tmp_path, max_upload_bytes=str(UPLOAD_LIMIT), max_dataset_rows=str(MAX_ROWS))
    process.start()
    yield process
    process.stop()


# -- the bombs ----------------------------------------------------------------------------


def zeros_npz(**arrays: tuple[tuple[int, ...], str]) -> bytes:
    """An npz of zero arrays (name=(shape, dtype)), deflated as np.savez_compressed does, written in slices."""
    buffer = io.BytesIO()
    block = bytes(1 << 20)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (shape, dtype) in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(member, header)
                left = math.prod(shape) * np.dtype(dtype).itemsize
                while left:
                    member.write(block[: min(left, len(block))])
                    left -= min(left, len(block))
    return buffer.getvalue()


def zeros_parquet(rows: int, columns: int) -> bytes:
    """``rows`` x ``columns`` float zeros and an integer label, in row groups of 100,000 rows."""
    group = 100_000
    table = pa.table({**{f"c{i}": np.zeros(group) for i in range(columns)}, "label": np.zeros(group, dtype=np.int64)})
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, table.schema) as writer:
        for _ in range(rows // group):
            writer.write_table(table)
    return buffer.getvalue()


def csv_with_a_long_row() -> bytes:
    """3 MB: a 3-column header, then a first row of 1.5 million fields (which pandas made an index of)."""
    return b"a,b,label\n" + b",".join([b"0"] * 1_500_000) + b"\n1,2,0\n"


def csv_with_a_row_longer_than_a_block() -> bytes:
    """20 MB on one line (the issue's second csv, which grew the API past 7.7 GB)."""
    return b"a,b,label\n1,2,0\n" + b",".join([b"0"] * 10_000_000) + b"\n"


def csv_with_a_wide_header() -> bytes:
    """7 MB: 400,000 columns and 5 rows that match them."""
    header = ",".join(f"c{i}" for i in range(400_000)).encode()
    row = b",".join([b"0"] * 400_000)
    return header + b"\n" + b"\n".join([row] * 5) + b"\n"


def csv_with_one_long_label() -> bytes:
    """0.8 MB: 100,000 rows, one label of 10,000 characters (40 kB per row as fixed-width text)."""
    rows = "".join(f"{i},{i % 3}\n" for i in range(100_000))
    return f"a,label\n{rows}1,{'q' * 10_000}\n".encode()


@dataclass(frozen=True)
class Bomb:
    filename: str
    content: Callable[[], bytes]
    says: tuple[str, ...]  # every one of these is in the 422's message


BOMBS = {
    "csv, one row of 1.5M fields": Bomb("long.csv", csv_with_a_long_row, ("line 2 has 1500000 fields", "header 3")),
    "csv, one 20 MB line": Bomb("line.csv", csv_with_a_row_longer_than_a_block, (f"longer than {CSV_BLOCK_BYTES} bytes",)),
    "csv, 400k columns": Bomb("wide.csv", csv_with_a_wide_header, (f"more than {MAX_TABLE_COLUMNS} columns",)),
    "csv, one 10k-character label": Bomb("label.csv", csv_with_one_long_label, ("labels as text", f"limit is {DECODE_BUDGET} bytes")),
    "npz deflate bomb, 16.7M rows": Bomb(
        "rows.npz", lambda: zeros_npz(x=((16_700_000, 16), "<f4")), ("holds 16700000 rows", f"limit is {MAX_ROWS} rows")
    ),
    "npz deflate bomb, 1 GB in 4M rows": Bomb(
        "bytes.npz", lambda: zeros_npz(x=((4_000_000, 64), "<f4"), y=((4_000_000,), "<i8")), (f"limit is {DECODE_BUDGET} bytes",)
    ),
    "parquet, 4.9M rows x 21 columns of zeros": Bomb(
        "zeros.parquet", lambda: zeros_parquet(4_900_000, 20), ("4900000 rows x 21 columns", f"limit is {DECODE_BUDGET} bytes")
    ),
}


def good_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    npz = io.BytesIO()
    np.savez_compressed(npz, x=rng.normal(size=(200, 8)).astype(np.float32), y=np.arange(200) % 3)
    table = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200), "label": np.arange(200) % 3})
    parquet = io.BytesIO()
    table.to_parquet(parquet)
    return {"good.npz": npz.getvalue(), "good.csv": table.to_csv(index=False).encode(), "good.parquet": parquet.getvalue()}


def test_upload_bombs_are_refused_naming_the_limit_within_a_bounded_peak(api: ApiProcess) -> None:
    for filename, content in good_files().items():
        assert api.upload(filename, content).status_code == 201, filename
    baseline = api.peak_rss()
    growth: dict[str, int] = {}
    for name, bomb in BOMBS.items():
        content = bomb.content()
        assert len(content) < UPLOAD_LIMIT, (name, len(content))
        before = api.peak_rss()
        response = api.upload(bomb.filename, content)
        assert response.status_code == 422, (name, response.status_code, response.text[:300], api.log_tail())
        error = response.json()["error"]
        assert error["code"] == "invalid_dataset", (name, error)
        for phrase in bomb.says:
            assert phrase in error["message"], (name, phrase, error["message"])
        growth[f"{name} ({len(content) / 1e6:.1f} MB)"] = api.peak_rss() - before
    total = api.peak_rss() - baseline
    print(f"\npeak RSS {baseline / 2**20:.0f} MiB after the good uploads; growth per bomb (MiB):")
    for name, grew in growth.items():
        print(f"  {name}: {grew / 2**20:.1f}")
    print(f"  all bombs: {total / 2**20:.1f} (bound {PEAK_GROWTH_BOUND / 2**20:.0f})")
    assert total < PEAK_GROWTH_BOUND, growth
    assert api.alive()
    assert api.upload("after.npz", good_files()["good.npz"]).status_code == 201
