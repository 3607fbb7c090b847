"""A job's outputs: checkpoints, the exported model in each format, its card, and ``/embed``.

Downloads stream from the artifact store chunk by chunk, with
``Content-Length`` and a strong ``ETag`` that is the file's sha256 (so a client
can verify what it got, and ``If-None-Match`` answers 304).

Where the worker leaves the outputs (the contract between worker and API):
``jobs.model_artifacts`` maps each exported format to
``{"artifact_id": "art_...", "bytes": int, "sha256": "..."}`` and ``jobs.card``
holds the model card that ``core.export.export`` returned. Both are written
in the same transition that makes the job ``succeeded``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from embedmix.api.deps import OwnedJob, PageDep, RuntimeDep, SessionDep
from embedmix.api.embedding import ServedEncoder, embed, input_units, model_batch, to_base64
from embedmix.api.errors import ApiError, not_found
from embedmix.api.runtime import Runtime
from embedmix.api.schemas import CheckpointOut, EmbedIn, EmbedOut, ErrorOut, Page
from embedmix.core.catalog import EXPORT_FORMATS
from embedmix.core.export import load_safetensors
from embedmix.core.onnx_encoder import load_onnx
from embedmix.store import ArtifactStore, get_checkpoint, list_checkpoints
from embedmix.store.models import Job

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["outputs"])

ModelFormat = Literal[tuple(EXPORT_FORMATS)]  # type: ignore[valid-type]
# The exports the embed routes can run (see _served_file), with their loaders.
SERVED_FORMATS: dict[str, Callable[[str], ServedEncoder]] = {"onnx": load_onnx, "safetensors": load_safetensors}

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 404, 409, 422, 503)
}
_BINARY: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}, "application/zip": {}},
          "description": "the file's bytes (a zip for a bundle: a text encoder's onnx files, sentence_transformers)"},
    304: {"description": "If-None-Match named this file's ETag: the client has these bytes"},
}


@router.get("/checkpoints", responses=_ERRORS)
def read_checkpoints(job: OwnedJob, session: SessionDep, page: PageDep) -> Page[CheckpointOut]:
    """The job's checkpoints in training order; ``cursor`` is the last checkpoint id seen."""
    rows = list_checkpoints(session, job.id)
    start = 0
    if page.cursor is not None:
        ids = [c.id for c in rows]
        if page.cursor not in ids:
            raise ApiError(422, "invalid_cursor", f"invalid cursor {page.cursor!r}", param="cursor")
        start = ids.index(page.cursor) + 1
    chunk = rows[start : start + page.limit]
    has_more = start + page.limit < len(rows)
    return Page(
        data=[CheckpointOut.model_validate(c) for c in chunk],
        has_more=has_more,
        next_cursor=chunk[-1].id if has_more else None,
    )


