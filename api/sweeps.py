"""``/v1/sweeps``: submit a hyper-parameter search, list and read sweeps and their trials, cancel one.

A sweep is validated completely before it is stored: the base spec as a job's
would be (``api.jobs.accept_spec``: schema, catalog, service limits, memory
admission, an uploaded dataset), then every path of the space must name a
field of the resolved spec, and every value the space can give it (a range's
ends and a point inside, each choice) must make a spec that would be accepted as a job, checked
one path at a time; a 422 names the path (``space.train.lr``). The metric must
be one the base spec evaluates. A combination of values that fails anyway
(two sizes each allowed alone, too large together) fails its trial, not the sweep. Nothing is enqueued here: the controller in
the workers (``worker.sweeps``) finds the queued sweep and submits its trials
as ordinary jobs, each counting against the owner's job quota.

Choices the contract left open: ``Idempotency-Key`` behaves as for jobs (the
same key and body return the same sweep, another body is 409); cancelling a
sweep that is already cancelled returns it unchanged, a finished one is 409;
trials are listed oldest first (by number) and page by the last number seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, get_args

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from sqlalchemy.orm import Session

from embedmix.api.deps import (
    JOB_ID_MAX_LENGTH,
    CurrentOwner,
    PageDep,
    RuntimeDep,
    SessionDep,
    int_in_text,
)
from embedmix.api.errors import ApiError, not_found
from embedmix.api.jobs import accept_spec, idempotency_conflict
from embedmix.api.schemas import (
    ErrorOut,
    IntermediateOut,
    Page,
    ParamSpaceIn,
    Step,
    SweepBestOut,
    SweepIn,
    SweepOut,
    TrialOut,
)
from embedmix.api.storage_quota import check_storage_quota
from embedmix.core.spec import JobSpec, selection_metric
from embedmix.service.settings import Settings
from embedmix.store.jobs import get_job
from embedmix.store.models import SWEEP_STATUSES, TRIAL_STATES, Sweep
from embedmix.store.sweeps import (
    MAX_GRID_POINTS,
    SweepIdempotencyConflict,
    apply_params,
    cancel_sweep,
    count_trials,
    create_sweep,
    find_idempotent_sweep,
    get_sweep,
    grid_values,
    list_sweeps,
    list_trials,
    metric_series,
    path_exists,
    spec_hash,
)

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])

SweepStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
assert set(get_args(SweepStatus)) == set(SWEEP_STATUSES), "SweepStatus must list the store's statuses"
SweepIdPath = Annotated[str, Path(max_length=JOB_ID_MAX_LENGTH)]
UNCANCELLABLE = ("succeeded", "failed")
# Each pruner's settings in PrunerOptionsIn (Optuna's MedianPruner and SuccessiveHalvingPruner arguments).
PRUNER_SETTINGS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "median": frozenset({"n_startup_trials", "n_warmup_steps", "interval_steps"}),
    "successive_halving": frozenset({"min_resource", "reduction_factor", "min_early_stopping_rate"}),
}
INSIDE = 0.381966  # where a float range is probed between its ends: a fraction that makes no whole number
T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 404, 409, 413, 422, 429)}


def get_owned_sweep(sweep_id: SweepIdPath, owner: CurrentOwner, session: SessionDep) -> Sweep:
    """The caller's sweep; someone else's is as absent as one that never existed."""
    sweep = get_sweep(session, owner.id, sweep_id)
    if sweep is None:
        raise not_found("sweep", sweep_id, param="sweep_id")
    return sweep


OwnedSweep = Annotated[Sweep, Depends(get_owned_sweep)]


@router.post("", status_code=201, responses=_ERRORS)
def submit_sweep(
    body: SweepIn,
    owner: CurrentOwner,
    session: SessionDep,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> SweepOut:
    """Submit a sweep; the workers run its trials as jobs."""
    config = body.model_dump(mode="json", exclude={"name", "spec", "pruner_options"})
    config["pruner_options"] = body.pruner_options.model_dump(exclude_none=True) if body.pruner_options else None
    body_hash = spec_hash(body.model_dump(mode="json")) if idempotency_key else None
    if idempotency_key is not None:
        replayed = find_idempotent_sweep(session, owner.id, idempotency_key)
        if replayed is not None:
            return _replay(session, replayed, body_hash, response)
    retry_after = runtime.submit_rate.check(owner.id)
    if retry_after:
        raise ApiError(
            429, "rate_limited", f"too many submissions this minute; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
    settings = runtime.settings
    spec = _prefixed("spec", lambda: accept_spec(session, owner.id, body.spec, settings))
    base = spec.model_dump(mode="json")
    _check_search(body, spec)
    _check_space(session, owner.id, body, base, settings)
    check_storage_quota(session, owner.id, 0, settings.storage_quota_bytes)
    try:
        sweep, created = create_sweep(
            session, owner.id, name=body.name, spec=base, config=config,
            idempotency_key=idempotency_key, request_hash=body_hash,
        )
    except SweepIdempotencyConflict:
        session.rollback()
        raise idempotency_conflict() from None
    session.commit()
    if not created:
        return _replay(session, sweep, body_hash, response)
    return sweep_out(session, sweep)


def _replay(session: Session, sweep: Sweep, body_hash: str | None, response: Response) -> SweepOut:
    if sweep.request_hash != body_hash:
        raise idempotency_conflict()
    response.headers["Idempotent-Replayed"] = "true"
    return sweep_out(session, sweep)


def _prefixed(prefix: str, validate: Callable[[], T]) -> T:
    """Run a job-spec validation; its 422 names fields under ``prefix`` (``spec.train.lr``)."""
    try:
        return validate()
    except ApiError as exc:
        if exc.status_code != 422:
            raise
        details = [{**d, "field": f"{prefix}.{d['field']}"} for d in exc.details or []]
        raise ApiError(
            422, exc.code, "; ".join(f"{d['field']}: {d['message']}" for d in details) or exc.message,
            param=f"{prefix}.{exc.param}" if exc.param else prefix, details=details or None,
        ) from None


def invalid_sweep(param: str, message: str) -> ApiError:
    return ApiError(422, "invalid_sweep", f"{param}: {message}", param=param)


def evaluated_metrics(spec: JobSpec) -> list[str]:
    """The metric names a job of this spec reports (recall_at_k is reported as recall_at_1, recall_at_4, ...)."""
    names: list[str] = []
    for metric in spec.eval.metrics or []:
        if metric == "recall_at_k":
            names += [f"recall_at_{k}" for k in spec.eval.recall_k]
        else:
            names.append(metric)
    return names


def _check_search(body: SweepIn, spec: JobSpec) -> None:
    """The metric, the pruner and the grid against the base spec and the space."""
    metrics = evaluated_metrics(spec)
    if body.metric not in metrics:
        raise invalid_sweep("metric", f"the base spec does not evaluate {body.metric!r}; it reports {metrics}")
    if body.pruner != "none" and spec.eval.every_epochs == 0:
        raise invalid_sweep("pruner", "a pruner needs evaluations during training: set spec.eval.every_epochs >= 1")
    _check_pruner_options(body)
    if body.parallel > body.trials:
        raise invalid_sweep("parallel", f"{body.parallel} trials at once is more than the {body.trials} trials in all")
    if body.sampler != "grid":
        return
    size = 1
    for path, param in body.space.items():
        try:
            values = grid_values(param.model_dump())
        except ValueError as exc:
            raise invalid_sweep(f"space.{path}", str(exc)) from None
        if values is None:
            raise invalid_sweep(f"space.{path}", "the grid sampler needs choices, an int range, or a float range with a step")
        size *= len(values)
        if size > MAX_GRID_POINTS:
            raise invalid_sweep(f"space.{path}", f"the grid has over {MAX_GRID_POINTS} points in all; make it coarser")
    if body.trials > size:
        raise invalid_sweep("trials", f"the grid has {size} points; ask for at most that many trials")


def _check_pruner_options(body: SweepIn) -> None:
    """Only the chosen pruner's own settings (``worker.sweeps.make_pruner`` hands them to Optuna's pruner)."""
    if body.pruner_options is None:
        return
    own = PRUNER_SETTINGS[body.pruner]
    for name in body.pruner_options.model_dump(exclude_none=True):
        if name not in own:
            owner = next(p for p, names in PRUNER_SETTINGS.items() if name in names)
            raise invalid_sweep(f"pruner_options.{name}",
                                f"is a setting of the {owner} pruner; this sweep's pruner is {body.pruner!r}"
                                + (f" (its settings: {sorted(own)})" if own else ""))


def candidate_values(param: ParamSpaceIn) -> list[Any]:
    """The values of one dimension that stand for all: each choice, or a range's ends and a point inside.

    The point inside a float range is one no integer field accepts, so a float
    range over an int field (``train.epochs``) is refused here, not trial by trial.
    """
    if param.type == "categorical":
        return list(param.choices or [])
    low, high = param.low, param.high
    assert low is not None and high is not None  # ParamSpaceIn checked them
    if param.type == "int":
        return [low, high]
    inside = low * (high / low) ** INSIDE if param.log else low + (high - low) * INSIDE
    return [low, high, inside]


def _check_space(session: Session, owner_id: int, body: SweepIn, base: dict[str, Any], settings: Settings) -> None:
    """Every path names a field of the resolved spec, and each value it can take makes an acceptable job spec."""
    for path, param in body.space.items():
        if not path_exists(base, path):
            raise invalid_sweep(f"space.{path}", "no such field in the resolved spec (GET /v1/catalog lists parameters)")
        for value in candidate_values(param):
            try:
                accept_spec(session, owner_id, apply_params(base, {path: value}), settings)
            except ApiError as exc:
                if exc.status_code != 422:
                    raise
                raise invalid_sweep(f"space.{path}", f"the value {value!r} is refused: {exc.message}") from None


@router.get("", responses=_ERRORS)
def list_own_sweeps(
    owner: CurrentOwner,
    session: SessionDep,
    page: PageDep,
    status: Annotated[SweepStatus | None, Query(description="only sweeps in this status")] = None,
) -> Page[SweepOut]:
    """The caller's sweeps, newest first."""
    rows, next_cursor = list_sweeps(session, owner.id, status=status, limit=page.limit, cursor=page.cursor)
    return Page(data=[sweep_out(session, s) for s in rows], has_more=next_cursor is not None, next_cursor=next_cursor)


