"""``/v1/jobs``: submit, list, read, cancel, and a job's events and metric series.

Submission validates the spec completely before anything is stored (every
problem comes back at once as a 422 naming its field), stores the job, commits,
and only then enqueues its id: a worker can never receive an id the database
does not have yet.

Choices the contract left open:

* ``Idempotency-Key``: a repeat of the same key and body answers exactly like
  the first request (201 and the same job, plus ``Idempotent-Replayed: true``),
  so a client retrying after a timeout needs no special case; the same key with
  another body is 409. Bodies are compared as JSON values (key order and
  whitespace do not matter).
* Cancel: queued -> cancelled at once; running -> cancelling (the worker stops
  at its next step and moves it to cancelled). Cancelling a job that is already
  cancelling or cancelled returns it unchanged (200), so cancel is safe to
  retry; a job that has succeeded or failed cannot be cancelled (409).
* A submission beyond ``max_active_jobs_per_owner`` queued + running jobs, or
  beyond ``submit_rate_per_minute`` submissions in the current minute, is 429
  with ``Retry-After``. Specs asking for more than the service's configured
  epochs, batch size, model width or dataset rows are 422 naming the field, and
  so is a spec whose estimated peak memory (``core.cost``) is over what a
  worker offers (``worker_memory_bytes``), naming the field that shrinks it.
* ``model.init_from.job``: a succeeded job of the caller's with a safetensors
  model of the same architecture and input shape, else 422 naming the field;
  another owner's job is "no such job of yours", as a missing one. A job others
  start from cannot be deleted while they are queued or running (409 ``job_in_use``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from embedmix.api.deps import (
    CurrentOwner,
    JobIdPath,
    OwnedJob,
    PageDep,
    RuntimeDep,
    SessionDep,
    cached_caller,
    int_in_text,
)
from embedmix.api.errors import ApiError, not_found
from embedmix.api.runtime import Runtime
from embedmix.api.schemas import (
    ErrorOut,
    EventId,
    EventOut,
    JobOut,
    MetricPointOut,
    Page,
    Step,
    ascii_int,
)
from embedmix.api.storage_quota import check_storage_quota
from embedmix.core import catalog
from embedmix.core.cost import DataShape, builtin_shape, describe_bytes, estimate, rank_budget
from embedmix.core.data import class_count_problem
from embedmix.core.data.split import SplitPlan, empty_split_message, plan_split
from embedmix.core.errors import SpecError
from embedmix.core.export import WEIGHTS_FORMAT
from embedmix.core.spec import (
    EXAMPLE_SPEC,
    INIT_FROM_FIELD,
    JobSpec,
    compatibility_errors,
    resolve_for_task,
    validate_spec,
)
from embedmix.service.ids import ID_LENGTH, JOB_PREFIX, is_job_id
from embedmix.service.settings import Settings
from embedmix.store import (
    ActiveJobLimit,
    IdempotencyConflict,
    create_job,
    find_idempotent_job,
    get_dataset,
    list_events,
    list_jobs,
    list_metrics,
    request_cancel,
)
from embedmix.store.jobs import get_job
from embedmix.store.models import JOB_STATUSES, Job
from embedmix.store.storage import JobInUse, JobNotFinished, delete_finished_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
assert set(get_args(JobStatus)) == set(JOB_STATUSES), "JobStatus must list the store's statuses"

RETRY_AFTER_QUOTA_S = 30
MAX_METRIC_PAGE = 1000
MetricPageSize = ascii_int(1, MAX_METRIC_PAGE)
UNCANCELLABLE = ("succeeded", "failed")
JOB_MEDIA_TYPE = "application/json"  # GET /v1/jobs/{id}
INIT_JOB_FIELD = f"{INIT_FROM_FIELD}.job"


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 404, 409, 413, 422, 429, 503)
}


@router.post("", status_code=201, responses=_ERRORS)
def submit_job(
    spec_body: Annotated[
        dict[str, Any],
        Body(
            description="a JobSpec (`embedmix schema` prints every field); omitted fields take defaults",
            openapi_examples={"metrix": {"summary": "DESIGN.md example", "value": EXAMPLE_SPEC}},
        ),
    ],
    owner: CurrentOwner,
    session: SessionDep,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> JobOut:
    """Submit a job; it is queued for a worker."""
    body_hash = _body_hash(spec_body) if idempotency_key else None
    if idempotency_key is not None:
        replayed = find_idempotent_job(session, owner.id, idempotency_key)
        if replayed is not None:  # a retry is answered as the first request was, and costs no quota
            return _replay(replayed, body_hash, response)
    retry_after = runtime.submit_rate.check(owner.id)
    if retry_after:
        raise ApiError(
            429,
            "rate_limited",
            f"at most {runtime.settings.submit_rate_per_minute} submissions per minute; "
            f"retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    spec = accept_spec(session, owner.id, spec_body, runtime.settings)
    check_storage_quota(session, owner.id, 0, runtime.settings.storage_quota_bytes)
    limit = runtime.settings.max_active_jobs_per_owner
    try:
        job, created = create_job(
            session,
            owner.id,
            spec.model_dump(mode="json"),
            name=spec.name,
            max_attempts=spec.train.max_attempts,
            idempotency_key=idempotency_key,
            request_hash=body_hash,
            max_active=limit,
        )
    except ActiveJobLimit:
        session.rollback()
        raise ApiError(
            429,
            "too_many_active_jobs",
            f"at most {limit} jobs may be queued or running at once; wait for one to finish",
            headers={"Retry-After": str(RETRY_AFTER_QUOTA_S)},
        ) from None
    except IdempotencyConflict:
        session.rollback()
        raise idempotency_conflict() from None
    if not created:
        session.commit()
        return _replay(job, body_hash, response)
    _check_dataset_kept(session, owner.id, spec)
    _check_init_source_kept(session, owner.id, spec)
    session.commit()
    runtime.queue.enqueue(job.id, spec.resources.devices)
    return JobOut.of(job)


def _replay(job: Job, body_hash: str | None, response: Response) -> JobOut:
    """The answer to a repeated Idempotency-Key: the first request's job, or 409 for another body."""
    if job.request_hash != body_hash:
        raise idempotency_conflict()
    response.headers["Idempotent-Replayed"] = "true"
    return JobOut.of(job)


