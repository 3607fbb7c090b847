"""``/v1/keys``: API keys, managed by admins.

``GET /v1/keys`` lists the caller's keys (an admin: any owner's), prefixes only.
``POST /v1/keys`` (admin only) creates an owner with a first key, or adds a key
to an existing owner; the plain key is in that response and nowhere else ever
(only its hash is stored). ``DELETE /v1/keys/{id}`` revokes a key: an admin
may revoke any key, an owner only their own (another owner's key is 404).
The configured ``EMBEDMIX_ADMIN_KEY`` is stored like any key the first time
it is used (``embedmix up`` stores it in advance); revoking it disables it for
good, and the setting must then name a new key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from embedmix.api.deps import AdminOwner, CurrentOwner, RuntimeDep, SessionDep
from embedmix.api.errors import ApiError, not_found
from embedmix.api.schemas import ErrorOut, KeyCreatedOut, KeyCreateIn, KeyOut, Page, RowId
from embedmix.store import create_api_key, create_owner, get_owner, list_api_keys, revoke_api_key
from embedmix.store.models import ApiKey

router = APIRouter(prefix="/v1/keys", tags=["keys"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 403, 404, 422)
}


@router.post("", status_code=201, responses=_ERRORS)
def create_key(body: KeyCreateIn, admin: AdminOwner, session: SessionDep) -> KeyCreatedOut:
    """A new owner and its key (``name``), or another key for ``owner_id``."""
    if (body.name is None) == (body.owner_id is None):
        raise ApiError(
            422,
            "invalid_request",
            "give exactly one of name (a new owner) or owner_id",
            param="name",
        )
    if body.owner_id is not None:
        owner = get_owner(session, body.owner_id)
        if owner is None:
            raise not_found("owner", str(body.owner_id), param="owner_id")
    else:
        owner = create_owner(session, body.name or "", is_admin=body.admin)
    key, plain = create_api_key(session, owner.id)
    session.commit()
    return KeyCreatedOut(**KeyOut.model_validate(key).model_dump(), key=plain)


@router.get("", responses=_ERRORS)
def list_keys(
    owner: CurrentOwner,
    session: SessionDep,
    owner_id: Annotated[RowId | None, Query(description="an admin may list another owner's keys")] = None,
) -> Page[KeyOut]:
    """The caller's keys (prefixes only, revoked ones too), oldest first; an admin may name another owner."""
    target = owner.id if owner_id is None else owner_id
    if target != owner.id and (not owner.is_admin or get_owner(session, target) is None):
        raise not_found("owner", str(target), param="owner_id")
    keys = [KeyOut.model_validate(k) for k in list_api_keys(session, target)]
    return Page(data=keys, has_more=False, next_cursor=None)


@router.delete("/{key_id}", responses=_ERRORS)
def revoke_key(
    key_id: Annotated[RowId, Path()], owner: CurrentOwner, session: SessionDep, runtime: RuntimeDep
) -> KeyOut:
    """Revoke a key at once; requests with it get 401 from then on. Revoking twice is harmless."""
    key = session.get(ApiKey, key_id)
    if key is None or (key.owner_id != owner.id and not owner.is_admin):
        raise not_found("key", str(key_id), param="key_id")
    revoke_api_key(session, key.owner_id, key.id)
    session.commit()
    runtime.revocations.publish(key.owner_id)  # every API process drops its cached keys of this owner
    session.refresh(key)
    return KeyOut.model_validate(key)
