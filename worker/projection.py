"""The embedding map a succeeded job leaves for the dashboard: made after training, stored by the ending.

The map (``core.projection``) is computed once the run is over, outside any
transaction; the job's finalize transaction, the one that makes it succeeded,
then stores it as a JSON artifact and records the pointer on the job row
(``jobs.projection``: artifact id, sha256, bytes, methods), where
``GET /v1/jobs/{id}/projection`` finds it. A finalize that does not commit
leaves neither the artifact nor the pointer. A map is a view, not an output
anyone depends on: if it cannot be made, the job still succeeds and the
timeline says why there is none.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy.orm import Session

from embedmix.core.models import Encoder
from embedmix.core.projection import project_test_set
from embedmix.store.artifacts import ArtifactStore
from embedmix.store.events import NewEvent
from embedmix.worker.context import WorkerContext
from embedmix.worker.events import log_event, record, warning_event

log = logging.getLogger("embedmix.worker")

PROJECTION = "projection"  # names the map's timeline entries (dedup keys)


@dataclass(frozen=True)
class Projection:
    """A computed map, waiting for the job's ending to store it."""

    body: bytes
    points: int
    methods: list[str]
    seconds: float


def make_projection(
    context: WorkerContext, job_id: str, run_key: str, encoder: Encoder, data: object, device: torch.device, seed: int
) -> Projection | None:
    """Compute the test set's 2-D maps; None for data without a map (text pairs, see
    ``core.projection.project_test_set``) or when making it failed (the timeline says why)."""
    try:
        maps = project_test_set(encoder, data, device, seed=seed)
    except Exception as exc:  # a missing picture must not fail a trained model
        log.warning("job %s: embedding map not computed", job_id, exc_info=True)
        message = f"no embedding map: {type(exc).__name__}: {str(exc)[:200]}"
        record(context.session_factory, job_id, warning_event(job_id, run_key, PROJECTION, message))
        return None
    if maps is None:
        return None
    body = json.dumps(maps, separators=(",", ":")).encode()
    return Projection(body, maps["points"], [m["method"] for m in maps["maps"]], maps["seconds"])


def store_projection(session: Session, artifacts: ArtifactStore, projection: Projection) -> dict[str, Any]:
    """Store the map in the caller's transaction (the job's ending); returns the pointer the job row keeps."""
    artifact = artifacts.put(session, [projection.body])
    return {
        "artifact_id": artifact.id,
        "sha256": artifact.sha256,
        "bytes": artifact.bytes,
        "methods": projection.methods,
    }


def projection_event(job_id: str, run_key: str, projection: Projection) -> NewEvent:
    """The timeline's line about the map, written with the ending that stores it."""
    message = (
        f"embedding map of {projection.points} test points ({', '.join(projection.methods)}) "
        f"in {projection.seconds:.1f} s"
    )
    return log_event(job_id, run_key, PROJECTION, message, points=projection.points, methods=projection.methods)