def idempotency_conflict() -> ApiError:
    return ApiError(
        409,
        "idempotency_conflict",
        "this Idempotency-Key was already used with a different request body",
        param="idempotency-key",
    )


def _check_dataset_kept(session: Session, owner_id: int, spec: JobSpec) -> None:
    """The uploaded dataset is still there once the job's row is written (422 if a delete won the race).

    On PostgreSQL the share lock taken when the upload was bound already keeps
    it; on SQLite this read comes after the insert took the write lock, so a
    delete has either committed (and is seen) or waits and then sees the job.
    """
    if spec.dataset.id is not None and get_dataset(session, owner_id, spec.dataset.id) is None:
        session.rollback()
        raise invalid_spec([{"field": "dataset.id", "message": f"dataset {spec.dataset.id!r} was deleted"}])


def _check_init_source_kept(session: Session, owner_id: int, spec: JobSpec) -> None:
    """The job the run starts from is still there once the new job's row is written (422 if a delete won the race).

    The same two cases as :func:`_check_dataset_kept`: PostgreSQL's share lock from
    :func:`_init_from_errors` already keeps it, SQLite's write lock orders this read.
    """
    source = spec.model.init_from
    if source is not None and source.job is not None and get_job(session, owner_id, source.job) is None:
        session.rollback()
        raise invalid_spec([{"field": INIT_JOB_FIELD, "message": f"job {source.job} was deleted"}])


def accept_spec(session: Session, owner_id: int, body: dict[str, Any], settings: Settings) -> JobSpec:
    """The validated spec, with an uploaded dataset checked against what its upload found; else 422."""
    try:
        spec = validate_spec(body)
    except SpecError as exc:
        raise invalid_spec(exc.errors) from None
    errors = service_limit_errors(spec, settings)
    if errors:
        raise invalid_spec(errors)
    if spec.dataset.path is not None:
        raise invalid_spec(
            [
                {
                    "field": "dataset.path",
                    "message": "local paths are read by the CLI only; upload the file with POST /v1/datasets "
                    "and refer to it as dataset.id",
                }
            ]
        )
    if spec.dataset.id is None:
        shape = builtin_shape(spec)
    else:
        spec, shape = _bind_upload(session, owner_id, spec, settings.max_dataset_rows)
    errors = _init_from_errors(session, owner_id, spec, shape)
    errors += admission_errors(spec, shape, settings.worker_memory_bytes)
    if errors:
        raise invalid_spec(errors)
    return spec


