"""``/v1/datasets``: upload, list, read, delete.

An upload is validated exactly as the engine will read it
(``core.data.files.read_file``: no pickles, numeric features, finite values,
consistent shapes) before a byte is stored, so a job never fails on data the
service already accepted. Formats are recognised by suffix: ``.npz``, ``.csv``,
``.parquet``, and ``.jsonl`` text pairs (``core.data.text_pairs``). What the
validation learned (task, input shape, classes, whether the file has its own
test rows) is kept in ``info``; job submission checks specs against it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from embedmix.api.deps import CurrentOwner, PageDep, RuntimeDep, SessionDep
from embedmix.api.errors import ApiError, not_found
from embedmix.api.key_cache import Caller
from embedmix.api.schemas import DatasetOut, ErrorOut, Page
from embedmix.api.storage_quota import check_storage_quota
from embedmix.api.uploads import FILE_FIELD, Upload, bad_upload, receive_upload
from embedmix.core.data.arrays import labels_to_indices
from embedmix.core.data.files import SUFFIXES, Limits, read_file
from embedmix.core.data.modalities import SECOND, check_second
from embedmix.core.data.text_pairs import MAX_PAIRS, count_text_pairs
from embedmix.core.data.text_pairs import SUFFIX as TEXT_PAIRS_SUFFIX
from embedmix.core.errors import DataError
from embedmix.service.settings import Settings
from embedmix.store import (
    ArtifactStore,
    create_dataset,
    delete_dataset,
    get_dataset,
    list_datasets,
)
from embedmix.store.datasets import DatasetInUse

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

READ_CHUNK = 1 << 20
# Compressed files (npz, parquet) may expand to this many times the upload limit, no more.
MAX_EXPANSION = 8
DEFAULT_LABEL_COLUMN = "label"

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 404, 409, 413, 415, 422, 503)
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "an .npz, .csv or .parquet file, or .jsonl text pairs",
                        },
                        "label_column": {
                            "type": "string",
                            "description": "csv/parquet: the label column (default 'label')",
                        },
                    },
                }
            }
        },
    }
}


@router.post("", status_code=201, responses=_ERRORS, openapi_extra=_UPLOAD_BODY)
async def upload_dataset(
    request: Request, owner: CurrentOwner, session: SessionDep, runtime: RuntimeDep
) -> DatasetOut:
    """Upload and validate a dataset; refer to it in a job spec as ``"dataset": {"id": ...}``."""
    settings = runtime.settings
    upload = await receive_upload(request, settings.max_upload_bytes, settings.work_dir)
    try:
        await run_in_threadpool(
            check_storage_quota, session, owner.id, upload.path.stat().st_size, settings.storage_quota_bytes
        )
        return await run_in_threadpool(
            _store_upload, session, runtime.artifacts, owner, upload, upload_limits(settings)
        )
    finally:
        upload.remove()


def upload_limits(settings: Settings) -> Limits:
    """What one upload may decode to: MAX_EXPANSION times the upload limit, and no more rows
    than a job may train on, so a small compressed file cannot make the API allocate gigabytes."""
    return Limits(
        max_bytes=MAX_EXPANSION * settings.max_upload_bytes, max_rows=settings.max_dataset_rows
    )


def _store_upload(
    session: Session, artifacts: ArtifactStore, owner: Caller, upload: Upload, limits: Limits
) -> DatasetOut:
    """Validate the received file within ``limits``, then store its bytes and its row."""
    path = upload.path
    if path.suffix == TEXT_PAIRS_SUFFIX:
        return _store_text_pairs(session, artifacts, owner, upload, limits)
    if path.suffix not in SUFFIXES:
        raise bad_upload(
            f"unsupported file type {path.suffix or '(none)'!r}; "
            f"use one of {[*SUFFIXES, TEXT_PAIRS_SUFFIX]}"
        )
    label_column = upload.fields.get("label_column") or None
    if path.suffix == ".npz" and label_column is not None:
        raise bad_upload(
            "label_column applies to csv and parquet files; an npz holds its labels in 'y'",
            param="label_column",
        )
    if label_column is not None and (problem := unstorable(label_column)):
        raise bad_upload(f"label_column {problem}", param="label_column")
    try:
        raw = read_file(path, label_column, limits)
        info = describe(raw, path, label_column)
    except DataError as exc:
        raise ApiError(422, "invalid_dataset", str(exc), param=FILE_FIELD) from None
    rows = info["train_rows"] + info["test_rows"]
    return _save(session, artifacts, owner, path, rows, info)


def _store_text_pairs(
    session: Session, artifacts: ArtifactStore, owner: Caller, upload: Upload, limits: Limits
) -> DatasetOut:
    """A .jsonl file of text pairs, checked line by line as the engine reads it, then stored.

    Its info says what job submission checks: no labels, and samples of rank 0
    (one string each), which only a text encoder accepts.
    """
    if upload.fields.get("label_column"):
        raise bad_upload("label_column applies to csv and parquet files", param="label_column")
    max_pairs = MAX_PAIRS if limits.max_rows is None else min(MAX_PAIRS, limits.max_rows)
    try:
        rows = count_text_pairs(upload.path, max_pairs)
    except DataError as exc:
        raise ApiError(422, "invalid_dataset", str(exc), param=FILE_FIELD) from None
    info = {
        "task": None,
        "input_shape": [],
        "num_classes": None,
        "class_names": None,
        "has_test": False,
        "train_rows": rows,
        "test_rows": 0,
        "label_column": None,
    }
    return _save(session, artifacts, owner, upload.path, rows, info)


def _save(
    session: Session, artifacts: ArtifactStore, owner: Caller, path: Path, rows: int, info: dict[str, Any]
) -> DatasetOut:
    """Store the file's bytes, then its row, in one transaction.

    Should anything after the bytes fail (the row refused, the commit lost),
    the transaction is rolled back and the bytes are removed too: a failed
    upload leaves nothing in any artifact backend.
    """
    artifact = artifacts.put(session, _chunks(path))
    try:
        dataset = create_dataset(
            session,
            owner.id,
            filename=path.name,
            format=path.suffix.removeprefix("."),
            rows=rows,
            info=info,
            artifact=artifact,
        )
        session.commit()
    except BaseException:
        session.rollback()
        artifacts.undo_put(session, artifact)
        raise
    return DatasetOut.model_validate(dataset)


def describe(raw: dict[str, Any], path: Path, label_column: str | None) -> dict[str, Any]:
    """What a job needs to know about the data without reading it again (see ``DatasetInfo``)."""
    task, class_names, num_classes = None, None, None
    class_counts, test_class_counts = None, None
    if raw.get("y") is not None:
        labels = [raw["y"], raw["y_test"]] if raw.get("y_test") is not None else [raw["y"]]
        indices, task, class_names = labels_to_indices(np.concatenate(labels), f"{path.name}: y")
        if task == "classification":
            num_classes = int(indices.max()) + 1
            n = len(raw["y"])
            class_counts = np.bincount(indices[:n], minlength=num_classes).tolist()
            if raw.get("y_test") is not None:
                test_class_counts = np.bincount(indices[n:], minlength=num_classes).tolist()
    for name in class_names or ():
        if problem := unstorable(name):
            raise DataError(f"{path.name}: the label {name[:50]!r} {problem}")
    second = check_second(raw, path.name)[SECOND] if raw.get(SECOND) is not None else None  # refused now, not in a job
    return {
        "task": task,
        "input_shape": [int(d) for d in raw["x"].shape[1:]],
        "modalities": 1 if second is None else 2,  # a second input x2 per sample (two-modality losses)
        "num_classes": num_classes,
        "class_names": class_names,
        "class_counts": class_counts,
        "test_class_counts": test_class_counts,
        "has_test": raw.get("x_test") is not None,
        "train_rows": len(raw["x"]),
        "test_rows": len(raw["x_test"]) if raw.get("x_test") is not None else 0,
        "label_column": None if path.suffix == ".npz" else label_column or DEFAULT_LABEL_COLUMN,
    }


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be kept in a dataset's info, or None.

    PostgreSQL's text and JSONB refuse the NUL character and lone surrogates
    (which npz string arrays can hold), so both are refused on every backend.
    """
    if "\x00" in text:
        return "contains the NUL character (\\u0000); remove it"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (it holds a lone surrogate); remove it"
    return None


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while piece := file.read(READ_CHUNK):
            yield piece


