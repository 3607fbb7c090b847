"""Persistence for embedmix: SQLAlchemy 2 models, repository functions and blob storage.

Repository functions take the caller's ``Session`` and flush but never commit,
so one request or one worker step is one transaction. Import from here or from
the module that holds a thing (``store.jobs``, ``store.artifacts``...).
"""

from store.accounts import (
    authenticate,
    create_api_key,
    create_owner,
    ensure_admin_key,
    get_owner,
    list_api_keys,
    revoke_api_key,
)
from store.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    DatabaseArtifacts,
    FilesystemArtifacts,
    artifact_store_from_url,
)
from store.checkpoints import add_checkpoint, get_checkpoint, latest_checkpoint, list_checkpoints
from store.datasets import create_dataset, delete_dataset, get_dataset, list_datasets
from store.db import make_engine, make_session_factory, migrate
from store.events import NewEvent, add_events, list_events
from store.jobs import (
    ActiveJobLimit,
    IdempotencyConflict,
    claim_lease,
    count_active_jobs,
    create_job,
    expired_leases,
    get_job,
    get_job_status,
    get_job_unscoped,
    list_jobs,
    reap_expired,
    release_lease,
    renew_lease,
    request_cancel,
    transition,
    update_progress,
)
from store.metrics import MetricPoint, latest_metrics, list_metrics, upsert_metrics
from store.models import (
    JOB_STATUSES,
    TERMINAL_STATUSES,
    ApiKey,
    Artifact,
    Checkpoint,
    Dataset,
    Event,
    Job,
    Metric,
    Owner,
)
from store.paging import InvalidCursor

__all__ = [
    "JOB_STATUSES",
    "TERMINAL_STATUSES",
    "ApiKey",
    "Artifact",
    "ArtifactNotFound",
    "ArtifactStore",
    "Checkpoint",
    "DatabaseArtifacts",
    "Dataset",
    "Event",
    "FilesystemArtifacts",
    "ActiveJobLimit",
    "IdempotencyConflict",
    "InvalidCursor",
    "Job",
    "Metric",
    "MetricPoint",
    "NewEvent",
    "Owner",
    "add_checkpoint",
    "add_events",
    "artifact_store_from_url",
    "authenticate",
    "claim_lease",
    "create_api_key",
    "create_dataset",
    "count_active_jobs",
    "create_job",
    "create_owner",
    "ensure_admin_key",
    "delete_dataset",
    "expired_leases",
    "get_checkpoint",
    "get_dataset",
    "get_job",
    "get_job_status",
    "get_job_unscoped",
    "get_owner",
    "latest_checkpoint",
    "latest_metrics",
    "list_api_keys",
    "list_checkpoints",
    "list_datasets",
    "list_events",
    "list_jobs",
    "list_metrics",
    "make_engine",
    "make_session_factory",
    "migrate",
    "reap_expired",
    "release_lease",
    "renew_lease",
    "request_cancel",
    "revoke_api_key",
    "transition",
    "update_progress",
    "upsert_metrics",
]
