"""Turning a job's dataset reference into something the engine can load.

Built-in datasets need nothing. An uploaded dataset (``dataset.id``) is copied
from the artifact store into the job's scratch directory under a fixed name
whose suffix is the format the API validated; the user's filename never
becomes a path. A ``dataset.path`` is refused: it names a file on the worker's
disk, which is the CLI's local mode and never something a remote user may ask
a service to read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from embedmix.core.errors import SpecError, UnsupportedSpec
from embedmix.core.spec import JobSpec
from embedmix.store.artifacts import ArtifactNotFound, ArtifactStore
from embedmix.store.datasets import get_dataset

# Formats core.data.load_dataset reads from a file, by the suffix it dispatches on.
SUFFIXES = {"npz": ".npz", "csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}


class DatasetCorrupt(RuntimeError):
    """The stored bytes of an upload no longer match the hash taken when it was accepted."""


def dataset_file(
    session_factory: sessionmaker[Session],
    artifacts: ArtifactStore,
    owner_id: int,
    spec: JobSpec,
    directory: Path,
) -> Path | None:
    """The uploaded dataset copied into ``directory``, or None for a built-in dataset."""
    if spec.dataset.path is not None:
        raise SpecError(
            [{"field": "dataset.path", "message": "local paths are for `embedmix train`; upload the file and use dataset.id"}]
        )
    if spec.dataset.id is None:
        return None
    with session_factory() as session:
        dataset = get_dataset(session, owner_id, spec.dataset.id)
        if dataset is None:
            raise SpecError([{"field": "dataset.id", "message": f"no dataset {spec.dataset.id}"}])
        suffix = SUFFIXES.get(dataset.format)
        if suffix is None:
            raise UnsupportedSpec(
                f"dataset.id: {dataset.format} datasets cannot be trained on by this engine yet; "
                f"use one of {sorted(SUFFIXES)}"
            )
        path = directory / f"dataset{suffix}"
        _copy_verified(session, artifacts, dataset.artifact_id, dataset.sha256, path)
    return path


def _copy_verified(
    session: Session, artifacts: ArtifactStore, artifact_id: str, sha256: str, path: Path
) -> None:
    """Stream the artifact into ``path``, checking it against the hash recorded at upload."""
    digest = hashlib.sha256()
    try:
        with path.open("wb") as file:
            for piece in artifacts.open(session, artifact_id):
                digest.update(piece)
                file.write(piece)
    except ArtifactNotFound as exc:
        raise DatasetCorrupt(f"the uploaded dataset's bytes are missing ({exc})") from exc
    if digest.hexdigest() != sha256:
        raise DatasetCorrupt("the uploaded dataset's bytes no longer match their sha256")