@router.get("/{sweep_id}", responses=_ERRORS)
def read_sweep(sweep: OwnedSweep, session: SessionDep) -> SweepOut:
    """One sweep: status, trial counts, the best trial with its resolved spec."""
    return sweep_out(session, sweep)


@router.get("/{sweep_id}/trials", responses=_ERRORS)
def read_trials(sweep: OwnedSweep, session: SessionDep, page: PageDep) -> Page[TrialOut]:
    """The sweep's trials by number, each with its job, state, value and intermediate values."""
    after = int_in_text(page.cursor, Step, "cursor") if page.cursor is not None else -1
    rows = list_trials(session, sweep.id, after=after, limit=page.limit + 1)
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    metric = selection_metric(sweep.spec, sweep.config["metric"])
    series = metric_series(session, [r.job_id for r in rows if r.job_id], f"eval/{metric}")
    data = [
        TrialOut(
            number=r.number, params=r.params, job_id=r.job_id, state=r.state, value=r.value, error=r.error,
            intermediate=[IntermediateOut(epoch=p.epoch, step=p.step, value=p.value) for p in series.get(r.job_id or "", [])],
        )
        for r in rows
    ]
    return Page(data=data, has_more=has_more, next_cursor=str(rows[-1].number) if has_more else None)


@router.post("/{sweep_id}/cancel", responses=_ERRORS)
def cancel(sweep: OwnedSweep, session: SessionDep) -> SweepOut:
    """Stop the sweep: no new trials, and its running trial jobs are cancelled."""
    if sweep.status in UNCANCELLABLE:
        raise ApiError(409, "invalid_state", f"sweep {sweep.id} has already {sweep.status}; nothing to cancel")
    cancelled = cancel_sweep(session, sweep)
    session.commit()
    if cancelled.status in UNCANCELLABLE:  # it finished between our read and the update
        raise ApiError(409, "invalid_state", f"sweep {sweep.id} has already {cancelled.status}; nothing to cancel")
    return sweep_out(session, cancelled)


def sweep_out(session: Session, sweep: Sweep) -> SweepOut:
    """The API's view of a sweep, with its trial counts and the best trial's job spec."""
    best = None
    if sweep.best is not None:
        job = get_job(session, sweep.owner_id, sweep.best["job_id"]) if sweep.best.get("job_id") else None
        best = SweepBestOut(**sweep.best, spec=job.spec if job is not None else None)
    counts = dict.fromkeys(TRIAL_STATES, 0)
    counts.update(count_trials(session, sweep.id))
    return SweepOut(
        id=sweep.id, name=sweep.name, status=sweep.status, spec=sweep.spec, **sweep.config,
        trial_states=counts, best=best, error=sweep.error,
        created_at=sweep.created_at, started_at=sweep.started_at, finished_at=sweep.finished_at,
    )
