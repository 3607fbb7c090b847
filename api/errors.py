"""One error format for every failure: ``{"error": {"code", "message", "param"}}``.

Clients branch on ``code`` (stable, snake case) and show ``message``;
``param`` names the offending field as a dotted path (``train.lr``), a query
parameter or a header, or is null. Validation errors may add ``details``, the
full list of ``{"field", "message"}``. FastAPI's own errors (unknown route,
bad query parameter, malformed JSON) are rewritten into this shape too, so a
client never has to parse two formats.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedmix.api.schemas import ErrorOut
from embedmix.store import ArtifactNotFound, InvalidCursor
from embedmix.store.db import DATABASE_DOWN

logger = logging.getLogger("embedmix.api")

# Seconds a client should wait before retrying when a dependency is down.
RETRY_AFTER_UNAVAILABLE_S = 5

# A write that found no room: the disk is full, a disk quota is spent, or a file grew past the
# process's size limit (errno); SQLite's "database or disk is full"; PostgreSQL's disk_full.
_NO_ROOM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_REFUSED_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}  # a store mounted read-only or not ours to write
_NO_ROOM_PGCODE = "53100"

# Codes for errors raised by FastAPI/Starlette themselves (routing, method, body limits).
_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(StarletteHTTPException):
    """An error to return as-is. A subclass of Starlette's HTTPException so that FastAPI
    lets it through unchanged even when it is raised while the request body is read."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        details: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=dict(headers or {}))
        self.code = code
        self.message = message
        self.param = param
        self.details = list(details) if details is not None else None


def not_found(what: str, identifier: str, *, param: str | None = None) -> ApiError:
    """404 for anything absent *or owned by someone else*: the two are indistinguishable on purpose."""
    return ApiError(404, "not_found", f"no {what} {identifier!r}", param=param)


def unauthorized(message: str) -> ApiError:
    """401 with the challenge header RFC 6750 asks for."""
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def unavailable(message: str) -> ApiError:
    """503 with Retry-After: the request was fine, a dependency was not."""
    return ApiError(
        503, "unavailable", message, headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)}
    )