def _init_from_errors(session: Session, owner_id: int, spec: JobSpec, shape: DataShape) -> list[dict[str, str]]:
    """``model.init_from``: a succeeded job of the caller's with a safetensors model of this architecture.

    Another owner's job reads as no job at all, as on every other route. The source
    row is read with a share lock (``for_job``), so a delete of it cannot slip
    between this check and the commit (see ``store.storage.delete_finished_job``).
    """
    source = spec.model.init_from
    if source is None:
        return []
    if source.path is not None:
        return [{"field": f"{INIT_FROM_FIELD}.path",
                 "message": "local files are read by the CLI only; start from a job of yours with model.init_from.job"}]
    job_id = source.job or ""
    if not is_job_id(job_id):
        return [{"field": INIT_JOB_FIELD,
                 "message": f"{job_id!r} is not a job id ({JOB_PREFIX} followed by {ID_LENGTH} letters or digits)"}]
    job = get_job(session, owner_id, job_id, for_job=True)
    if job is None:
        return [{"field": INIT_JOB_FIELD, "message": f"no such job of yours: {job_id}"}]
    if job.status != "succeeded":
        return [{"field": INIT_JOB_FIELD,
                 "message": f"job {job_id} is {job.status}; a run can start only from a job that has succeeded"}]
    if WEIGHTS_FORMAT not in (job.model_artifacts or {}):
        return [{"field": INIT_JOB_FIELD,
                 "message": f"job {job_id} exported no {WEIGHTS_FORMAT} model (see its export.formats), "
                            "which is what a run starts from"}]
    return _architecture_errors(job, spec, shape)


def _architecture_errors(source: Job, spec: JobSpec, shape: DataShape) -> list[dict[str, str]]:
    """The source job's encoder against this spec's, so a misfit is a 422 here rather than a failure on the worker.

    A text encoder's architecture is fixed (its max_length only cuts texts), so
    only the encoder's name counts there; the input shape is what the source's
    model card recorded.
    """
    theirs = source.spec.get("model", {})
    ours = spec.model.model_dump(mode="json")
    text = catalog.ENCODERS[spec.model.encoder].extra.get("input") == "text"
    fields = ["encoder"] if text else ["encoder", "width", "embedding_dim", "params"]
    for name in fields:
        if theirs.get(name) != ours[name]:
            return [{"field": INIT_JOB_FIELD,
                     "message": f"job {source.id} trained model.{name} {theirs.get(name)!r}, this spec asks for "
                                f"{ours[name]!r}; its weights fit only the same architecture"}]
    their_shape = ((source.card or {}).get("input") or {}).get("shape")
    if their_shape is not None and list(their_shape) != list(shape.input_shape):
        return [{"field": INIT_JOB_FIELD,
                 "message": f"job {source.id} was trained on inputs of shape {list(their_shape)}, this dataset's "
                            f"are {list(shape.input_shape)}; its weights fit only the same input shape"}]
    return []


def admission_errors(spec: JobSpec, shape: DataShape, worker_memory: int) -> list[dict[str, str]]:
    """A job whose estimated peak memory is over what a worker offers, named by the field that shrinks it.

    Refusing it here is what keeps one spec from taking a worker down; the
    worker's ceiling (worker.memory_ceiling) catches an estimate that was low.
    """
    cost, devices = estimate(spec, shape), spec.resources.devices
    budget = rank_budget(worker_memory, devices)
    if cost.total <= budget:
        return []
    part, field = cost.largest()
    need = f"this job needs about {describe_bytes(cost.total)} of memory at its peak"
    offer = f"the {describe_bytes(worker_memory)} a worker of this service offers"
    if devices > 1:
        need += f" on each of its {devices} ranks (each holds its own data and model)"
        offer = f"the {describe_bytes(budget)} each rank gets of {offer}"
        field_hint = f"{field} or resources.devices"
    else:
        field_hint = field
    return [
        {
            "field": field,
            "message": f"{need} ({part}: {describe_bytes(cost.parts[part])}), over {offer}; shrink {field_hint}",
        }
    ]


