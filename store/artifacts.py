"""Blob storage for checkpoints, datasets and exported models.

Blobs are streamed in and out piece by piece, never held whole in memory, and
hashed as they go. An artifact row is ``complete`` only after its last byte is
written and its sha256 recorded, so a crash mid-upload can never leave a
partial blob that looks whole. Two backends share the ``artifacts`` table:

* :class:`DatabaseArtifacts` (the default): 1 MiB rows in ``artifact_chunks``,
  so a single database serves every worker with nothing else to set up.
* :class:`FilesystemArtifacts`: files under a root directory (a shared volume
  when workers span machines), written to a temporary file, fsynced and renamed
  into place. File names are artifact ids, never user-supplied names.

S3 is not implemented yet; :func:`artifact_store_from_url` says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from store.models import Artifact, ArtifactChunk

CHUNK_SIZE = 1 << 20
PARTIAL_DIR = ".partial"


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


class FilesystemArtifacts:
    """Blobs as files under ``root``, at ``<2 id chars>/<artifact id>``.

    Artifacts recorded in the database backend stay readable through this
    store, so switching a deployment from the default to files loses nothing.
    A file is renamed into place before its row is marked complete; if the
    transaction then rolls back, the file is left orphaned (never a row without
    its bytes).
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
        try:
            with os.fdopen(fd, "wb") as file:
                size, sha256 = _write(file, chunks)
            final = self.root / location
            final.parent.mkdir(exist_ok=True)
            os.replace(temporary, final)
            _fsync_directory(final.parent)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            _discard(session, artifact)
            raise
        artifact.location = location
        return _finish(session, artifact, size, sha256)

    def open(self, session: Session, artifact_id: str) -> Iterator[bytes]:
        """Open the file now (a missing file fails here, not mid-stream) and stream it in 1 MiB reads."""
        artifact = session.get(Artifact, artifact_id)
        if artifact is not None and artifact.backend == self._database.backend:
            return self._database.open(session, artifact_id)
        artifact = _complete_artifact(session, artifact_id, self.backend)
        try:
            file = self._path(artifact).open("rb")
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"artifact {artifact_id}: file is missing") from exc
        return _read(file)

    def delete(self, session: Session, artifact_id: str) -> bool:
        """Delete the row, then the file.

        The file goes at once, not at commit: should the caller's transaction
        roll back, the row survives without its bytes, and open() and verify()
        report it missing rather than serving anything wrong.
        """
        artifact = session.get(Artifact, artifact_id)
        if artifact is None:
            return False
        if artifact.backend == self._database.backend:
            return self._database.delete(session, artifact_id)
        path = self._path(artifact) if artifact.location else None
        _discard(session, artifact)
        if path is not None:
            path.unlink(missing_ok=True)
        return True

    def verify(self, session: Session, artifact_id: str) -> bool:
        """True if the file still hashes to the recorded sha256 (False if it is gone)."""
        return _verify(self, session, artifact_id)

    def _path(self, artifact: Artifact) -> Path:
        """The artifact's file, refusing a location that would leave ``root`` (a tampered row)."""
        path = (self.root / (artifact.location or "")).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ArtifactNotFound(f"artifact {artifact.id}: location outside the store")
        return path


def artifact_store_from_url(url: str) -> ArtifactStore:
    """The store a setting names: ``db`` for the database, ``file:///path`` or a plain path for files."""
    if url == "db":
        return DatabaseArtifacts()
    if url.startswith("s3://"):
        raise NotImplementedError("S3 artifact storage is not implemented yet; use db or a path")
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URL must be local, got host {parsed.netloc!r}")
        return FilesystemArtifacts(unquote(parsed.path))
    if not url or "://" in url:
        raise ValueError(f"unknown artifact store {url!r}: use 'db', 'file:///path' or a path")
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


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: the new directory entry must reach the disk too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
