"""Blob storage for checkpoints, datasets and exported models.

Blobs are streamed in and out piece by piece, never held whole in memory, and
hashed as they go. An artifact row is ``complete`` only after its last byte is
written and its sha256 recorded, so a crash mid-upload can never leave a
partial blob that looks whole. Three backends share the ``artifacts`` table:

* :class:`DatabaseArtifacts` (the default): 1 MiB rows in ``artifact_chunks``,
  so a single database serves every worker with nothing else to set up.
* :class:`FilesystemArtifacts`: files under a root directory (a shared volume
  when workers span machines), written to a temporary file, fsynced and renamed
  into place. File names are artifact ids, never user-supplied names.
* :class:`S3Artifacts`: objects in an S3 bucket (or any S3-compatible server),
  sent as a multipart upload that is completed only after the last part, so
  a failed put leaves no object behind, only an aborted upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from embedmix.store.models import Artifact, ArtifactChunk

CHUNK_SIZE = 1 << 20
PARTIAL_DIR = ".partial"
# S3 refuses multipart parts under 5 MiB except the last; 8 MiB keeps a put's
# memory small while staying far below the 10,000-part limit (80 GB).
S3_PART_SIZE = 8 << 20
S3_MISSING = {"NoSuchKey", "404", "NotFound"}


class ArtifactNotFound(LookupError):
    """No complete artifact with this id is readable from this store."""


class ArtifactStore(Protocol):
    """What the API and the workers need from blob storage, whatever the backend."""

    def put(self, session: Session, chunks: Iterable[bytes]) -> Artifact:
        """Store the concatenation of ``chunks``; the returned artifact is complete."""
        ...

    def open(self, session: Session, artifact_id: str) -> Iterator[bytes]:
        """Stream a complete artifact's bytes; raises ArtifactNotFound at once if there is none."""
        ...

    def delete(self, session: Session, artifact_id: str) -> bool:
        """Remove the artifact and its bytes; False if there was none."""
        ...

    def undo_put(self, session: Session, artifact: Artifact) -> None:
        """After the caller rolled back the transaction of a put: remove the bytes the row
        no longer records, so a failed write leaves nothing behind."""
        ...

    def verify(self, session: Session, artifact_id: str) -> bool:
        """Re-read every byte and check size and sha256 against the row."""
        ...


class DatabaseArtifacts:
    """Blobs as 1 MiB chunks in the database: transactional, and shared by every worker."""

    backend = "db"

    def put(self, session: Session, chunks: Iterable[bytes]) -> Artifact:
        """Insert chunk rows one by one (none kept in the session), then mark the artifact complete."""
        artifact = _start(session, self.backend)
        digest, size = hashlib.sha256(), 0
        try:
            for seq, piece in enumerate(_rechunk(chunks, CHUNK_SIZE)):
                digest.update(piece)
                size += len(piece)
                session.execute(
                    insert(ArtifactChunk).values(artifact_id=artifact.id, seq=seq, data=piece)
                )
        except BaseException:
            _discard(session, artifact)
            raise
        return _finish(session, artifact, size, digest.hexdigest())

    def open(self, session: Session, artifact_id: str) -> Iterator[bytes]:
        """Stream chunk by chunk, one small query each, so no cursor stays open between reads."""
        artifact = _complete_artifact(session, artifact_id, self.backend)
        return self._stream(session, artifact.id)

    def _stream(self, session: Session, artifact_id: str) -> Iterator[bytes]:
        seqs = session.scalars(
            select(ArtifactChunk.seq)
            .where(ArtifactChunk.artifact_id == artifact_id)
            .order_by(ArtifactChunk.seq)
        ).all()
        for seq in seqs:
            yield session.scalars(
                select(ArtifactChunk.data).where(
                    ArtifactChunk.artifact_id == artifact_id, ArtifactChunk.seq == seq
                )
            ).one()

    def undo_put(self, session: Session, artifact: Artifact) -> None:
        """Nothing to do: the chunks were written in the transaction that was rolled back."""

    def delete(self, session: Session, artifact_id: str) -> bool:
        """Delete the chunks and the row in the caller's transaction."""
        artifact = session.get(Artifact, artifact_id)
        if artifact is None:
            return False
        _discard(session, artifact)
        return True

    def verify(self, session: Session, artifact_id: str) -> bool:
        """True if the stored chunks still hash to the recorded sha256."""
        return _verify(self, session, artifact_id)


