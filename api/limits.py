"""Request limits, enforced before or while the body streams in.

A declared ``Content-Length`` over the limit is refused before a byte is read;
a body without one (chunked) is counted as it arrives and refused the moment it
passes the limit, so an oversized request never costs more than the limit in
memory, disk or time. Uploads have their own, larger limit (the file's exact
limit is checked again by the upload parser); every other body is JSON and
capped by ``max_request_bytes``. JSON bodies are also refused when they are
not UTF-8 (RFC 8259 asks for it; Python's parser would also read UTF-16 and
UTF-32, whose bytes hide NULs and nesting from a byte-level check), when nested
deeper than ``max_json_depth`` (the parser recurses per level), or when a string
holds ``\u0000`` or an unpaired surrogate escape (``\ud800``: text no UTF-8
column can store); a NUL anywhere in the URL or a header is refused too, since
no route takes one and PostgreSQL cannot store one.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedmix.api.errors import ApiError, error_response


def too_large(limit: int, what: str = "request body") -> ApiError:
    """413 naming the limit, so a client can tell how much to trim."""
    return ApiError(413, "too_large", f"{what} is larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    """413 in the API's error format; ``limit_for(scope)`` gives each request's limit in bytes."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = Headers(scope=scope).get("content-length")
        # ASCII digits only (int() also reads other scripts' digits); past 19 digits is past any limit
        if declared and declared.isascii() and declared.isdigit() and (len(declared) > 19 or int(declared) > limit):
            error = too_large(limit)
            response = error_response(
                413, error.code, error.message, headers={"Connection": "close"}
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside whatever reads the body; the error handlers answer 413.
                    raise too_large(limit)
            return message

        await self.app(scope, counted_receive, send)


# JSON strings hold what every route stores as text; PostgreSQL refuses NUL in text and JSONB.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
# One escape inside a string, read left to right so that "\\u0000" is a backslash and text.
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)
_HIGH_SURROGATES = range(0xD800, 0xDC00)
_LOW_SURROGATES = range(0xDC00, 0xE000)
# The fast pre-check's pieces (see _may_be_refused): strings alone, every byte but a bracket,
# each bracket's step in depth, and the bytes a refused escape must contain.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_BRACKET_STEP = np.zeros(256, dtype=np.int64)
_BRACKET_STEP[list(b"[{")] = 1
_BRACKET_STEP[list(b"]}")] = -1
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_JSON_TYPES = ("application/json", "")
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def bad_request(code: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(400, code, message, param=param)


def json_problem(body: bytes, max_depth: int) -> ApiError | None:
    """Why this JSON body must be refused before it is parsed, or None.

    The body must be UTF-8 first: then the brackets, quotes and escapes scanned
    here are the decoded JSON's, since no byte of a multi-byte UTF-8 character
    is ASCII. Python's parser recurses once per level, so nesting is bounded
    here, counting only brackets outside strings. Malformed JSON is left to the
    parser, which reports it with a position.

    Most bodies have nothing to refuse, and an embed request is a megabyte of
    numbers, so :func:`_may_be_refused` first asks in C-speed passes (regex
    search, ``bytes.translate``, numpy) whether anything could be; only then does
    the exact scan, token by token, say what comes first in the body.
    """
    if not _is_utf8(body):
        return bad_request(
            "invalid_json",
            "the JSON body must be encoded in UTF-8 (RFC 8259); this one is not (UTF-16 or UTF-32?)",
        )
    if not _may_be_refused(body, max_depth):
        return None
    return _first_problem(body, max_depth)


def _may_be_refused(body: bytes, max_depth: int) -> bool:
    """Whether :func:`_first_problem` could find anything; never False where it would.

    Nesting: the strings are the same ones the exact scan matches (both scan
    left to right, and a bracket never consumes a quote), so the brackets left
    once they are cut out are the ones it counts, and its running depth passes
    ``max_depth`` exactly where the running sum here does. Escapes: a refused
    one is ``\\u0000`` or a surrogate ``\\ud800``-``\\udfff``, so a body without
    that byte pattern has none (an escaped backslash before ``u0000`` matches
    here too; the exact scan then reads it as text).
    """
    if _SUSPECT_ESCAPE.search(body) is not None:
        return True
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if len(brackets) <= max_depth:
        return False
    depth = np.cumsum(_BRACKET_STEP[np.frombuffer(brackets, dtype=np.uint8)])
    return bool(depth.max() > max_depth)


def _first_problem(body: bytes, max_depth: int) -> ApiError | None:
    """The first over-deep bracket or refused escape in the body, scanning brackets and strings in order."""
    depth = 0
    for match in _JSON_TOKEN.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return bad_request(
                    "json_too_deep",
                    f"the JSON body is nested more than {max_depth} levels deep",
                )
        elif token in (b"]", b"}"):
            depth -= 1
        elif b"\\" in token:
            problem = _escape_problem(token)
            if problem is not None:
                return bad_request("invalid_json", problem)
    return None


def _is_utf8(body: bytes) -> bool:
    """Strict UTF-8 with no NUL byte: UTF-8 JSON never holds a raw NUL, UTF-16 and UTF-32 of ASCII always do.

    Python's strict decoder also refuses encoded surrogates, which the JSON
    parser (decoding with ``surrogatepass``) would let through.
    """
    if b"\x00" in body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _escape_problem(string: bytes) -> str | None:
    """A NUL or an unpaired surrogate among one JSON string's escapes: text no store can hold."""
    unpaired = "JSON strings may not contain an unpaired surrogate escape (such as \\ud800)"
    high_ends_at: int | None = None  # where an escaped high surrogate ended, waiting for its low half
    for escape in _ESCAPE.finditer(string):
        code = int(escape.group(1), 16) if escape.group(1) else -1  # -1: a one-character escape
        if high_ends_at is not None:
            if escape.start() != high_ends_at or code not in _LOW_SURROGATES:
                return unpaired
            high_ends_at = None
        elif code == 0:
            return "JSON strings may not contain the NUL character (\\u0000)"
        elif code in _HIGH_SURROGATES:
            high_ends_at = escape.end()
        elif code in _LOW_SURROGATES:
            return unpaired
    return unpaired if high_ends_at is not None else None


def request_line_problem(scope: Scope) -> ApiError | None:
    """A NUL in the path, query or a header value: no route accepts one, and stores refuse it."""
    if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
        return bad_request("bad_request", "the URL may not contain the NUL character (%00)")
    if any(b"\x00" in value for _, value in scope.get("headers", ())):
        return bad_request("bad_request", "header values may not contain the NUL character")
    return None


class InputGuardMiddleware:
    """400 for input no handler should ever see: NULs in the request line and over-deep JSON.

    The JSON body (already capped by :class:`BodyLimitMiddleware`) is collected as the
    handler reads it and checked when its last piece arrives, so the check raises from
    inside the body read, like the size limit, and the error handlers answer.
    """

    def __init__(self, app: ASGIApp, max_json_depth: int) -> None:
        self.app = app
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = request_line_problem(scope)
        if problem is not None:
            await _answer(problem, scope, receive, send)
            return
        if scope["method"] not in BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        pieces: list[bytes] = []

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                pieces.append(message.get("body", b""))
                if not message.get("more_body", False):
                    error = json_problem(b"".join(pieces), self.max_json_depth)
                    pieces.clear()
                    if error is not None:
                        raise error
            return message

        await self.app(scope, checked_receive, send)


def _is_json(scope: Scope) -> bool:
    """FastAPI parses a body as JSON when its type is JSON (``+json`` too) or not given."""
    content_type = Headers(scope=scope).get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    return media in _JSON_TYPES or media.endswith("+json")


async def _answer(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(error.status_code, error.code, error.message, param=error.param)
    await response(scope, receive, send)
