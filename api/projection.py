"""``GET /v1/jobs/{id}/projection``: the 2-D map of a succeeded job's test-set embeddings.

The worker stores the map as a JSON artifact and announces it with a
``projection`` event whose ``data.artifact_id`` names it (see
``worker/projection.py``); the newest such event wins. The body is the map as
``core.projection.project`` made it::

    {"format": 1, "points": 1000, "total_points": 4000,
     "label_kind": "class" | "value" | null, "labels": [...], "class_names": [...] | null,
     "maps": [{"method": "pca", "coords": [[x, y], ...], "explained_variance": [..]},
              {"method": "tsne", "coords": [...]}, ...]}
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.deps import OwnedJob, RuntimeDep, SessionDep
from api.errors import ApiError
from api.schemas import ErrorOut
from store.events import latest_event

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["outputs"])

PROJECTION_EVENT = "projection"

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
    event = latest_event(session, job.id, PROJECTION_EVENT)
    data = event.data if event is not None else None
    if not data or "artifact_id" not in data:
        raise ApiError(404, "not_found", f"job {job.id} has no embedding map (see its events for why)")
    body = b"".join(runtime.artifacts.open(session, data["artifact_id"]))
    return Response(body, media_type="application/json", headers={"ETag": f'"{data["sha256"]}"'})