def service_limit_errors(spec: JobSpec, settings: Settings) -> list[dict[str, str]]:
    """The spec's sizes against this service's configured limits (tighter than the schema's bounds)."""
    width_limit = settings.max_model_width
    checks = [
        ("train.epochs", spec.train.epochs, settings.max_epochs),
        ("train.batch_size", spec.train.batch_size, settings.max_batch_size),
        ("model.width", spec.model.width, width_limit),
        ("model.embedding_dim", spec.model.embedding_dim, width_limit),
        ("model.projection_dim", spec.model.projection_dim, width_limit),
        ("dataset.size", spec.dataset.size, settings.max_dataset_rows),
        ("resources.devices", spec.resources.devices, settings.max_devices_per_job),
    ]
    return [
        {"field": field, "message": f"{value} is over this service's limit of {limit}"}
        for field, value, limit in checks
        if value is not None and value > limit
    ]


def _bind_upload(session: Session, owner_id: int, spec: JobSpec, max_rows: int) -> tuple[JobSpec, DataShape]:
    """Check the spec against the caller's uploaded dataset and record its label column in the spec.

    The worker re-reads the file with ``dataset.label_column``, so the column the
    upload was validated with is written into the stored spec. Returns the spec
    and the data's shape as the upload found it.
    """
    ds = spec.dataset
    dataset = get_dataset(session, owner_id, ds.id or "", for_job=True)
    if dataset is None:
        raise invalid_spec(
            [
                {
                    "field": "dataset.id",
                    "message": f"no dataset {ds.id!r}; upload one with POST /v1/datasets",
                }
            ]
        )
    info = dataset.info
    column = info.get("label_column")
    errors: list[dict[str, str]] = []
    rows = info["train_rows"] + info["test_rows"]
    if rows > max_rows:
        errors.append(
            {"field": "dataset.id", "message": f"the dataset has {rows} rows, over this service's limit of {max_rows}"}
        )
    if ds.label_column is not None and ds.label_column != column:
        errors.append(
            {
                "field": "dataset.label_column",
                "message": f"the dataset was validated with label column {column!r}; leave label_column "
                "out or upload the file again with the column you want",
            }
        )
    errors += compatibility_errors(spec, task=info["task"], input_rank=len(info["input_shape"]))
    errors += _split_errors(spec, info)
    errors += _modality_errors(spec, info)
    if not errors:
        errors += _size_errors(spec, info)
    if errors:
        raise invalid_spec(errors)
    spec = resolve_for_task(spec, info["task"])  # the metrics a spec leaves to the data, now that its task is known
    shape = DataShape(rows=rows, input_shape=tuple(info["input_shape"]), num_classes=info.get("num_classes"))
    if column is None:
        return spec, shape
    return spec.model_copy(update={"dataset": ds.model_copy(update={"label_column": column})}), shape


def _split_errors(spec: JobSpec, info: dict[str, Any]) -> list[dict[str, str]]:
    """The split checks that need only the dataset's summary (the worker repeats them on the data)."""
    split = spec.dataset.split
    if split.kind == "given" and not info["has_test"]:
        return [
            {
                "field": "dataset.split.kind",
                "message": "split kind 'given' needs test rows in the file (x_test/y_test, or a 'split' column)",
            }
        ]
    if split.kind != "classes":
        return []
    if info["task"] != "classification":
        return [
            {"field": "dataset.split.kind", "message": "split kind 'classes' needs class labels"}
        ]
    unknown = [c for c in split.holdout_classes or [] if c >= info["num_classes"]]
    if unknown:
        return [
            {
                "field": "dataset.split.holdout_classes",
                "message": f"classes {unknown[:10]} are not in the dataset (classes 0..{info['num_classes'] - 1})",
            }
        ]
    return []


_SPLIT_FIELD = {"random": "dataset.split.test_fraction", "classes": "dataset.split.holdout_classes",
                "given": "dataset.split.kind"}
VALIDATION_FIELD = "dataset.split.validation_fraction"