def error_body(
    code: str,
    message: str,
    param: str | None = None,
    details: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON body of an error response."""
    error: dict[str, Any] = {"code": code, "message": message, "param": param}
    if details is not None:
        error["details"] = list(details)
    return {"error": error}


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    details: Sequence[Mapping[str, Any]] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, param, details), status_code=status_code, headers=headers
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        return error_response(
            exc.status_code,
            exc.code,
            exc.message,
            param=exc.param,
            headers=exc.headers,
            details=exc.details,
        )
    code = _CODES_BY_STATUS.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


def _dotted(location: Sequence[Any]) -> str | None:
    """('body', 'train', 'lr') -> 'train.lr'; ('query', 'limit') -> 'limit'."""
    parts = [str(p) for p in location]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or None


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        _not_json(err, exc.body) if err.get("type") == "json_invalid" else
        {
            "field": _dotted(err.get("loc", ())) or "request",
            "message": str(err.get("msg", "invalid")),
        }
        for err in exc.errors()
    ] or [{"field": "request", "message": "invalid request"}]
    first = details[0]
    return error_response(
        422,
        "invalid_request",
        f"{first['field']}: {first['message']}",
        param=first["field"],
        details=details,
    )


def _not_json(err: Mapping[str, Any], document: object) -> dict[str, str]:
    """A body that does not parse, said in words: what the parser expected, and where (line, column)."""
    loc = err.get("loc", ())
    position = loc[-1] if loc and isinstance(loc[-1], int) else None
    reason = str((err.get("ctx") or {}).get("error", "it does not parse"))
    where = ""
    if position is not None and isinstance(document, (str, bytes)):
        text = document.decode("utf-8", "replace") if isinstance(document, bytes) else document
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        where = f" at line {line}, column {column}"
    return {"field": "body", "message": f"the body is not valid JSON: {reason}{where}"}


async def _invalid_cursor(request: Request, exc: Exception) -> JSONResponse:
    return error_response(422, "invalid_cursor", str(exc), param="cursor")


async def _artifact_missing(request: Request, exc: Exception) -> JSONResponse:
    # The row exists but its bytes are gone: an operator problem, reported without internals.
    logger.error("artifact missing: %s", exc)
    return error_response(404, "artifact_missing", "the stored file is missing; ask the operator")


def _no_room(exc: Exception) -> bool:
    """Whether ``exc`` is a write refused for want of space (a file or the database store)."""
    if isinstance(exc, OSError):
        return exc.errno in _NO_ROOM_ERRNOS
    cause = exc.orig if isinstance(exc, DBAPIError) else None
    if isinstance(cause, sqlite3.Error):
        return cause.sqlite_errorcode == sqlite3.SQLITE_FULL
    return getattr(cause, "pgcode", None) == _NO_ROOM_PGCODE


async def _storage_full(request: Request, exc: Exception) -> JSONResponse:
    """507 for a write with no room left (an upload, a stored file); 503 for a store that refuses
    writes (read-only, no permission: /readyz names it too); any other OSError is a 500."""
    if isinstance(exc, OSError) and exc.errno in _REFUSED_ERRNOS:
        logger.error("storage refuses writes on %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
        error = unavailable("the service's storage refuses writes; ask the operator (see /readyz)")
        return await _http_error(request, error)
    if not _no_room(exc):
        return await _internal_error(request, exc)
    logger.error("storage full on %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
    return error_response(
        507,
        "storage_full",
        "the service has no room left to store this; retry later or ask the operator to free space",
        headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
    )


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    if _no_room(exc):
        return await _storage_full(request, exc)
    logger.warning("database unavailable: %s", exc.__class__.__name__)
    error = unavailable("the database is unavailable; retry shortly")
    return await _http_error(request, error)


def _client_went_away(exc: BaseException) -> bool:
    """A stream whose client disconnected mid-response (anyio reports it, possibly in a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_went_away(e) for e in exc.exceptions)
    return isinstance(exc, (anyio.BrokenResourceError, anyio.ClosedResourceError))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    if _client_went_away(exc):
        logger.debug("client left %s %s", request.method, request.url.path)
    else:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error")


_ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
_ERROR_DESCRIPTIONS = {
    400: "Malformed request: a NUL in the URL or a header, unreadable or over-deep JSON",
    401: "Missing, unknown or revoked API key",
    413: "Body over the size limit",
    422: "A parameter or the body is invalid; `param` names it",
    500: "Internal error (reported without internals)",
    507: "No room left to store the upload (code storage_full); retry after Retry-After seconds",
    503: "The database is unavailable; retry after Retry-After seconds",
}


def document_errors(app: FastAPI) -> None:
    """Declare in the OpenAPI schema the errors that shared machinery answers on every route.

    Middleware and dependencies (the input guard, keys, body limits, the
    unknown-query check, the database) can fail any route they apply to, so
    their errors are added here once rather than listed by hand per route; and
    every error response is described as JSON in the error format, also on
    routes whose success is a file or an event stream.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _add_error_model(schema)
            for path, item in schema.get("paths", {}).items():
                for operation in item.values():
                    _document_operation(path, operation)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_model(schema: dict[str, Any]) -> None:
    _, definitions = models_json_schema(
        [(ErrorOut, "serialization")], ref_template="#/components/schemas/{model}"
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in definitions.get("$defs", {}).items():
        components.setdefault(name, definition)


def _document_operation(path: str, operation: dict[str, Any]) -> None:
    statuses = {400, 500}
    if path.startswith("/v1/"):
        statuses.add(422)  # unknown query parameters, on every API route
    if operation.get("parameters") or "requestBody" in operation:
        statuses.add(422)
    if "requestBody" in operation:
        statuses |= {413, 507}  # too large; no room left to store it
    if operation.get("security"):
        statuses |= {401, 503}
    responses = operation.setdefault("responses", {})
    for status in statuses:
        responses.setdefault(str(status), {"description": _ERROR_DESCRIPTIONS[status]})
    for status, response in responses.items():
        if status[:1] in ("4", "5"):
            response["content"] = {"application/json": {"schema": _ERROR_REF}}


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through the one format."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InvalidCursor, _invalid_cursor)
    app.add_exception_handler(ArtifactNotFound, _artifact_missing)
    app.add_exception_handler(OSError, _storage_full)
    # The database down (store.db.DATABASE_DOWN), or no pooled connection free in time:
    # all transient from the client's side.
    for kind in (*DATABASE_DOWN, PoolTimeout):
        app.add_exception_handler(kind, _database_unavailable)
    app.add_exception_handler(Exception, _internal_error)
