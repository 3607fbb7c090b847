"""The embedding map a succeeded job leaves for the dashboard: computed, stored, announced.

The map (``core.projection``) is stored as a JSON artifact next to the model
files, and a ``projection`` event in the job's timeline points at it
(``data.artifact_id``). The event is keyed by the run, so a second attempt
that gets this far announces its own map and ``GET /v1/jobs/{id}/projection``
serves the newest one. A map is a view, not an output anyone depends on: if it
cannot be made, the job still succeeds and the timeline says why there is none.
"""

from __future__ import annotations

import json
import logging

import torch
from sqlalchemy.exc import InterfaceError, OperationalError

from core.models import Encoder
from core.projection import project_test_set
from store.events import NewEvent
from worker.context import WorkerContext
from worker.events import record, warning_event

log = logging.getLogger("embedmix.worker")

PROJECTION = "projection"  # the event type the API looks for


def store_projection(
    context: WorkerContext, job_id: str, run_key: str, encoder: Encoder, data: object, device: torch.device, seed: int
) -> None:
    """Compute the test set's 2-D maps, store them as an artifact and announce it in the timeline.

    Data without a map (text pairs, see ``core.projection.project_test_set``) leaves nothing.
    """
    try:
        maps = project_test_set(encoder, data, device, seed=seed)
        if maps is None:
            return
        body = json.dumps(maps, separators=(",", ":")).encode()
        with context.session_factory() as session:
            artifact = context.artifacts.put(session, [body])
            session.commit()
    except (OperationalError, InterfaceError):
        # The database is down: the trained model matters more than its picture, so the
        # job goes on to its ending (which waits the outage out) without a map.
        log.warning("job %s: embedding map not stored: database unreachable", job_id)
        return
    except Exception as exc:  # a missing picture must not fail a trained model
        log.warning("job %s: embedding map not computed", job_id, exc_info=True)
        message = f"no embedding map: {type(exc).__name__}: {str(exc)[:200]}"
        record(context.session_factory, job_id, warning_event(job_id, run_key, PROJECTION, message))
        return
    methods = [m["method"] for m in maps["maps"]]
    event = NewEvent(
        type=PROJECTION,
        message=f"embedding map of {maps['points']} test points ({', '.join(methods)}) in {maps['seconds']:.1f} s",
        data={"artifact_id": artifact.id, "bytes": artifact.bytes, "sha256": artifact.sha256, "methods": methods},
        dedup_key=f"{job_id}:{run_key}:{PROJECTION}",
    )
    record(context.session_factory, job_id, event)