class _BytesOutsideTheDatabase(ABC):
    """What the file and S3 stores share: rows the database store wrote stay readable
    through them (switching a deployment's store loses nothing), and a delete drops the
    row, then the bytes. Subclasses say how to open and how to remove one artifact's bytes.
    """

    backend: str
    _database: DatabaseArtifacts

    def open(self, session: Session, artifact_id: str) -> Iterator[bytes]:
        """Open the bytes now (missing ones fail here, not mid-stream), then stream them."""
        artifact = session.get(Artifact, artifact_id)
        if artifact is not None and artifact.backend == self._database.backend:
            return self._database.open(session, artifact_id)
        return self._open(_complete_artifact(session, artifact_id, self.backend))

    def delete(self, session: Session, artifact_id: str) -> bool:
        """Delete the row, then the bytes.

        The bytes go at once, not at commit: should the caller's transaction
        roll back, the row survives without its bytes, and open() and verify()
        report it missing rather than serving anything wrong.
        """
        artifact = session.get(Artifact, artifact_id)
        if artifact is None:
            return False
        if artifact.backend == self._database.backend:
            return self._database.delete(session, artifact_id)
        remove = self._remover(artifact) if artifact.location else None  # located while the row is there
        _discard(session, artifact)
        if remove is not None:
            remove()
        return True

    def verify(self, session: Session, artifact_id: str) -> bool:
        """True if the bytes still hash to the recorded sha256 (False if they are gone)."""
        return _verify(self, session, artifact_id)

    def undo_put(self, session: Session, artifact: Artifact) -> None:
        """Remove the bytes unless the row is in the database after all.

        A commit that failed only to report its success leaves the row
        committed; its bytes must stay. If the database cannot be asked, they
        stay too (an orphan is harmless; a row without its bytes is not).
        """
        try:
            recorded = session.get(Artifact, artifact.id) is not None
        except SQLAlchemyError:
            return
        if not recorded and artifact.location:
            self._remover(artifact)()

    @abstractmethod
    def _open(self, artifact: Artifact) -> Iterator[bytes]:
        """Stream a complete artifact's bytes, or raise ArtifactNotFound if they are gone."""

    @abstractmethod
    def _remover(self, artifact: Artifact) -> Callable[[], None]:
        """Where the artifact's bytes are, as a call that removes them (made before the row goes)."""


class FilesystemArtifacts(_BytesOutsideTheDatabase):
    """Blobs as files under ``root``, at ``<2 id chars>/<artifact id>``.

    Artifacts recorded in the database backend stay readable through this
    store, so switching a deployment from the default to files loses nothing.
    A file is renamed into place before its row is marked complete (never a
    row without its bytes); a put that fails removes its file, and a caller
    whose transaction fails later removes it with :meth:`undo_put`.
    """

    backend = "fs"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self._database = DatabaseArtifacts()

    def put(self, session: Session, chunks: Iterable[bytes]) -> Artifact:
        """Write to a temporary file, fsync, rename into place, then mark the artifact complete."""
        artifact = _start(session, self.backend)
        location = f"{artifact.id[-2:]}/{artifact.id}"
        partial = self.root / PARTIAL_DIR
        partial.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=partial, prefix=artifact.id)
        final = self.root / location
        try:
            with os.fdopen(fd, "wb") as file:
                size, sha256 = _write(file, chunks)
            final.parent.mkdir(exist_ok=True)
            os.replace(temporary, final)
            _fsync_directory(final.parent)
            artifact.location = location
            return _finish(session, artifact, size, sha256)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            _discard(session, artifact)
            raise

    def _open(self, artifact: Artifact) -> Iterator[bytes]:
        try:
            file = self._path(artifact).open("rb")
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"artifact {artifact.id}: file is missing") from exc
        return _read(file)

    def _remover(self, artifact: Artifact) -> Callable[[], None]:
        path = self._path(artifact)
        return lambda: path.unlink(missing_ok=True)

    def _path(self, artifact: Artifact) -> Path:
        """The artifact's file, refusing a location that would leave ``root`` (a tampered row)."""
        path = (self.root / (artifact.location or "")).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ArtifactNotFound(f"artifact {artifact.id}: location outside the store")
        return path


