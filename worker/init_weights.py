"""The weights a job starts from (``model.init_from``): another job's exported encoder, read from the artifact store.

The API admitted the job only if the source was a succeeded job of the same
owner with a safetensors model, and refuses to delete a job while an unfinished
one starts from it; this read still checks all of that, because the source
could have gone before an older job's message is delivered. Whatever is wrong
is a SpecError on the field, so the job fails as ``invalid_spec`` with a message
that says which job and why. The file is checked against its sha256 and parsed
by safetensors only (no pickle).
"""

from __future__ import annotations

import hashlib

from embedmix.core.errors import SpecError
from embedmix.core.export import WEIGHTS_FORMAT, read_encoder_weights
from embedmix.core.spec import INIT_FROM_FIELD, JobSpec
from embedmix.core.train import InitWeights
from embedmix.store.artifacts import ArtifactNotFound
from embedmix.store.jobs import get_job
from embedmix.worker.context import WorkerContext


def _refused(message: str, field: str = "job") -> SpecError:
    return SpecError([{"field": f"{INIT_FROM_FIELD}.{field}", "message": message}])


def source_weights(context: WorkerContext, owner_id: int, spec: JobSpec) -> InitWeights | None:
    """The encoder state dict the job's spec starts from, or None when it starts fresh."""
    source = spec.model.init_from
    if source is None:
        return None
    if source.job is None:
        raise _refused("a job in the service starts from another job (model.init_from.job), not a local path", "path")
    with context.session_factory() as session:
        job = get_job(session, owner_id, source.job)
        entry = (job.model_artifacts or {}).get(WEIGHTS_FORMAT) if job is not None else None
        if job is None or job.status != "succeeded" or entry is None:
            raise _refused(f"job {source.job}, which this job starts from, was deleted or has no {WEIGHTS_FORMAT} model")
        try:
            blob = b"".join(context.artifacts.open(session, entry["artifact_id"]))
        except ArtifactNotFound:
            raise _refused(f"the model of job {source.job}, which this job starts from, is gone from the store") from None
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise _refused(f"the model of job {source.job} does not match its sha256; it cannot be started from")
    return read_encoder_weights(blob)