@router.get(
    "/checkpoints/{checkpoint_id}/content",
    responses={**_ERRORS, **_BINARY},
    response_class=Response,
)
def download_checkpoint(
    job: OwnedJob,
    checkpoint_id: Annotated[str, Path(max_length=64)],
    session: SessionDep,
    runtime: RuntimeDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The checkpoint's bytes (model, optimizer, RNG states and data position: what a resume needs)."""
    checkpoint = get_checkpoint(session, job.id, checkpoint_id)
    if checkpoint is None:
        raise not_found("checkpoint", checkpoint_id, param="checkpoint_id")
    return _download(
        session,
        runtime.artifacts,
        checkpoint.artifact_id,
        size=checkpoint.bytes,
        sha256=checkpoint.sha256,
        filename=f"{job.id}-step{checkpoint.step}.ckpt",
        if_none_match=if_none_match,
    )


@router.get("/model", responses={**_ERRORS, **_BINARY}, response_class=Response)
def download_model(
    job: OwnedJob,
    session: SessionDep,
    runtime: RuntimeDep,
    format: Annotated[
        ModelFormat, Query(description="one of the spec's export.formats (catalog: core.catalog.EXPORT_FORMATS)")
    ] = "safetensors",
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The trained encoder (raw inputs -> unit embeddings); ``ETag`` is its sha256."""
    entry = _model_file(job, format)
    return _download(
        session,
        runtime.artifacts,
        entry["artifact_id"],
        size=int(entry["bytes"]),
        sha256=entry["sha256"],
        filename=f"{job.name}-{entry['file']}",
        if_none_match=if_none_match,
        media_type="application/zip" if entry["file"].endswith(".zip") else "application/octet-stream",
    )


@router.get("/model/card", responses=_ERRORS)
def read_model_card(job: OwnedJob) -> dict[str, Any]:
    """The model card: spec, metrics, input shape, preprocessing, embedding size, versions, file hashes."""
    _require_succeeded(job)
    if not job.card:
        raise not_found("model card for job", job.id)
    return job.card


@router.post("/embed", responses=_ERRORS)
def embed_inputs(
    body: EmbedIn, job: OwnedJob, session: SessionDep, runtime: RuntimeDep
) -> EmbedOut:
    """Embed raw inputs with the job's model; each input has the card's ``input.shape``
    (a text model's inputs are strings). An array model also takes the batch's float32
    bytes as ``inputs_base64``, and ``encoding_format: "base64"`` answers in the same form."""
    embeddings, _ = embed_with_job(job, body.inputs, session, runtime, inputs_base64=body.inputs_base64)
    vectors = to_base64(embeddings) if body.encoding_format == "base64" else embeddings.tolist()
    return EmbedOut(embeddings=vectors, embedding_dim=embeddings.shape[1], model=job.id)


def embed_with_job(
    job: Job, inputs: list[Any] | None, session: Session, runtime: Runtime, *, inputs_base64: str | None = None
) -> tuple[torch.Tensor, int]:
    """The (n, d) unit embeddings of the inputs by a succeeded job's model, and the tokens
    (or samples) they took.

    The one embedding path of the service: ``/embed`` and the OpenAI-compatible
    ``/v1/embeddings`` both answer with it, so they return the same vectors.
    """
    fmt, entry = _served_file(job)
    batch = model_batch((job.card or {}).get("input", {}), inputs, inputs_base64, runtime.settings.max_embed_inputs)
    encoder = runtime.encoders.get(
        job.id,
        entry["sha256"],
        lambda: runtime.artifacts.open(session, entry["artifact_id"]),
        runtime.settings.work_dir or None,
        SERVED_FORMATS[fmt],
    )
    return embed(encoder, batch), input_units(encoder, batch)


def _served_file(job: Job) -> tuple[str, dict[str, Any]]:
    """The export the embed routes run, by the runtime that is faster for the model's kind.

    A text model runs its ONNX zip in onnxruntime: MiniLM embeds 1,024 texts in 1.2 s
    there and in 2.4 s in torch (bench/serving.py). An array model runs its safetensors
    file in torch, whose convolutions took 23 ms for 1,024 mnist1d rows where
    onnxruntime took 41. Either falls back to the other file. A two-modality job's ONNX
    takes both inputs to the fused embedding while /embed serves the first modality,
    so it is never served.
    """
    _require_succeeded(job)
    card_input = (job.card or {}).get("input", {})
    order = ("onnx", "safetensors") if card_input.get("type") == "text" else ("safetensors", "onnx")
    for fmt in order:
        entry = (job.model_artifacts or {}).get(fmt)
        if entry and "artifact_id" in entry and not (fmt == "onnx" and "modalities" in card_input):
            return fmt, entry
    return "safetensors", _model_file(job, "safetensors")  # its 404 names what to export


def _require_succeeded(job: Job) -> None:
    if job.status != "succeeded":
        raise ApiError(
            409,
            "invalid_state",
            f"job {job.id} is {job.status}; its model exists once it has succeeded",
        )


def _model_file(job: Job, format: str) -> dict[str, Any]:
    """The stored export of ``format``: 409 before success, 404 if the spec did not export it."""
    _require_succeeded(job)
    entry = (job.model_artifacts or {}).get(format)
    if not entry or "artifact_id" not in entry:
        exported = sorted(job.model_artifacts or {})
        raise ApiError(
            404,
            "not_found",
            f"job {job.id} did not export {format!r} (exported: {exported}); add it to export.formats",
            param="format",
        )
    return entry


def _download(
    session: Session,
    artifacts: ArtifactStore,
    artifact_id: str,
    *,
    size: int,
    sha256: str,
    filename: str,
    if_none_match: str | None,
    media_type: str = "application/octet-stream",
) -> Response:
    """Stream an artifact, or 304 when the client already holds these exact bytes."""
    etag = f'"{sha256}"'
    if if_none_match is not None and etag in (t.strip() for t in if_none_match.split(",")):
        return Response(status_code=304, headers={"ETag": etag})
    # open() fails now, before the 200 goes out, if the bytes are missing.
    chunks = artifacts.open(session, artifact_id)
    return StreamingResponse(
        chunks,
        media_type=media_type,
        headers={
            "Content-Length": str(size),
            "ETag": etag,
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )
