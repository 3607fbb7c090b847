"""The status poll's short way: ``GET /v1/jobs/{id}`` answered before FastAPI's routing.

Clients poll a job every second or so while it trains, and the service must
hold a thousand polls a second beside a stream of submissions on two cores.
Through FastAPI's dependency resolution a poll costs about twice its one
query, so this middleware answers the common case itself: a GET of one job by
its id, no query string, a bearer key the process's KeyCache already knows,
and a job of that key's owner. The body comes from the route's own
:func:`api.jobs.read_job_json`, with the route's headers, so the answer is the
route's answer. Anything else goes on to the route, which stays the reference
and the OpenAPI operation: a key not yet cached, a job that is not the
caller's (the route's 404), a query string (the route's 422), a database error
(the route tries again and answers 503 as every route does).
"""

from __future__ import annotations

import asyncio
import re

from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Receive, Scope, Send

from embedmix.api.deps import JOB_ID_MAX_LENGTH
from embedmix.api.jobs import JOB_MEDIA_TYPE, read_job_json
from embedmix.api.runtime import Runtime

# What the route's {job_id} takes (one path segment, JobIdPath's length); an id that names no
# job of the caller's is read, found absent and handed to the route for its 404.
POLL_PATH = re.compile(rf"/v1/jobs/([^/]{{1,{JOB_ID_MAX_LENGTH}}})")


class JobPollMiddleware:
    """Pure ASGI; place it innermost, so metrics, limits and the access log see its answers.

    The read runs on the runtime's own few poll threads, not FastAPI's pool:
    a plain executor hop costs less than anyio's, and polls do not queue
    behind forty submissions holding that pool.
    """

    def __init__(self, app: ASGIApp, runtime: Runtime, route: APIRoute) -> None:
        self.app = app
        self.runtime = runtime
        self.route = route  # metrics label an answer by the route it stands in for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._answer(scope) if _looks_like_a_poll(scope) else None
        if body is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        headers = [(b"content-type", JOB_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope) -> bytes | None:
        match = POLL_PATH.fullmatch(scope["path"])
        key = _bearer_key(scope)
        caller = self.runtime.keys.get(key) if match and key else None
        if caller is None:
            return None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.runtime.poll_threads, self._read, caller.id, match[1])  # type: ignore[index]

    def _read(self, owner_id: int, job_id: str) -> bytes | None:
        try:
            return read_job_json(self.runtime.engine, owner_id, job_id)
        except SQLAlchemyError:
            return None  # the route answers the error, as it answers every other


def _looks_like_a_poll(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "GET" and not scope.get("query_string")


def _bearer_key(scope: Scope) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, parsed as FastAPI's HTTPBearer does."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            return key.strip() or None
    return None
