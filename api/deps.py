"""Dependencies every handler declares: the runtime, a database session, the caller, paging.

One session per request. Handlers commit what they write themselves, before
they answer, so a client that gets a 201 can read the row back at once; the
session is closed (rolling back anything uncommitted) after the response has
been sent, which keeps it usable while a download streams from the database.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from embedmix.api.errors import ApiError, not_found, unauthorized
from embedmix.api.key_cache import Caller
from embedmix.api.runtime import Runtime
from embedmix.api.schemas import ascii_int
from embedmix.store import authenticate, ensure_admin_key, get_job
from embedmix.store.models import Job, Owner

logger = logging.getLogger("embedmix.api")

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


# Dependencies that only read memory are async: FastAPI runs a plain `def` dependency
# in its thread pool, a thread hop per dependency per request for no I/O at all.
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key: `Authorization: Bearer em_...` (POST /v1/keys makes one).",
)


async def get_current_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The owner of the presented key; 401 for a missing, unknown or revoked key (never which).

    Async, and answered from the process's :class:`~api.key_cache.KeyCache`
    when it can: a poll loop then costs no query and no thread for its key.
    """
    if credentials is None:
        raise unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    key = credentials.credentials
    runtime: Runtime = request.app.state.runtime  # not RuntimeDep: every route resolves this, one node less
    caller = runtime.keys.get(key)
    if caller is None:
        caller = await run_in_threadpool(_authenticate, runtime, key)
    if caller is None:
        raise unauthorized("invalid or revoked API key")
    return caller


async def cached_caller(request: Request) -> Caller | None:
    """The caller of the request's bearer key if the process's KeyCache vouches for it, else None.

    What :func:`get_current_owner` answers without a query or a thread, for a
    route that skips dependency solving when it can (``api.jobs.JobReadRoute``).
    """
    credentials = await _bearer(request)
    return None if credentials is None else request.app.state.runtime.keys.get(credentials.credentials)


def _authenticate(runtime: Runtime, key: str) -> Caller | None:
    """Look the key up in the database (in its own short transaction) and remember a valid one."""
    generation = runtime.keys.generation  # read first: an eviction during the lookup voids its answer
    settings = runtime.settings
    with runtime.session_factory() as session:
        owner = authenticate(session, key)
        if (
            owner is None
            and settings.admin_key
            and hmac.compare_digest(key.encode(), settings.admin_key.encode())
        ):
            owner = _provision_admin(session, key)
        session.commit()  # authenticate() may have stamped the key's last use
    if owner is None:
        return None
    caller = Caller(id=owner.id, is_admin=owner.is_admin)
    runtime.keys.put(key, caller, generation)
    return caller


def _provision_admin(session: Session, key: str) -> Owner | None:
    """Store the configured admin key (``EMBEDMIX_ADMIN_KEY``) the first time it is presented.

    Done on first use rather than at start, so an API that starts while the
    database is down still honours the key once the database is back.
    ``embedmix up`` stores it in advance; this makes a plain deployment with
    the setting behave the same.
    """
    try:
        return ensure_admin_key(session, key)
    except ValueError as exc:  # malformed, or revoked by an admin: the setting must change
        logger.error("EMBEDMIX_ADMIN_KEY is not usable: %s", exc)
        return None


CurrentOwner = Annotated[Caller, Depends(get_current_owner)]


async def require_admin(owner: CurrentOwner) -> Caller:
    if not owner.is_admin:
        raise ApiError(403, "forbidden", "this call needs an admin key")
    return owner


AdminOwner = Annotated[Caller, Depends(require_admin)]


JOB_ID_MAX_LENGTH = 64
JobIdPath = Annotated[str, Path(max_length=JOB_ID_MAX_LENGTH)]


def get_owned_job(job_id: JobIdPath, owner: CurrentOwner, session: SessionDep) -> Job:
    """The caller's job; someone else's is as absent as a job that never existed."""
    job = get_job(session, owner.id, job_id)
    if job is None:
        raise not_found("job", job_id, param="job_id")
    return job


OwnedJob = Annotated[Job, Depends(get_owned_job)]


PageSize = ascii_int(1, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class PageParams:
    limit: int
    cursor: str | None


async def get_page(
    limit: Annotated[PageSize, Query(description="page size")] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the previous page")
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=cursor)


PageDep = Annotated[PageParams, Depends(get_page)]


def int_in_text(text: str, kind: Any, param: str) -> int:
    """The number a text parameter carries (a numeric cursor, a part of ``Last-Event-ID``).

    ``kind`` is an :func:`api.schemas.ascii_int` type (``EventId``, ``Step``),
    so the text obeys the same rules as an integer parameter: ASCII digits
    within the column's range; anything else is a 422 naming ``param``.
    """
    try:
        return _adapter(kind).validate_python(text)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ApiError(422, "invalid_cursor", f"invalid {param} {text!r}: {reason}", param=param) from None


@cache
def _adapter(kind: Any) -> TypeAdapter[int]:
    return TypeAdapter(kind)


async def reject_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not take.

    Ignoring it would turn a typo into a wrong answer: ``?stauts=failed``
    would list every job, and the caller would believe it saw only failed ones.
    """
    route = request.scope.get("route")
    if not request.scope.get("query_string") or not isinstance(route, APIRoute):
        return  # most calls have no query at all: nothing to check
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "no query parameters"
        raise ApiError(
            422,
            "invalid_request",
            f"unknown query parameter {unknown[0]!r}; this call takes: {takes}",
            param=unknown[0],
        )


def _query_names(dependant: Dependant) -> set[str]:
    """Every query parameter name a route declares, through its dependencies."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names
