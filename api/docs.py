"""The API's documentation pages, /docs (Swagger UI) and /redoc, working without internet.

Their scripts and styles come from the ``fastapi-offline`` package (mounted by
``FastAPIOffline`` in ``api.app``), not from a CDN. ReDoc still asks a CDN for
a logo, so these pages also carry a Content-Security-Policy that keeps the
browser on this host: a self-hosted service's documentation sends its readers
nowhere else.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOC_PAGES = ("/docs", "/redoc")
# Both pages start their UI from an inline script; ReDoc renders in a blob: worker and inlines images.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
)


class DocsPolicyMiddleware:
    """Adds ``DOCS_CSP`` to the documentation pages' responses (and touches no other request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in DOC_PAGES:
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Content-Security-Policy"] = DOCS_CSP
            await send(message)

        await self.app(scope, receive, with_policy)
