"""``POST /v1/embeddings``: the OpenAI embeddings wire format over a trained job's model.

Clients written for the OpenAI API (its Python and JS packages, LangChain,
LlamaIndex...) embed with a trained model by pointing their base URL at the
service and naming the job as the model. The vectors are those of
``/v1/jobs/{id}/embed`` (one embedding path, ``api.models.embed_with_job``); keys,
owner isolation and input limits are the same. ``encoding_format=base64`` is
each vector's float32 little-endian bytes, as OpenAI sends them (its Python
client asks for base64 by default). ``usage`` counts a text model's tokens as
its tokeniser cuts them, and samples for any other model.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import torch
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from embedmix.api.deps import JOB_ID_MAX_LENGTH, CurrentOwner, RuntimeDep, SessionDep
from embedmix.api.errors import ApiError, not_found
from embedmix.api.models import embed_with_job
from embedmix.api.schemas import ErrorOut
from embedmix.store import get_job

router = APIRouter(prefix="/v1", tags=["openai"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 404, 409, 422)}


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(max_length=JOB_ID_MAX_LENGTH, description="a succeeded job's id")]
    input: str | list[Any] = Field(
        description="a string or a list of strings (text models); a list of samples of the model's input shape otherwise"
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="if given, must be the model's embedding size")
    user: str | None = Field(None, max_length=256, description="accepted for compatibility; not stored")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


@router.post("/embeddings", responses=_ERRORS)
def create_embeddings(body: EmbeddingsIn, owner: CurrentOwner, session: SessionDep, runtime: RuntimeDep) -> EmbeddingsOut:
    """Embed ``input`` with the model of job ``model`` (OpenAI-compatible)."""
    job = get_job(session, owner.id, body.model)
    if job is None:
        raise not_found("model", body.model, param="model")
    inputs = [body.input] if isinstance(body.input, str) else body.input
    try:
        vectors, units = embed_with_job(job, inputs, session, runtime)
    except ApiError as exc:
        raise _named_for_this_body(exc) from None
    dim = vectors.shape[1]
    if body.dimensions is not None and body.dimensions != dim:
        raise ApiError(
            422, "invalid_request",
            f"this model's embeddings have {dim} dimensions; it cannot give {body.dimensions}",
            param="dimensions",
        )
    encoded = _base64_rows(vectors) if body.encoding_format == "base64" else vectors.tolist()
    return EmbeddingsOut(
        data=[Embedding(index=i, embedding=vector) for i, vector in enumerate(encoded)],
        model=job.id,
        usage=Usage(prompt_tokens=units, total_tokens=units),
    )


def _named_for_this_body(exc: ApiError) -> ApiError:
    """The shared embedding path names ``inputs`` (``/embed``'s field); this body calls it ``input``."""
    if exc.param is None or not exc.param.startswith("inputs"):
        return exc
    return ApiError(exc.status_code, exc.code, exc.message, param="input" + exc.param.removeprefix("inputs"),
                    headers=exc.headers, details=exc.details)


def _base64_rows(vectors: torch.Tensor) -> list[str]:
    """Each vector's float32 little-endian bytes in base64, as OpenAI sends them."""
    rows = vectors.numpy().astype("<f4", copy=False)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