class S3Artifacts(_BytesOutsideTheDatabase):
    """Blobs as objects at ``<prefix>/<2 id chars>/<artifact id>`` in an S3 bucket.

    Credentials and region come from the standard AWS sources (environment,
    shared config, instance role); ``endpoint_url`` points at an S3-compatible
    server such as MinIO. Like :class:`FilesystemArtifacts`, artifacts recorded
    in the database backend stay readable, and an object is complete before its
    row is marked complete; a failed put, or :meth:`undo_put` after a failed
    transaction, deletes it.
    """

    backend = "s3"

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client("s3", endpoint_url=endpoint_url)
        self._database = DatabaseArtifacts()

    def put(self, session: Session, chunks: Iterable[bytes]) -> Artifact:
        """Upload in S3_PART_SIZE parts, hashing as they go; abort the upload if anything fails."""
        artifact = _start(session, self.backend)
        key = self._key(artifact.id)
        digest, size = hashlib.sha256(), 0
        parts: list[dict[str, Any]] = []
        upload_id = None
        completed = False
        try:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
            for number, piece in enumerate(_at_least_one(_rechunk(chunks, S3_PART_SIZE)), start=1):
                digest.update(piece)
                size += len(piece)
                etag = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=piece
                )["ETag"]
                parts.append({"PartNumber": number, "ETag": etag})
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            completed = True
            artifact.location = key
            return _finish(session, artifact, size, digest.hexdigest())
        except BaseException:
            with contextlib.suppress(BotoCoreError, ClientError):
                if completed:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
                elif upload_id is not None:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            _discard(session, artifact)
            raise

    def _open(self, artifact: Artifact) -> Iterator[bytes]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._location(artifact))
        except ClientError as exc:
            if _error_code(exc) in S3_MISSING:
                raise ArtifactNotFound(f"artifact {artifact.id}: object is missing") from exc
            raise
        return _read_s3(response["Body"])

    def _remover(self, artifact: Artifact) -> Callable[[], None]:
        key = self._location(artifact)
        return lambda: self.client.delete_object(Bucket=self.bucket, Key=key)

    def _key(self, artifact_id: str) -> str:
        name = f"{artifact_id[-2:]}/{artifact_id}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _location(self, artifact: Artifact) -> str:
        """The artifact's key, refusing one outside this store's prefix (a tampered row)."""
        key = artifact.location or ""
        if not key or (self.prefix and not key.startswith(f"{self.prefix}/")):
            raise ArtifactNotFound(f"artifact {artifact.id}: location outside the store")
        return key


def artifact_store_from_url(url: str, s3_endpoint_url: str | None = None) -> ArtifactStore:
    """The store a setting names: ``db`` for the database, ``s3://bucket/prefix`` for S3
    (at ``s3_endpoint_url`` if given), ``file:///path`` or a plain path for files."""
    if url == "db":
        return DatabaseArtifacts()
    if url.startswith("s3://"):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise ValueError(f"S3 URL must name a bucket: s3://bucket/prefix, got {url!r}")
        return S3Artifacts(parsed.netloc, unquote(parsed.path), endpoint_url=s3_endpoint_url)
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URL must be local, got host {parsed.netloc!r}")
        return FilesystemArtifacts(unquote(parsed.path))
    if not url or "://" in url:
        raise ValueError(
            f"unknown artifact store {url!r}: use 'db', 's3://bucket/prefix', 'file:///path' or a path"
        )
    return FilesystemArtifacts(url)


