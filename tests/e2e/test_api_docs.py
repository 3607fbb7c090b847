"""The API's own documentation pages render in a real Chromium with no request leaving the host.

A self-hosted service is often run where there is no internet; Swagger UI and
ReDoc load from a CDN by default, which left `/docs` blank there. Every request
the pages make is recorded, and any to another host is refused and fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from embedmix.api import create_app
from embedmix.service.settings import Settings
from tests.conftest import served_in_thread
from tests.e2e.test_dashboard import CHROMIUM, CHROMIUM_ARGS

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install '.[dev]'")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
)
TIMEOUT_MS = 120_000  # ReDoc lays out every operation before it shows one; slow on a loaded 2-core box


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("docs")
    settings = Settings(database_url=f"sqlite:///{directory / 'db.sqlite'}", work_dir=str(directory))
    with served_in_thread(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


def _operations(base_url: str) -> int:
    paths = httpx.get(f"{base_url}/openapi.json", timeout=30).json()["paths"]
    return sum(1 for item in paths.values() for method in item if method in {"get", "post", "put", "patch", "delete"})


@pytest.mark.parametrize(("page_path", "operation_selector"), [
    ("/docs", ".opblock"),
    ("/redoc", "[data-section-id^='operation/']"),
])
def test_the_api_docs_render_every_operation_offline(base_url: str, page_path: str, operation_selector: str) -> None:
    host = urlsplit(base_url).netloc
    off_host: list[str] = []

    def only_this_host(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if urlsplit(url).netloc == host or url.startswith("data:"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            off_host.append(url)
            route.abort()  # type: ignore[attr-defined]

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page()
            tab.route("**/*", only_this_host)
            tab.goto(base_url + page_path, timeout=TIMEOUT_MS)
            expected = _operations(base_url)
            # A locator, not wait_for_function: the pages' CSP refuses the eval a string predicate needs.
            tab.locator(operation_selector).nth(expected - 1).wait_for(state="attached", timeout=TIMEOUT_MS)
            assert tab.locator(operation_selector).count() == expected
        finally:
            browser.close()
    assert off_host == []
