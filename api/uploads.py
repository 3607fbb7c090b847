"""Receiving a dataset upload: multipart/form-data parsed as it streams, straight to disk.

Nothing is buffered whole: each piece of the file part is written to a private
temporary directory as it arrives, and the upload is refused with 413 the
moment the file passes its limit. The directory is removed whatever happens,
so a refused or failed upload leaves nothing behind; one left by a process
that was killed mid-upload is removed when the API next starts
(:func:`clear_stale_uploads`). The file is stored under its sanitised name
(basename only, safe characters), which is also the name validation messages
quote back to the user.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError as MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from embedmix.api.errors import ApiError
from embedmix.api.limits import too_large
from embedmix.store.datasets import sanitize_filename

logger = logging.getLogger("embedmix.api")

FILE_FIELD = "file"
# The API's own directory under work_dir (or the temp dir): uploads in flight, nothing else.
SCRATCH_DIR = "embedmix-uploads"
TEXT_FIELDS = ("label_column",)
MAX_TEXT_FIELD = 4096
# Room for the multipart framing and text fields around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
# Characters that could end or split a header line or a quoted parameter if a name were echoed.
_HEADER_CHARACTERS = re.compile(r'["\x00-\x1f\x7f]')


@dataclass
class Upload:
    """A received upload: the file on disk, its sanitised name, and the text fields."""

    directory: Path
    filename: str | None = None
    bytes: int = 0
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        assert self.filename is not None
        return self.directory / self.filename

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def bad_upload(message: str, param: str | None = FILE_FIELD) -> ApiError:
    return ApiError(422, "invalid_upload", message, param=param)


class _Receiver:
    """python-multipart callbacks that route the file part to disk and text parts to memory."""

    def __init__(self, upload: Upload, max_bytes: int) -> None:
        self.upload = upload
        self.max_bytes = max_bytes
        self.pending: list[bytes] = []
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.part_name: str | None = None
        self.part_is_file = False
        self.text = bytearray()
        self.file_seen = False
        self.ended = False

    def on_part_begin(self) -> None:
        self.disposition = b""
        self.part_name = None
        self.part_is_file = False
        self.text.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("latin-1")
        if name == FILE_FIELD:
            if self.file_seen:
                raise bad_upload("send exactly one file")
            if b"filename" not in options:
                raise bad_upload("the 'file' part needs a filename (its suffix gives the format)")
            self.file_seen = True
            self.part_is_file = True
            self.upload.filename = _disk_name(options[b"filename"].decode("utf-8", "replace"))
        elif name in TEXT_FIELDS:
            self.part_name = name
        else:
            raise bad_upload(
                f"unknown form field {name!r}; send 'file' and optionally 'label_column'",
                param=name or None,
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self.part_is_file:
            self.upload.bytes += len(piece)
            if self.upload.bytes > self.max_bytes:
                raise too_large(self.max_bytes, "the file")
            self.pending.append(piece)
            return
        self.text += piece
        if len(self.text) > MAX_TEXT_FIELD:
            raise bad_upload(f"field {self.part_name!r} is too long", param=self.part_name)

    def on_part_end(self) -> None:
        if self.part_name is not None:
            self.upload.fields[self.part_name] = self.text.decode("utf-8", "replace")

    def on_end(self) -> None:
        self.ended = True

    def take_pending(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        return data


def _disk_name(filename: str) -> str:
    """The sanitised basename with its suffix in lower case (formats are recognised by suffix).

    Browsers and httpx send a filename's quote and control characters
    percent-encoded (HTML form encoding), so the name is decoded before it is
    judged. A name that walks up directories or carries header characters is
    refused rather than quietly repaired: it was made to attack something.
    """
    decoded = unquote(filename)
    if _HEADER_CHARACTERS.search(decoded):
        raise bad_upload(
            f"the filename {filename!r} contains quote or control characters; send a plain file name"
        )
    if ".." in re.split(r"[/\\]", decoded):
        raise bad_upload(
            f"the filename {filename!r} climbs directories ('..'); send a plain file name"
        )
    name = sanitize_filename(decoded)
    path = Path(name)
    return path.stem + path.suffix.lower() if path.suffix else name


def scratch_root(work_dir: str) -> Path:
    """Where uploads are received: a directory of the API's own, so clearing it touches nothing else."""
    return Path(work_dir or tempfile.gettempdir()) / SCRATCH_DIR


def upload_prefix(pid: int) -> str:
    """How process ``pid`` of this host names its upload directories: ``<host>.<pid>.<random>``."""
    return f"{_host()}.{pid}."


def _host() -> str:
    """This host's name as one word without dots."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def clear_stale_uploads(work_dir: str) -> list[Path]:
    """Remove the uploads of this host's API processes that are gone (killed mid-upload).

    Run when an API process starts. An upload directory names the host and
    process receiving it; one of this host whose process no longer runs, or
    that has this process's own id (a restarted container reuses its pid), is
    stale. Live processes' uploads, and other hosts' in a shared work_dir, stay.
    """
    root = scratch_root(work_dir)
    stale = [path for path in (root.iterdir() if root.is_dir() else ()) if _is_stale(path.name)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        logger.info("removed %d upload(s) left in %s by stopped API processes", len(stale), root)
    return stale


def _is_stale(name: str) -> bool:
    pid = name.removeprefix(f"{_host()}.").partition(".")[0]
    if not pid.isdigit() or not name.startswith(upload_prefix(int(pid))):
        return False
    return int(pid) == os.getpid() or not _running(int(pid))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process, running
        pass
    return True


async def receive_upload(request: Request, max_bytes: int, work_dir: str) -> Upload:
    """Stream the multipart body to a temporary file; the caller must ``remove()`` the result."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(
            415,
            "unsupported_media_type",
            "upload the file as multipart/form-data with a 'file' part",
        )
    root = scratch_root(work_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    upload = Upload(directory=Path(tempfile.mkdtemp(prefix=upload_prefix(os.getpid()), dir=root)))
    try:
        await _parse(request, params[b"boundary"], upload, max_bytes)
    except BaseException:
        upload.remove()
        raise
    return upload


async def _parse(request: Request, boundary: bytes, upload: Upload, max_bytes: int) -> None:
    receiver = _Receiver(upload, max_bytes)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": receiver.on_part_begin,
            "on_header_field": receiver.on_header_field,
            "on_header_value": receiver.on_header_value,
            "on_header_end": receiver.on_header_end,
            "on_headers_finished": receiver.on_headers_finished,
            "on_part_data": receiver.on_part_data,
            "on_part_end": receiver.on_part_end,
            "on_end": receiver.on_end,
        },
    )
    file = None
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if receiver.pending:
                if file is None:
                    file = upload.path.open("wb")
                # Disk writes leave the event loop free for other requests.
                await run_in_threadpool(file.write, receiver.take_pending())
        parser.finalize()
    except MultipartParseError as exc:
        raise bad_upload(
            f"malformed multipart body ({exc.__class__.__name__})", param=None
        ) from None
    finally:
        if file is not None:
            file.close()
    if not receiver.ended:
        raise bad_upload("the multipart body ended before its closing boundary", param=None)
    if not receiver.file_seen:
        raise bad_upload("no 'file' part in the upload")
    if file is None:
        raise bad_upload("the uploaded file is empty")
