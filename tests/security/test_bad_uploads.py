"""Bad dataset uploads: each is a 4xx whose message says what is wrong, and leaves nothing behind.

"Nothing behind" means no dataset row, no artifact or artifact chunk, and an
empty scratch directory (where uploads are received). Every case runs on
SQLite and PostgreSQL; text PostgreSQL cannot store (NUL, lone surrogates)
is refused on both. Files over the row limit are refused whatever their
format, and a file of exactly that many rows is accepted. Sizes are refused while the body streams: the last
test sends a body far over the limit to a real server over a socket and sees
the 413 arrive long before the body could have been read.
"""

from __future__ import annotations

import io
import select
import socket
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlalchemy import select as sql_select
from sqlalchemy.orm import Session, sessionmaker

from embedmix.api import create_app
from embedmix.api.uploads import SCRATCH_DIR
from embedmix.core.data.files import MAX_TABLE_COLUMNS
from embedmix.store.models import Artifact, ArtifactChunk, Dataset
from tests.conftest import served_in_thread
from tests.integration.conftest import Keys, auth
from tests.integration.test_api import classification_npz, npz_bytes
from tests.security.conftest import security_settings

UPLOAD_LIMIT = 200_000
# Decoded arrays may take 8x the upload limit (api.datasets.MAX_EXPANSION).
DECODED_LIMIT = 8 * UPLOAD_LIMIT


@pytest.fixture
def small_client(database_url: str, scratch: Path, broker: redis.Redis) -> Iterator[TestClient]:
    settings = security_settings(database_url, scratch, max_upload_bytes=UPLOAD_LIMIT)
    with TestClient(create_app(settings)) as client:
        yield client


def assert_nothing_stored(db: sessionmaker[Session], scratch: Path) -> None:
    with db() as session:
        for table in (Dataset, Artifact, ArtifactChunk):
            count = session.scalars(sql_select(func.count()).select_from(table)).one()
            assert count == 0, f"{table.__tablename__} has {count} rows after a refused upload"
    left = [p for p in scratch.rglob("*") if p != scratch / SCRATCH_DIR]
    assert left == [], f"the upload left {left} in the scratch directory"


# -- the files ----------------------------------------------------------------------------


def _valid_npz() -> bytes:
    return classification_npz(rows=40)


