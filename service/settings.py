"""Service settings, read from the environment (EMBEDMIX_*), shared by every service process.

They live in ``service``, the room every service process imports and that
imports none of them; ``core`` and the CLI's local ``train`` never read them.
The queue's names are in :mod:`service.queue`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDMIX_", extra="ignore")

    database_url: str = Field("sqlite:///embedmix.db", description="SQLAlchemy URL; PostgreSQL in production")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker")
    artifacts: str = Field(
        "db", description="'db' (chunked blobs in the database), 's3://bucket/prefix', or a directory / file:// URL"
    )
    s3_endpoint_url: str | None = Field(
        None, description="an S3-compatible server (MinIO...) for s3:// artifacts; credentials: the standard AWS_* variables"
    )
    work_dir: str = Field("", description="scratch space for workers; empty: the system temp dir")

    lease_ttl_s: float = Field(30.0, gt=1.0, description="a worker's lease on its job; renewed every ttl/3")
    reaper_interval_s: float = Field(10.0, gt=0.1)
    lost_message_after_s: float = Field(
        120.0, gt=0.0, description="a queued job nobody took for this long gets its message re-sent (then backing off)"
    )
    broker_visibility_timeout_s: float = Field(
        24 * 3600.0, gt=1.0, description="an unacknowledged message goes back to the queue after this long"
    )
    metrics_flush_s: float = Field(1.0, gt=0.0, description="metrics and events are written in batches at most this often")
    checkpoint_min_interval_s: float = Field(
        30.0,
        ge=0.0,
        description="a job whose spec checkpoints once per epoch (the default) stores one at most this often; "
        "the last one of a run, and one made to stop, always",
    )
    cancel_poll_s: float = Field(0.5, gt=0.0, description="how often a running job checks for a cancel request")
    sweep_poll_s: float = Field(
        2.0, gt=0.0, description="how often a sweep's controller reads its trials' progress and launches new trials"
    )

    max_upload_bytes: int = Field(512 * 1024 * 1024, gt=0)
    max_request_bytes: int = Field(1024 * 1024, gt=0, description="JSON bodies (specs, embed requests)")
    max_json_depth: int = Field(32, gt=1, description="deepest nesting a JSON body may have (specs need 4, embed inputs 5)")
    max_embed_inputs: int = Field(10_000, gt=0)
    max_active_jobs_per_owner: int = Field(50, gt=0, description="queued + running")
    submit_rate_per_minute: int = Field(120, gt=0, description="job submissions per owner per minute (429 beyond)")
    max_epochs: int = Field(1000, gt=0, description="largest train.epochs a submitted spec may ask for")
    max_batch_size: int = Field(16_384, gt=0, description="largest train.batch_size")
    max_model_width: int = Field(4096, gt=0, description="largest model.width, model.embedding_dim and projection_dim")
    max_dataset_rows: int = Field(5_000_000, gt=0, description="largest dataset a job may train on (rows)")
    worker_memory_bytes: int = Field(
        8 * 1024**3,
        gt=0,
        description="memory a worker offers one job: specs whose estimated peak is larger are refused at submit, "
        "and a worker process that grows past it fails its job with out_of_memory",
    )
    max_devices_per_job: int = Field(
        2, gt=0, description="most resources.devices a job may ask for: the ranks one worker can run together "
        "(its GPUs; on a CPU-only worker gloo ranks share the cores, so 2 is the default)"
    )
    worker_devices: int = Field(
        0, ge=0, description="devices a worker offers one job: it takes jobs asking for up to this many "
        "resources.devices, the largest first (0: the GPUs it sees, or max_devices_per_job gloo ranks without one)"
    )
    train_threads: int = Field(
        0, ge=0, description="CPU threads a training process may use (0: torch's default, every core)"
    )
    max_streams_per_key: int = Field(16, gt=0, description="event streams one API key may hold open (429 beyond)")
    max_streams: int = Field(256, gt=0, description="event streams one API process holds open in all (429 beyond)")
    storage_quota_bytes: int = Field(
        20 * 1024**3, gt=0, description="bytes one owner may keep in uploads, checkpoints and models (413 beyond)"
    )
    key_cache_s: float = Field(
        30.0,
        ge=0.0,
        description="an API process remembers a valid key this long (0: never); revoking evicts it everywhere at once",
    )
    admin_key: str | None = Field(None, description="if set, this key is created for the admin owner on start")
    cors_origins: list[str] = Field(default_factory=list, description="CORS is closed unless origins are listed")
    log_format: Literal["json", "text"] = Field("json", description="service logs: JSON lines with the job id, or plain text")


@lru_cache
def get_settings() -> Settings:
    return Settings()
