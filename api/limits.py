"""Request body limits, enforced while the body streams in.

A declared ``Content-Length`` over the limit is refused before a byte is read;
a body without one (chunked) is counted as it arrives and refused the moment it
passes the limit, so an oversized request never costs more than the limit in
memory, disk or time. Uploads have their own, larger limit (the file's exact
limit is checked again by the upload parser); every other body is JSON and
capped by ``max_request_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_response


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
        if declared is not None and declared.isdigit() and int(declared) > limit:
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
