"""An API killed mid-upload leaves its scratch file behind; the next API start removes it, and only it.

Uploads are received in ``<work_dir>/embedmix-uploads/<host>.<pid>.<random>/``.
The test kills `embedmix api` (kill -9) while a file is streaming in, sees the
partial file left on disk, starts the API again on the same work_dir, and
checks that the dead process's upload is gone while what is not stale stays:
an upload directory of a live process of this host (the test's own pid), one
of another host sharing the work_dir, and an unrelated file next to them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from embedmix.api.uploads import SCRATCH_DIR, upload_prefix
from tests.conftest import wait_for
from tests.security.api_process import ADMIN_KEY, ApiProcess

BODY_BYTES = 4 * 2**20
SENT_BYTES = 256 * 1024


@pytest.fixture
def api(tmp_path: Path, broker: redis.Redis) -> Iterator[ApiProcess]:
    process = ApiProcess(tmp_path)
    yield process
    process.stop()


def _start_upload(api: ApiProcess) -> socket.socket:
    """Declare a 4 MiB upload and send its first 256 kB; the connection stays open."""
    preamble = b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow.npz"\r\n\r\n'
    head = (
        f"POST /v1/datasets HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {BODY_BYTES}\r\n\r\n"
    ).encode()
    port = int(api.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head + preamble + b"\0" * (SENT_BYTES - len(preamble)))
    return sock


def _received_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.stat().st_size > 0]


def test_a_start_removes_the_uploads_a_killed_api_left_and_nothing_else(api: ApiProcess) -> None:
    root = api.work_dir / SCRATCH_DIR
    live = root / f"{upload_prefix(os.getpid())}keep"
    other_host = root / f"another-host.{os.getpid() + 1}.keep"
    unrelated = api.work_dir / "not-an-upload.txt"
    for directory in (live, other_host):
        directory.mkdir(parents=True)
        (directory / "x.npz").write_bytes(b"in flight")
    unrelated.write_text("kept")

    api.start()
    killed_pid = api.pid
    sock = _start_upload(api)
    try:
        in_flight = wait_for(
            lambda: [p for p in _received_files(root) if p.parent.name.startswith(upload_prefix(killed_pid))],
            30, "the upload to reach the scratch directory",
        )
        api.kill()
    finally:
        sock.close()
    assert all(p.exists() for p in in_flight), "kill -9 should leave the partial upload (nothing runs to remove it)"

    api.start()
    assert not any(p.exists() for p in in_flight), f"the restarted API left {in_flight}"
    assert not [p for p in root.iterdir() if p.name.startswith(upload_prefix(killed_pid))]
    assert (live / "x.npz").exists() and (other_host / "x.npz").exists() and unrelated.exists()
