"""The per-owner storage quota: uploads, checkpoints and job outputs together, at most ``storage_quota_bytes``.

It is checked where an owner asks for new bytes: an upload (by its size) and a
submission (a job will write checkpoints and model files; it is refused once the
owner is at the quota). A running job's files may take an owner past it by one
job's outputs; the next request then says so.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from embedmix.api.errors import ApiError
from embedmix.core.cost import describe_bytes
from embedmix.store.storage import storage_used


def check_storage_quota(session: Session, owner_id: int, adding: int, quota: int) -> None:
    """413 if the owner's stored bytes plus ``adding`` would pass the quota, saying how much is used."""
    used = storage_used(session, owner_id)
    if used + adding <= quota and used < quota:
        return
    raise ApiError(
        413,
        "storage_quota_exceeded",
        f"{describe_bytes(used)} of this owner's {describe_bytes(quota)} storage quota is used "
        f"(uploads, checkpoints and model files){f', and this needs {describe_bytes(adding)} more' if adding else ''}; "
        "delete datasets (DELETE /v1/datasets/{id}) or finished jobs (DELETE /v1/jobs/{id}) to make room",
    )