def truncated_npz() -> bytes:
    content = _valid_npz()
    return content[: len(content) // 2]


def corrupt_npz() -> bytes:
    """A byte flipped inside the stored x array: the zip's CRC no longer matches."""
    content = bytearray(_valid_npz())
    content[len(content) // 3] ^= 0xFF
    return bytes(content)


def npz_with_a_non_array_member() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", b"this is not an array")
    return buffer.getvalue()


def pickled_npz() -> bytes:
    return npz_bytes(x=np.array([{"a": 1}] * 10, dtype=object), y=np.zeros(10))


def npz_whose_header_lies() -> bytes:
    """An .npy header claiming 10^12 floats over 80 bytes of data: numpy would allocate 8 TB."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        member, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    member.write(np.zeros(10).tobytes())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", member.getvalue())
    return buffer.getvalue()


def compressed_npz_bomb() -> bytes:
    """A few kilobytes that decode to 16 MB of zeros."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((4000, 1000), dtype=np.float32), y=np.zeros(4000))
    content = buffer.getvalue()
    assert len(content) < UPLOAD_LIMIT
    return content


def nan_npz() -> bytes:
    x = np.ones((20, 4), dtype=np.float32)
    x[3, 1] = np.nan
    return npz_bytes(x=x, y=np.arange(20) % 2)


def inf_npz() -> bytes:
    x = np.ones((20, 4))
    x[5, 0] = np.inf
    return npz_bytes(x=x, y=np.arange(20) % 2)


def huge_float_npz() -> bytes:
    """Finite in float64, infinite once converted to the float32 the engine trains on."""
    x = np.ones((20, 4))
    x[2, 2] = 1e300
    return npz_bytes(x=x, y=np.arange(20) % 2)


def string_features_npz() -> bytes:
    return npz_bytes(x=np.array([["a", "b"]] * 20), y=np.arange(20) % 2)


def complex_features_npz() -> bytes:
    return npz_bytes(x=np.ones((20, 4), dtype=np.complex64), y=np.arange(20) % 2)


def one_dimensional_npz() -> bytes:
    return npz_bytes(x=np.ones(20), y=np.arange(20) % 2)


def mismatched_rows_npz() -> bytes:
    return npz_bytes(x=np.ones((20, 4)), y=np.arange(19) % 2)


def npz_without_x() -> bytes:
    return npz_bytes(features=np.ones((20, 4)), y=np.arange(20) % 2)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def _table(rows: int = 20) -> pd.DataFrame:
    return pd.DataFrame({"a": np.arange(rows) * 0.5, "b": np.ones(rows), "label": np.arange(rows) % 2})


def truncated_parquet() -> bytes:
    content = parquet_bytes(_table())
    return content[: len(content) // 2]


def corrupt_parquet() -> bytes:
    """Parquet's magic at both ends, garbage between."""
    return b"PAR1" + bytes(range(256)) * 4 + b"PAR1"


def parquet_bomb() -> bytes:
    """Run-length encoding packs 4 million equal floats into a few kilobytes."""
    frame = pd.DataFrame({"a": np.zeros(4_000_000), "label": np.zeros(4_000_000, dtype=np.int64)})
    content = parquet_bytes(frame)
    assert len(content) < UPLOAD_LIMIT
    return content


def parquet_without_label() -> bytes:
    return parquet_bytes(_table().drop(columns="label"))


def parquet_with_text_features() -> bytes:
    frame = _table()
    frame["b"] = "text"
    return parquet_bytes(frame)


def nan_csv() -> bytes:
    return b"a,b,label\n1,2,0\nnan,3,1\n4,5,0\n"


def inf_csv() -> bytes:
    return b"a,b,label\n1,2,0\ninf,3,1\n4,5,0\n"


def csv_without_label() -> bytes:
    return b"a,b\n1,2\n3,4\n"


def csv_with_label() -> bytes:
    return b"a,label\n1,0\n2,1\n"


def csv_with_text_features() -> bytes:
    return b"a,b,label\n1,x,0\n2,y,1\n"


def csv_with_empty_labels() -> bytes:
    return b"a,b,label\n1,2,0\n2,3,\n"


def garbage_csv() -> bytes:
    return bytes(range(256)) * 8


def csv_with_a_row_longer_than_the_header() -> bytes:
    """The first row: pandas would make the extra fields a 4,997-level index."""
    return b"a,b,label\n" + b",".join([b"0"] * 5000) + b"\n4,5,1\n"


def csv_wider_than_the_column_limit() -> bytes:
    columns = MAX_TABLE_COLUMNS + 1
    header = ",".join(f"c{i}" for i in range(columns - 1)) + ",label"
    return f"{header}\n{','.join(['0'] * columns)}\n".encode()


def csv_with_one_long_label() -> bytes:
    """500 rows, one label of 1,000 characters: as fixed-width text, 500 x 1,000 x 4 bytes."""
    rows = "".join(f"{i},c{i % 3}\n" for i in range(499))
    return f"a,label\n{rows}499,{'q' * 1000}\n".encode()


def csv_with_a_nul_label() -> bytes:
    return b"a,label\n1,x\x00y\n2,z\n3,z\n"


def csv_with_a_nul_in_the_label_column_name() -> bytes:
    return b"a,la\x00bel\n1,x\n2,z\n"


def npz_with_a_nul_label() -> bytes:
    return npz_bytes(x=np.ones((20, 2)), y=np.array(["a\x00b", "c"] * 10))


def npz_with_a_lone_surrogate_label() -> bytes:
    return npz_bytes(x=np.ones((20, 2)), y=np.array(["\ud800", "c"] * 10))


def parquet_with_a_nul_label() -> bytes:
    return parquet_bytes(pd.DataFrame({"a": np.arange(20.0), "label": ["a\x00b", "c"] * 10}))


def parquet_with_list_labels() -> bytes:
    return parquet_bytes(pd.DataFrame({"a": [1.0, 2.0, 3.0], "label": [[1, 2], [3], [4]]}))


def parquet_with_a_struct_feature() -> bytes:
    return parquet_bytes(pd.DataFrame({"a": [{"u": 1}, {"u": 2}], "label": [0, 1]}))


@dataclass(frozen=True)
class Bad:
    filename: str
    content: Callable[[], bytes]
    status: int
    code: str
    says: tuple[str, ...]  # every one of these is in the message
    fields: tuple[tuple[str, str], ...] = ()


CASES = {
    "truncated npz": Bad("t.npz", truncated_npz, 422, "invalid_dataset", ("t.npz", "not a readable npz")),
    "corrupt npz": Bad("c.npz", corrupt_npz, 422, "invalid_dataset", ("c.npz", "not a readable npz")),
    "npz member not an array": Bad("m.npz", npz_with_a_non_array_member, 422, "invalid_dataset", ("not a readable npz",)),
    "npz holding a pickled object": Bad("evil.npz", pickled_npz, 422, "invalid_dataset", ("evil.npz", "pickled")),
    "npz header lying about its size": Bad("lie.npz", npz_whose_header_lies, 422, "invalid_dataset", ("declares", "corrupt")),
    "compressed npz bomb": Bad("bomb.npz", compressed_npz_bomb, 422, "invalid_dataset", ("uncompressed", f"limit is {DECODED_LIMIT}")),
    "npz without x": Bad("nox.npz", npz_without_x, 422, "invalid_dataset", ("named 'x'",)),
    "NaN in npz": Bad("nan.npz", nan_npz, 422, "invalid_dataset", ("NaN or infinite", "row 3")),
    "inf in npz": Bad("inf.npz", inf_npz, 422, "invalid_dataset", ("NaN or infinite", "row 5")),
    "float32 overflow in npz": Bad("big.npz", huge_float_npz, 422, "invalid_dataset", ("NaN or infinite",)),
    "string features in npz": Bad("s.npz", string_features_npz, 422, "invalid_dataset", ("must be numeric", "<U1")),
    "complex features in npz": Bad("z.npz", complex_features_npz, 422, "invalid_dataset", ("must be numeric", "complex64")),
    "1-d features in npz": Bad("flat.npz", one_dimensional_npz, 422, "invalid_dataset", ("shape (rows, ...)",)),
    "rows and labels differ": Bad("rows.npz", mismatched_rows_npz, 422, "invalid_dataset", ("20 feature rows but 19 labels",)),
    "truncated parquet": Bad("t.parquet", truncated_parquet, 422, "invalid_dataset", ("t.parquet", "not a readable parquet")),
    "corrupt parquet": Bad("c.parquet", corrupt_parquet, 422, "invalid_dataset", ("not a readable parquet",)),
    "parquet bomb": Bad("bomb.parquet", parquet_bomb, 422, "invalid_dataset", ("uncompressed", f"limit is {DECODED_LIMIT}")),
    "parquet without label column": Bad("n.parquet", parquet_without_label, 422, "invalid_dataset", ("no label column",)),
    "parquet with text features": Bad("t.parquet", parquet_with_text_features, 422, "invalid_dataset", ("must be numeric", "'b'")),
    "NaN in csv": Bad("nan.csv", nan_csv, 422, "invalid_dataset", ("NaN",)),
    "inf in csv": Bad("inf.csv", inf_csv, 422, "invalid_dataset", ("NaN or infinite",)),
    "csv without label column": Bad("n.csv", csv_without_label, 422, "invalid_dataset", ("no label column",)),
    "csv label column named but absent": Bad("n.csv", csv_with_label, 422, "invalid_dataset", ("'kind' not found",), (("label_column", "kind"),)),
    "csv with text features": Bad("t.csv", csv_with_text_features, 422, "invalid_dataset", ("must be numeric", "'b'")),
    "csv with empty labels": Bad("e.csv", csv_with_empty_labels, 422, "invalid_dataset", ("empty values",)),
    "binary garbage as csv": Bad("g.csv", garbage_csv, 422, "invalid_dataset", ("g.csv",)),
    "csv row longer than its header": Bad("long.csv", csv_with_a_row_longer_than_the_header, 422, "invalid_dataset", ("line 2 has 5000 fields", "header 3")),
    "csv wider than the column limit": Bad("wide.csv", csv_wider_than_the_column_limit, 422, "invalid_dataset", (f"more than {MAX_TABLE_COLUMNS} columns",)),
    "csv label too long to hold as text": Bad("l.csv", csv_with_one_long_label, 422, "invalid_dataset", ("labels as text", "1000 characters", f"limit is {DECODED_LIMIT}")),
    "NUL in a csv label": Bad("n.csv", csv_with_a_nul_label, 422, "invalid_dataset", ("NUL",)),
    "NUL in the label column's name": Bad("n.csv", csv_with_a_nul_in_the_label_column_name, 422, "invalid_upload", ("label_column", "NUL"), (("label_column", "la\x00bel"),)),
    "NUL in an npz label": Bad("n.npz", npz_with_a_nul_label, 422, "invalid_dataset", ("NUL",)),
    "lone surrogate in an npz label": Bad("s.npz", npz_with_a_lone_surrogate_label, 422, "invalid_dataset", ("surrogate",)),
    "NUL in a parquet label": Bad("n.parquet", parquet_with_a_nul_label, 422, "invalid_dataset", ("NUL",)),
    "parquet label column of lists": Bad("l.parquet", parquet_with_list_labels, 422, "invalid_dataset", ("column 'label' holds list",)),
    "parquet feature column of structs": Bad("s.parquet", parquet_with_a_struct_feature, 422, "invalid_dataset", ("column 'a' holds struct",)),
    "empty file": Bad("e.npz", lambda: b"", 422, "invalid_upload", ("empty",)),
    "unsupported suffix": Bad("data.pkl", _valid_npz, 422, "invalid_upload", ("unsupported file type", ".pkl")),
    "label_column on an npz": Bad("l.npz", _valid_npz, 422, "invalid_upload", ("label_column",), (("label_column", "y"),)),
    "filename climbing directories": Bad("../../etc/cron.d/x.npz", _valid_npz, 422, "invalid_upload", ("'..'",)),
    "windows filename climbing directories": Bad("..\\..\\x.npz", _valid_npz, 422, "invalid_upload", ("'..'",)),
    "filename with CR LF": Bad('x\r\nX-Injected: 1.npz', _valid_npz, 422, "invalid_upload", ("control characters",)),
    "filename with a quote": Bad('x".npz', _valid_npz, 422, "invalid_upload", ("quote",)),
    "filename with a NUL": Bad("x\x00.npz", _valid_npz, 422, "invalid_upload", ("control characters",)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_bad_upload_is_4xx_saying_why_and_stores_nothing(
    small_client: TestClient, keys: Keys, db: sessionmaker[Session], scratch: Path, case: Bad
) -> None:
    response = small_client.post(
        "/v1/datasets",
        files={"file": (case.filename, case.content())},
        data=dict(case.fields),
        headers=auth(keys.alice),
    )
    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert error["code"] == case.code, error
    for phrase in case.says:
        assert phrase in error["message"], (phrase, error["message"])
    assert_nothing_stored(db, scratch)


def test_a_good_file_is_still_accepted_under_the_same_limits(
    small_client: TestClient, keys: Keys
) -> None:
    """The refusals above are about the files, not the limits: a plain file passes."""
    for filename, content in (("ok.npz", _valid_npz()), ("ok.parquet", parquet_bytes(_table()))):
        response = small_client.post(
            "/v1/datasets", files={"file": (filename, content)}, headers=auth(keys.alice)
        )
        assert response.status_code == 201, response.text


# -- the row limit ------------------------------------------------------------------------

ROW_LIMIT = 100


def rows_csv(rows: int) -> bytes:
    return ("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(rows))).encode()


def rows_npz(rows: int) -> bytes:
    """Training and test rows together make the count."""
    train = rows * 3 // 5
    return npz_bytes(
        x=np.ones((train, 2)), y=np.arange(train) % 2,
        x_test=np.ones((rows - train, 2)), y_test=np.arange(rows - train) % 2,
    )


def rows_parquet(rows: int) -> bytes:
    return parquet_bytes(_table(rows))


def rows_jsonl(rows: int) -> bytes:
    return "".join(f'{{"anchor": "a{i}", "positive": "p{i}"}}\n' for i in range(rows)).encode()


ROW_FILES = {"csv": rows_csv, "npz": rows_npz, "parquet": rows_parquet, "jsonl": rows_jsonl}
OVER_THE_ROW_LIMIT = {
    "csv": f"holds more than {ROW_LIMIT} rows; the limit is {ROW_LIMIT} rows",
    "npz": f"holds {ROW_LIMIT + 1} rows; the limit is {ROW_LIMIT} rows",
    "parquet": f"holds {ROW_LIMIT + 1} rows; the limit is {ROW_LIMIT} rows",
    "jsonl": f"more than {ROW_LIMIT} pairs",
}


@pytest.mark.parametrize("fmt", list(ROW_FILES))
def test_a_file_over_the_row_limit_is_refused_and_one_at_it_accepted(
    database_url: str, scratch: Path, broker: redis.Redis, keys: Keys, db: sessionmaker[Session], fmt: str
) -> None:
    settings = security_settings(database_url, scratch, max_dataset_rows=ROW_LIMIT)
    with TestClient(create_app(settings)) as client:
        over = client.post(
            "/v1/datasets", files={"file": (f"over.{fmt}", ROW_FILES[fmt](ROW_LIMIT + 1))}, headers=auth(keys.alice)
        )
        assert over.status_code == 422, over.text
        assert OVER_THE_ROW_LIMIT[fmt] in over.json()["error"]["message"], over.json()
        assert_nothing_stored(db, scratch)
        at = client.post(
            "/v1/datasets", files={"file": (f"at.{fmt}", ROW_FILES[fmt](ROW_LIMIT))}, headers=auth(keys.alice)
        )
        assert at.status_code == 201, at.text
        assert at.json()["rows"] == ROW_LIMIT


# -- refused while streaming --------------------------------------------------------------


@pytest.fixture
def live_server(
    database_url: str, scratch: Path, broker: redis.Redis, keys: Keys
) -> Iterator[tuple[str, int]]:
    """The app behind a real uvicorn server on a free loopback port, in a thread."""
    settings = security_settings(database_url, scratch, max_upload_bytes=UPLOAD_LIMIT)
    with served_in_thread(create_app(settings)) as port:
        yield "127.0.0.1", port


def _send_until_answered(address: tuple[str, int], head: bytes, body: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``head`` then ``body`` pieces until the server answers; return (answer, body bytes sent)."""
    sent = 0
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)
        try:
            for piece in body:
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server stopped reading and closed: its answer is waiting
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer, sent


def test_oversized_uploads_are_refused_while_streaming(
    live_server: tuple[str, int], keys: Keys, db: sessionmaker[Session], scratch: Path
) -> None:
    total = 32 * 1024 * 1024  # 160x the limit; loopback socket buffers hold a few MB at most
    piece = b"\0" * 65536
    preamble = (
        b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.npz\"\r\n\r\n"
    )

    def chunked() -> Iterator[bytes]:
        yield b"%x\r\n%s\r\n" % (len(preamble), preamble)
        for _ in range(total // len(piece)):
            yield b"%x\r\n%s\r\n" % (len(piece), piece)

    head = (
        f"POST /v1/datasets HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {keys.alice}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    answer, sent = _send_until_answered(live_server, head, chunked())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < total // 4, f"the server read {sent} bytes before refusing"
    # Declared too large: refused before a byte of the body is sent.
    declared = head.replace(b"Transfer-Encoding: chunked", b"Content-Length: %d" % total)
    answer, sent = _send_until_answered(live_server, declared, iter(()))
    assert answer.startswith(b"HTTP/1.1 413") and sent == 0, answer[:200]
    assert_nothing_stored(db, scratch)