def _size_errors(spec: JobSpec, info: dict[str, Any]) -> list[dict[str, str]]:
    """The data-size problems an upload's counts show before any worker reads it: a split
    with an empty side, or classes with fewer training rows than a pair loss needs in a batch.

    A batch_size above the training rows is not one: the engine batches min(batch_size, rows).
    Uploads counted before the service kept class counts are checked by the worker alone.
    """
    split = spec.dataset.split
    if info["task"] == "classification" and info.get("class_counts") is None:
        return []
    plan = plan_split(split, info.get("class_counts"), info.get("test_class_counts"),
                      info["train_rows"], info["test_rows"])
    if split.validation_fraction is not None and plan.test_rows and (problem := _validation_problem(plan)):
        return [{"field": VALIDATION_FIELD, "message": problem}]
    if plan.train_rows == 0 or plan.test_rows == 0:
        if split.kind == "random":
            counts = None if plan.train_per_class is None else [
                k for k in _pooled(info) if k]
            message = empty_split_message(counts, info["train_rows"] + info["test_rows"], split.test_fraction,
                                          plan.train_rows == 0)
        else:
            message = f"the split leaves the {'train' if plan.train_rows == 0 else 'test'} set empty"
        return [{"field": _SPLIT_FIELD[split.kind], "message": message}]
    if plan.train_per_class is not None and (problem := class_count_problem(plan.train_per_class, spec)):
        return [{"field": "objective.loss", "message": problem}]
    return []


def _modality_errors(spec: JobSpec, info: dict[str, Any]) -> list[dict[str, str]]:
    """A two-modality loss on an upload with one input per sample, or the other way round (the worker refuses both)."""
    two_loss = catalog.LOSSES[spec.objective.loss].extra.get("modalities") == 2
    two_data = info.get("modalities", 1) == 2
    if two_loss and not two_data:
        return [{"field": "dataset.id", "message": f"{spec.objective.loss!r} trains on two modalities and this upload "
                 "has one; upload an npz with a second array x2 (one row per row of x)"}]
    if two_data and not two_loss:
        losses = sorted(n for n, e in catalog.LOSSES.items() if e.extra.get("modalities") == 2)
        return [{"field": "objective.loss", "message": f"this upload has two modalities (x and x2); train it with a "
                 f"two-modality loss: {losses}"}]
    return []


def _validation_problem(plan: SplitPlan) -> str | None:
    """What is wrong with the validation carve of a split whose test side is fine: an empty side."""
    before = plan.train_rows + plan.validation_rows
    if plan.validation_rows == 0:
        return f"the validation share of the {before} training rows is empty; raise it"
    if plan.train_rows == 0:
        return f"the validation share takes all {before} training rows; lower it"
    return None


def _pooled(info: dict[str, Any]) -> list[int]:
    """Rows per class over the whole file (its own test rows included), as a random split pools them."""
    test = info.get("test_class_counts") or [0] * len(info["class_counts"])
    return [a + b for a, b in zip(info["class_counts"], test)]


def invalid_spec(errors: list[dict[str, str]]) -> ApiError:
    """422 naming the first bad field in ``param`` and listing every problem in ``details``."""
    first = errors[0]
    return ApiError(
        422,
        "invalid_spec",
        "; ".join(f"{e['field']}: {e['message']}" for e in errors),
        param=first["field"],
        details=errors,
    )


def _body_hash(body: dict[str, Any]) -> str:
    """The request's identity for idempotency: its JSON value, not its formatting."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@router.get("", responses=_ERRORS)
def list_own_jobs(
    owner: CurrentOwner,
    session: SessionDep,
    page: PageDep,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
) -> Page[JobOut]:
    """The caller's jobs, newest first."""
    rows, next_cursor = list_jobs(
        session, owner.id, status=status, limit=page.limit, cursor=page.cursor
    )
    return Page(
        data=[JobOut.of(j) for j in rows], has_more=next_cursor is not None, next_cursor=next_cursor
    )


class JobReadRoute(APIRoute):
    """The route of ``GET /v1/jobs/{job_id}``, the request clients repeat every second a job trains.

    FastAPI's dependency solving costs more than the job's read itself. A
    request that brings nothing to solve, no query string and a key the
    process's KeyCache vouches for, gets the read with that caller and no
    solving; any other (a key not cached or missing, a query string, an id not
    found among the caller's jobs) goes to FastAPI's handler of
    :func:`read_job`, with its 401, 422 and 404. Both answer with
    :func:`job_response`: one body, one response model.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        solved = super().get_route_handler()

        async def handle(request: Request) -> Response:
            caller = None if request.scope["query_string"] else await cached_caller(request)
            if caller is not None:
                body = await read_job_body(request, caller.id, request.path_params["job_id"])
                if body is not None:
                    return job_response(body)
            return await solved(request)

        return handle


async def read_job(job_id: JobIdPath, owner: CurrentOwner, request: Request) -> Response:
    """One job: status, progress, latest metrics, error."""
    body = await read_job_body(request, owner.id, job_id)
    if body is None:
        raise not_found("job", job_id, param="job_id")
    return job_response(body)


# Added here, not with @router.get, for its route class (which include_router keeps).
router.add_api_route("/{job_id}", read_job, methods=["GET"], response_model=JobOut, responses=_ERRORS,
                     route_class_override=JobReadRoute)


async def read_job_body(request: Request, owner_id: int, job_id: str) -> bytes | None:
    """The job's body by the runtime's batched reads (:mod:`embedmix.api.job_reads`), on
    its poll threads, not FastAPI's pool: polls do not queue behind forty submissions holding it."""
    runtime: Runtime = request.app.state.runtime
    return await runtime.job_reads.read(owner_id, job_id)


