"""Response and request bodies of the v1 API, as pydantic models (they are also the OpenAPI schema).

Timestamps are ISO 8601 in UTC. Models built from database rows read them
by attribute, so a handler returns ``JobOut.of(job)`` and no field is copied by hand.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from annotated_types import Ge, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from sqlalchemy import Row

from embedmix.store.models import Job

T = TypeVar("T")

# The largest integers the database holds: owner, key and step columns are INTEGER
# (PostgreSQL's int4), event ids BIGINT. A larger number would fail in the driver, a 500.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
_ASCII_INTEGER = re.compile(r"-?[0-9]+")


def _ascii_digits(value: object) -> object:
    """A number given as text is ASCII digits with an optional minus, and nothing else.

    Pydantic alone also reads ``+1``, `` 1``, ``1_0`` and ``1.0``, and ``int()``
    reads other scripts' digits; none of them is what a client meant to send.
    """
    if isinstance(value, str) and not _ASCII_INTEGER.fullmatch(value):
        raise ValueError("must be a whole number written in the ASCII digits 0-9")
    return value


_ASCII_DIGITS = BeforeValidator(_ascii_digits)


def ascii_int(low: int, high: int) -> Any:
    """The type of an integer parameter or field within [low, high], in ASCII digits when sent as text.

    Every path, query and header integer has such a type. The bounds come before
    the validator so that the OpenAPI schema states them (``minimum``, ``maximum``).
    """
    return Annotated[int, Ge(low), Le(high), _ASCII_DIGITS]


RowId = ascii_int(1, INT32_MAX)  # an owner or key id
EventId = ascii_int(0, INT64_MAX)  # a job event's id; 0 is before the first
Step = ascii_int(-1, INT32_MAX)  # a training step; -1 is before step 0


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first unless said otherwise; pass ``next_cursor`` as ``cursor`` for the next."""

    data: list[T]
    has_more: bool
    next_cursor: str | None


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, snake case: what went wrong")
    message: str = Field(description="for people")
    param: str | None = Field(
        description="the offending field, as a dotted path, or query parameter or header"
    )
    details: list[dict[str, Any]] | None = Field(
        None, description="every problem, for validation errors"
    )


class ErrorOut(BaseModel):
    error: ErrorDetail


class FromRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ProgressOut(BaseModel):
    step: int
    total_steps: int | None
    epoch: int
    fraction: float = Field(
        description="step / total_steps; 1.0 once succeeded, 0.0 before the first step"
    )


class JobOut(BaseModel):
    id: str
    name: str
    status: str = Field(description="queued, running, cancelling, succeeded, failed or cancelled")
    spec: dict[str, Any] = Field(
        description="the JobSpec as accepted, with every default filled in"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: ProgressOut
    metrics: dict[str, float] = Field(description="latest evaluation values")
    error: dict[str, Any] | None
    attempts: int
    max_attempts: int

    @classmethod
    def of(cls, job: Job | Row[Any]) -> JobOut:
        """From the ORM object or a plain row of the jobs table (the poll reads rows)."""
        if job.total_steps:
            fraction = min(1.0, job.step / job.total_steps)
        else:
            fraction = 1.0 if job.status == "succeeded" else 0.0
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,
            spec=job.spec,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            progress=ProgressOut(
                step=job.step, total_steps=job.total_steps, epoch=job.epoch, fraction=fraction
            ),
            metrics=job.metrics or {},
            error=job.error,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
        )


class EventOut(FromRow):
    id: int
    time: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


class MetricPointOut(FromRow):
    name: str = Field(description="train/loss, eval/<metric>, ...")
    step: int
    epoch: int | None
    value: float
    time: datetime


class CheckpointOut(FromRow):
    id: str
    step: int
    epoch: int
    bytes: int
    sha256: str
    created_at: datetime


class DatasetInfo(BaseModel):
    task: str | None = Field(description="classification, regression, or null for unlabelled data")
    input_shape: list[int]
    num_classes: int | None
    class_names: list[str] | None
    has_test: bool = Field(
        description="the file has its own test rows (usable with split kind 'given')"
    )
    class_counts: list[int] | None = Field(
        None, description="rows per class index (class_names order) outside the file's own test rows; null without "
        "class labels, and for datasets uploaded before the service counted them"
    )
    test_class_counts: list[int] | None = Field(None, description="rows per class index in the file's own test rows")
    modalities: int = Field(1, description="inputs per sample: 2 when the file carries a second array x2 "
                            "(for two-modality losses such as m3col)")
    train_rows: int
    test_rows: int
    label_column: str | None = Field(description="the table column used as labels (csv, parquet)")


class DatasetOut(FromRow):
    id: str
    filename: str = Field(
        description="the uploaded basename in safe characters, its suffix in lower case"
    )
    format: str
    bytes: int
    sha256: str
    rows: int
    info: DatasetInfo
    created_at: datetime


class EmbedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] | None = Field(
        None,
        description="raw samples, each of the model's input shape (see the model card's input.shape); "
        "strings for a text model (input.type 'text'). Give this or inputs_base64.",
    )
    inputs_base64: str | None = Field(
        None,
        description="array models: the whole batch as one base64 string of its float32 little-endian "
        "bytes, row-major (n x input.shape), instead of inputs: a quarter of the bytes, and no number "
        "formatted or parsed at either end",
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float",
        description="base64: embeddings is one base64 string of the n x embedding_dim float32 "
        "little-endian matrix, row-major",
    )


class EmbedOut(BaseModel):
    embeddings: list[list[float]] | str = Field(
        description="one L2-normalised vector per input, in order; with encoding_format base64, "
        "their float32 matrix as one base64 string"
    )
    embedding_dim: int
    model: str = Field(description="the job whose model made them")


class KeyCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="a new owner's name (omit to add a key to owner_id)",
    )
    owner_id: RowId | None = Field(None, description="add a key to this existing owner instead")
    admin: bool = Field(False, description="the new owner may manage keys")


class KeyOut(FromRow):
    id: int
    owner_id: int
    prefix: str = Field(description="the key's first characters, to tell keys apart")
    created_at: datetime
    revoked_at: datetime | None


class KeyCreatedOut(KeyOut):
    key: str = Field(description="the key itself; shown this once and never again")


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    checks: dict[str, str]


# -- sweeps ------------------------------------------------------------------------------------

SPACE_PATH = r"^[a-z_]+(\.[A-Za-z0-9_]+){1,4}$"  # a dotted field of the spec: train.lr, objective.params.margin
MAX_SPACE_PARAMS = 16
MAX_CHOICES = 32
MAX_TRIALS = 1000
MAX_PARALLEL = 64
Choice = bool | int | float | Annotated[str, Field(max_length=256)]


class ParamSpaceIn(BaseModel):
    """One dimension of a search space: a float or int range (``log``: sampled on a log scale), or choices."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["float", "int", "categorical"]
    low: int | float | None = Field(None, description="float and int: the smallest value")
    high: int | float | None = Field(None, description="float and int: the largest value (included)")
    log: bool = Field(False, description="float and int: sample on a log scale (low > 0, no step)")
    step: int | float | None = Field(None, gt=0, description="float and int: the spacing of the values; int: 1 by default")
    choices: list[Choice] | None = Field(
        None, min_length=1, max_length=MAX_CHOICES, description="categorical: the values to choose among"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpaceIn:
        """The fields a type uses, and only those, with a range Optuna can sample."""
        if self.type == "categorical":
            if self.choices is None or self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("a categorical parameter takes choices only")
            return self
        if self.choices is not None or self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter takes low and high (and optionally log or step), not choices")
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log scale needs low > 0 and no step")
        if self.type == "int" and not all(isinstance(v, int) for v in (self.low, self.high, self.step or 1)):
            raise ValueError("an int parameter's low, high and step are whole numbers")
        return self


class PrunerOptionsIn(BaseModel):
    """The pruner's settings, each optional (Optuna's defaults otherwise); only those of the sweep's ``pruner``.

    Steps are epochs: a trial reports one intermediate value per epoch.
    """

    model_config = ConfigDict(extra="forbid")

    n_startup_trials: int | None = Field(None, ge=0, le=MAX_TRIALS, description="median: trials finished before it prunes")
    n_warmup_steps: int | None = Field(None, ge=0, le=INT32_MAX, description="median: epochs of a trial before it prunes it")
    interval_steps: int | None = Field(None, ge=1, le=INT32_MAX, description="median: epochs between its looks")
    min_resource: int | None = Field(None, ge=1, le=INT32_MAX, description="successive_halving: epochs of the first rung")
    reduction_factor: int | None = Field(None, ge=2, le=INT32_MAX, description="successive_halving: rung to rung factor")
    min_early_stopping_rate: int | None = Field(None, ge=0, le=INT32_MAX,
                                                description="successive_halving: rungs skipped before it prunes")


class SweepIn(BaseModel):
    """``POST /v1/sweeps``: a base spec and the space searched over its dotted paths."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("sweep", min_length=1, max_length=90, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="trial jobs are named NAME-<trial number>")
    spec: dict[str, Any] = Field(description="the base JobSpec; each trial sets the space's paths in it")
    space: dict[Annotated[str, Field(pattern=SPACE_PATH, max_length=200)], ParamSpaceIn] = Field(
        min_length=1, max_length=MAX_SPACE_PARAMS, description="dotted spec path -> its range or choices"
    )
    metric: str = Field(max_length=64, description="an evaluation metric the base spec reports, e.g. precision_at_1")
    direction: Literal["maximize", "minimize"]
    trials: int = Field(16, ge=1, le=MAX_TRIALS, description="trials (jobs) in all")
    parallel: int = Field(2, ge=1, le=MAX_PARALLEL, description="trial jobs queued or running at once")
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["none", "median", "successive_halving"] = Field(
        "none", description="stops trials whose evaluation after an epoch is behind the others'"
    )
    pruner_options: PrunerOptionsIn | None = Field(None, description="the pruner's settings (only its own)")
    seed: int = Field(0, ge=0, le=INT32_MAX)


class IntermediateOut(BaseModel):
    epoch: int | None
    step: int
    value: float


class TrialOut(BaseModel):
    number: int = Field(description="Optuna's trial number, from 0")
    params: dict[str, Any]
    job_id: str | None = Field(description="the trial's job (null if none could be made: see error)")
    state: str = Field(description="running, complete, pruned or failed")
    value: float | None = Field(description="the metric's final value (a pruned trial: its last intermediate)")
    intermediate: list[IntermediateOut] = Field(description="the job's eval/<metric> series, reported by epoch")
    error: dict[str, Any] | None


class SweepBestOut(BaseModel):
    trial: int
    value: float
    params: dict[str, Any]
    job_id: str | None
    spec: dict[str, Any] | None = Field(description="the best trial's resolved spec: the base spec with its params")


class SweepOut(BaseModel):
    id: str
    name: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    spec: dict[str, Any] = Field(description="the resolved base spec")
    space: dict[str, Any]
    metric: str
    direction: str
    trials: int
    parallel: int
    sampler: str
    pruner: str
    pruner_options: dict[str, int] | None = Field(None, description="the pruner's settings as given")
    seed: int
    trial_states: dict[str, int] = Field(description="how many trials are running, complete, pruned, failed")
    best: SweepBestOut | None
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
