"""``GET /v1/jobs/{id}/projection``: the 2-D map of a succeeded job's test-set embeddings.

The worker stores the map as a JSON artifact in the transaction that makes the
job succeeded, and the job row points at it (``jobs.projection``, see
``worker/projection.py``). Jobs that succeeded before migration 0003 named
their map with a ``projection`` event instead (``data.artifact_id``; the
newest wins), which is still read for them. The body is the map as
``core.projection.project`` made it::

    {"format": 1, "points": 1000, "total_points": 4000,
     "label_kind": "class" | "value" | null, "labels": [...], "class_names": [...] | null,
     "maps": [{"method": "pca", "coords": [[x, y], ...], "explained_variance": [..]},
              {"method": "tsne", "coords": [...]}, ...]}
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from embedmix.api.deps import OwnedJob, RuntimeDep, SessionDep
from embedmix.api.errors import ApiError
from embedmix.api.schemas import ErrorOut
from embedmix.store.events import latest_event
from embedmix.store.models import Job

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["outputs"])

PROJECTION_EVENT = "projection"  # how jobs finished before migration 0003 named their map

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 404, 409)}


@router.get(
    "/projection",
    responses={**_ERRORS, 200: {"content": {"application/json": {}}, "description": "the map"}},
    response_class=Response,
)
def read_projection(job: OwnedJob, session: SessionDep, runtime: RuntimeDep) -> Response:
    """The embedding map of the job's test set (PCA, plus t-SNE/UMAP where the worker has them)."""
    if job.status != "succeeded":
        raise ApiError(409, "invalid_state", f"job {job.id} is {job.status}; its map is made when it succeeds")
    pointer = _map_pointer(session, job)
    if pointer is None:
        raise ApiError(404, "not_found", f"job {job.id} has no embedding map (see its events for why)")
    body = b"".join(runtime.artifacts.open(session, pointer["artifact_id"]))
    return Response(body, media_type="application/json", headers={"ETag": f'"{pointer["sha256"]}"'})


def _map_pointer(session: Session, job: Job) -> dict[str, Any] | None:
    """The job's pointer to its map: on its row, or (for a job finished before 0003) in its newest map event."""
    if job.projection is not None:
        return job.projection
    event = latest_event(session, job.id, PROJECTION_EVENT)
    data = event.data if event is not None else None
    return data if data and "artifact_id" in data else None