def job_response(body: bytes) -> Response:
    return Response(body, media_type=JOB_MEDIA_TYPE)


@router.post("/{job_id}/cancel", responses=_ERRORS)
def cancel_job(job: OwnedJob, owner: CurrentOwner, session: SessionDep) -> JobOut:
    """Ask the job to stop (see the module notes for each status)."""
    if job.status in UNCANCELLABLE:
        raise ApiError(
            409, "invalid_state", f"job {job.id} has already {job.status}; nothing to cancel"
        )
    cancelled = request_cancel(session, owner.id, job.id)
    session.commit()
    assert cancelled is not None  # the job is the owner's: get_owned_job found it
    if cancelled.status in UNCANCELLABLE:  # it finished between our read and the update
        raise ApiError(
            409, "invalid_state", f"job {job.id} has already {cancelled.status}; nothing to cancel"
        )
    return JobOut.of(cancelled)


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=_ERRORS)
def delete_job(job: OwnedJob, session: SessionDep, runtime: RuntimeDep) -> None:
    """Remove a finished job with its events, metrics, checkpoints and model files (frees storage quota)."""
    try:
        delete_finished_job(session, job, runtime.artifacts)
    except JobNotFinished as exc:
        session.rollback()
        raise ApiError(
            409, "invalid_state", f"job {job.id} is {exc.status}; cancel it and wait for it to stop first"
        ) from None
    except JobInUse as exc:
        session.rollback()
        raise ApiError(
            409,
            "job_in_use",
            f"unfinished jobs {exc.job_ids} start from job {job.id}'s model; cancel them or wait",
            param="job_id",
        ) from None
    session.commit()


@router.get("/{job_id}/events", responses=_ERRORS)
def read_events(
    job: OwnedJob,
    session: SessionDep,
    page: PageDep,
    after: Annotated[EventId, Query(description="only events with a larger id")] = 0,
) -> Page[EventOut]:
    """The job's timeline (state changes, warnings, log lines), oldest first.

    Resume with ``after`` = the last id seen, or with ``cursor``.
    """
    after_id = int_in_text(page.cursor, EventId, "cursor") if page.cursor is not None else after
    rows = list_events(session, job.id, after_id=after_id, limit=page.limit + 1)
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    return Page(
        data=[EventOut.model_validate(e) for e in rows],
        has_more=has_more,
        next_cursor=str(rows[-1].id) if has_more else None,
    )


@router.get("/{job_id}/metrics", responses=_ERRORS)
def read_metrics(
    job: OwnedJob,
    session: SessionDep,
    name: Annotated[
        str | None, Query(max_length=128, description="one series, e.g. eval/map_at_r")
    ] = None,
    since_step: Annotated[
        Step | None, Query(description="only points after this step")
    ] = None,
    limit: Annotated[MetricPageSize, Query()] = MAX_METRIC_PAGE,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
) -> Page[MetricPointOut]:
    """Metric points ordered by (step, name).

    Points are small and read as whole series, so pages default to (and may hold)
    1000 points; a page never ends inside a step, and ``next_cursor`` is the last
    step, equivalent to ``since_step``.
    """
    after = int_in_text(cursor, Step, "cursor") if cursor is not None else since_step
    points = list_metrics(session, job.id, name=name, since_step=after, limit=limit)
    has_more = bool(points) and bool(
        list_metrics(session, job.id, name=name, since_step=points[-1].step, limit=1)
    )
    return Page(
        data=[MetricPointOut.model_validate(p) for p in points],
        has_more=has_more,
        next_cursor=str(points[-1].step) if has_more else None,
    )
