"""The dashboard under ``/ui``: static files shipped in the package, served by the API itself.

The pages are one HTML document plus plain scripts and a stylesheet
(``api/static/ui``); nothing is fetched from anywhere else at run time, and a
Content-Security-Policy says so to the browser. The pages hold no data of
their own: they call the JSON API with the user's key (kept in the browser's
``sessionStorage``, or ``localStorage`` when the user asks to be remembered)
in the ``Authorization`` header, exactly like any other client. Serving them
needs no key; every call they make does.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import RedirectResponse, Response

from embedmix.api.errors import not_found

router = APIRouter(prefix="/ui", include_in_schema=False)

STATIC = resources.files("embedmix.api") / "static" / "ui"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Scripts and styles from this origin only; the API is called on this origin; blob: URLs
# carry downloaded models to the browser's save dialog.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("")
def ui_root() -> RedirectResponse:
    """``/ui`` -> ``/ui/`` so relative asset paths resolve under ``/ui/``."""
    return RedirectResponse("/ui/", status_code=308)


@router.get("/")
def ui_index() -> Response:
    """The single page; its script draws the page the URL's fragment names (#/jobs, #/jobs/<id>, ...)."""
    return _file("index.html")


@router.get("/{name}")
def ui_asset(name: Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9-]+\.(js|css|svg|html)$")]) -> Response:
    """One shipped file; the name pattern admits no directory, so nothing outside the folder is reachable."""
    return _file(name)


def _file(name: str) -> Response:
    resource = STATIC / name
    suffix = "." + name.rsplit(".", 1)[-1]
    if not resource.is_file() or suffix not in MEDIA_TYPES:
        raise not_found("file", name)
    return Response(resource.read_bytes(), media_type=MEDIA_TYPES[suffix], headers=HEADERS)