def _start(session: Session, backend: str) -> Artifact:
    """An incomplete artifact row, flushed so that its id exists before any byte is written."""
    artifact = Artifact(backend=backend, complete=False)
    session.add(artifact)
    session.flush()
    return artifact


def _finish(session: Session, artifact: Artifact, size: int, sha256: str) -> Artifact:
    """Record size and hash and mark complete: the last step of every put."""
    artifact.bytes = size
    artifact.sha256 = sha256
    artifact.complete = True
    session.flush()
    return artifact


def _discard(session: Session, artifact: Artifact) -> None:
    """Remove an artifact's chunks and row.

    During a failed put the transaction may already be broken; then the
    caller's rollback removes everything and this cleanup is moot, so its own
    errors are suppressed.
    """
    with contextlib.suppress(SQLAlchemyError):
        session.execute(delete(ArtifactChunk).where(ArtifactChunk.artifact_id == artifact.id))
        session.delete(artifact)
        session.flush()


def _complete_artifact(session: Session, artifact_id: str, backend: str) -> Artifact:
    """The artifact row if it is complete and kept by ``backend``; else ArtifactNotFound."""
    artifact = session.get(Artifact, artifact_id)
    if artifact is None or not artifact.complete:
        raise ArtifactNotFound(f"no complete artifact {artifact_id}")
    if artifact.backend != backend:
        raise ArtifactNotFound(
            f"artifact {artifact_id} is kept by the {artifact.backend!r} backend"
        )
    return artifact


def _verify(store: ArtifactStore, session: Session, artifact_id: str) -> bool:
    """Hash a stored artifact again and compare with its row; unreadable counts as corrupt."""
    artifact = session.get(Artifact, artifact_id)
    if artifact is None or not artifact.complete:
        return False
    digest, size = hashlib.sha256(), 0
    try:
        for piece in store.open(session, artifact_id):
            digest.update(piece)
            size += len(piece)
    except (ArtifactNotFound, OSError):
        return False
    return size == artifact.bytes and digest.hexdigest() == artifact.sha256


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroup arbitrary pieces into pieces of exactly ``size`` bytes (the last may be shorter)."""
    buffer = bytearray()
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            room = size - len(buffer)
            buffer += view[:room]
            view = view[room:]
            if len(buffer) == size:
                yield bytes(buffer)
                buffer.clear()
    if buffer:
        yield bytes(buffer)


def _at_least_one(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The pieces, or one empty piece if there are none: S3 completes no upload without a part."""
    empty = True
    for piece in pieces:
        empty = False
        yield piece
    if empty:
        yield b""


def _write(file: BinaryIO, chunks: Iterable[bytes]) -> tuple[int, str]:
    """Write every chunk, then fsync so the bytes are on disk before the rename publishes them."""
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        file.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    file.flush()
    os.fsync(file.fileno())
    return size, digest.hexdigest()


def _read(file: BinaryIO) -> Iterator[bytes]:
    """Yield a file in CHUNK_SIZE reads and close it when done or abandoned."""
    with file:
        while piece := file.read(CHUNK_SIZE):
            yield piece


def _read_s3(body: Any) -> Iterator[bytes]:
    """Yield an S3 response body in CHUNK_SIZE reads; a broken connection surfaces as OSError,
    as a failing file read does, so callers handle both stores alike."""
    with contextlib.closing(body):
        try:
            while piece := body.read(CHUNK_SIZE):
                yield piece
        except (BotoCoreError, ClientError) as exc:
            raise OSError(f"reading from S3 failed: {exc}") from exc


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: the new directory entry must reach the disk too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
