"""SQLAlchemy 2 models: the tables the API and the workers share.

Every timestamp is a timezone-aware UTC ``datetime`` on both backends (see
:class:`UTCDateTime`). Public identifiers are prefixed random strings
(``job_``, ``ds_``, ``art_``, ``ckpt_``; their formats are :mod:`service.ids`) so
that they cannot be guessed or enumerated; only events keep an integer id, because
clients page through them with ``after_id``. Enumerations are short strings
guarded by CHECK constraints rather than native enum types, which keeps
migrations identical on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from embedmix.service.ids import (
    ARTIFACT_PREFIX,
    CHECKPOINT_PREFIX,
    DATASET_PREFIX,
    SWEEP_PREFIX,
    new_id,
    new_job_id,
)

JOB_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATUSES = ("queued", "running", "cancelling")  # hold a worker or will: quotas and in-use checks count them
EVENT_LEVELS = ("debug", "info", "warning", "error")
ARTIFACT_BACKENDS = ("db", "fs", "s3")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime: the one clock every row is stamped with."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is stored in UTC and always read back timezone-aware.

    PostgreSQL keeps the zone (``timestamptz``), SQLite drops it; normalising to
    UTC on the way in and attaching UTC on the way out makes both backends
    return equal, comparable values, so lease expiry and cursor paging behave
    the same everywhere. Naive datetimes are refused: their meaning is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSONB on PostgreSQL (binary, indexable); JSON text elsewhere. SQL NULL, not JSON
# 'null', for absent values so that "IS NULL" means what it says.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _in(column: str, values: tuple[str, ...]) -> str:
    """SQL for a CHECK that ``column`` holds one of ``values``."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base with named constraints, so migrations can refer to them on any backend."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class Owner(Base):
    """Whoever owns jobs and datasets; every API key belongs to one."""

    __tablename__ = "owners"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key, stored only as its sha256; ``prefix`` lets a user tell keys apart in listings."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(8), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Job(Base):
    """One training job: its spec, its state machine, its lease and its outputs.

    Its outputs (``model_artifacts``, the exported files by format; ``projection``,
    the embedding map; the ``card``) are written by the transaction that makes it
    succeeded, and so are the artifacts they point at: all of them, or none.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        UniqueConstraint("owner_id", "idempotency_key"),
        Index("ix_jobs_owner_id_created_at_id", "owner_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    model_artifacts: Mapped[dict[str, Any] | None]
    card: Mapped[dict[str, Any] | None]
    projection: Mapped[dict[str, Any] | None]


class Event(Base):
    """A line in a job's timeline; ``dedup_key`` makes a replayed event land once."""

    __tablename__ = "events"
    __table_args__ = (
        CheckConstraint(_in("level", EVENT_LEVELS), name="level"),
        UniqueConstraint("job_id", "dedup_key"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    time: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None]
    dedup_key: Mapped[str | None] = mapped_column(String(255))


class Metric(Base):
    """One point of a metric series, keyed by (job, name, step) so a replayed step overwrites."""

    __tablename__ = "metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    """A blob's metadata; ``complete`` turns true only once every byte is written and hashed."""

    __tablename__ = "artifacts"
    __table_args__ = (CheckConstraint(_in("backend", ARTIFACT_BACKENDS), name="backend"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id(ARTIFACT_PREFIX))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    backend: Mapped[str] = mapped_column(String(8))
    location: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)


class ArtifactChunk(Base):
    """One piece (1 MiB) of a blob kept in the database, so it can be streamed piece by piece."""

    __tablename__ = "artifact_chunks"

    artifact_id: Mapped[str] = mapped_column(
        ForeignKey("artifacts.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Checkpoint(Base):
    """A saved training state a new attempt can resume from; its blob is an artifact."""

    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id(CHECKPOINT_PREFIX))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """An uploaded, validated dataset; jobs refer to it by id in their spec."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_id_created_at_id", "owner_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id(DATASET_PREFIX))
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


SWEEP_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TRIAL_STATES = ("running", "complete", "pruned", "failed")


class Sweep(Base):
    """A hyper-parameter search: a base spec, a space over its dotted paths, and the controller's lease.

    ``spec`` is the resolved base spec; ``config`` the search itself (space,
    metric, direction, trials, parallel, sampler, pruner, seed). The study
    lives in Optuna's own tables in this database, named by the sweep's id;
    ``best`` is copied here by the controller whenever a trial improves it.
    """

    __tablename__ = "sweeps"
    __table_args__ = (
        CheckConstraint(_in("status", SWEEP_STATUSES), name="status"),
        UniqueConstraint("owner_id", "idempotency_key"),
        Index("ix_sweeps_owner_id_created_at_id", "owner_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id(SWEEP_PREFIX))
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    spec: Mapped[dict[str, Any]]
    config: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    best: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))


class SweepTrial(Base):
    """One trial of a sweep: Optuna's trial number, its parameters and the job that runs it.

    The row is written in the transaction that creates the job, so a trial
    number never gets a second job; ``state`` turns final once the trial's
    result has been told to the study.
    """

    __tablename__ = "sweep_trials"
    __table_args__ = (CheckConstraint(_in("state", TRIAL_STATES), name="state"),)

    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    params: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16), default="running")
    value: Mapped[float | None] = mapped_column(Float)
    error: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