DatasetId = Annotated[str, PathParam(max_length=64)]


@router.get("", responses=_ERRORS)
def list_own_datasets(owner: CurrentOwner, session: SessionDep, page: PageDep) -> Page[DatasetOut]:
    """The caller's datasets, newest first."""
    rows, next_cursor = list_datasets(session, owner.id, limit=page.limit, cursor=page.cursor)
    return Page(
        data=[DatasetOut.model_validate(d) for d in rows],
        has_more=next_cursor is not None,
        next_cursor=next_cursor,
    )


@router.get("/{dataset_id}", responses=_ERRORS)
def read_dataset(dataset_id: DatasetId, owner: CurrentOwner, session: SessionDep) -> DatasetOut:
    dataset = get_dataset(session, owner.id, dataset_id)
    if dataset is None:
        raise not_found("dataset", dataset_id, param="dataset_id")
    return DatasetOut.model_validate(dataset)


@router.delete("/{dataset_id}", status_code=204, response_class=Response, responses=_ERRORS)
def remove_dataset(
    dataset_id: DatasetId, owner: CurrentOwner, session: SessionDep, runtime: RuntimeDep
) -> None:
    """Delete the dataset and its bytes; 409 while a queued or running job still needs it."""
    try:
        deleted = delete_dataset(session, owner.id, dataset_id, runtime.artifacts)
    except DatasetInUse as exc:
        session.rollback()
        raise ApiError(
            409,
            "dataset_in_use",
            f"dataset {dataset_id} is used by unfinished jobs {exc.job_ids}; cancel them or wait",
            param="dataset_id",
        ) from None
    if not deleted:
        raise not_found("dataset", dataset_id, param="dataset_id")
    session.commit()

