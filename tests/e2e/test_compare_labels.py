"""The compare page tells runs of the same name apart (it labelled both identically), checked in Chromium
on the page's own module: the labels it puts in the table header and the chart legends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedmix.api import create_app
from embedmix.service.settings import Settings
from tests.conftest import served_in_thread
from tests.e2e.test_dashboard import CHROMIUM, CHROMIUM_ARGS

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install '.[dev]'")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("compare")
    settings = Settings(database_url=f"sqlite:///{directory / 'db.sqlite'}", work_dir=str(directory))
    with served_in_thread(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


def test_runs_sharing_a_name_get_distinct_labels(base_url: str) -> None:
    jobs = [{"name": "sweep", "id": "job_aaaaaaaaaaaaaa111111"}, {"name": "sweep", "id": "job_aaaaaaaaaaaaaa222222"},
            {"name": "baseline", "id": "job_aaaaaaaaaaaaaa333333"}]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page()
            tab.goto(f"{base_url}/ui/")
            labels = tab.evaluate("(jobs) => import('/ui/compare.js').then((m) => m.runLabels(jobs))", jobs)
        finally:
            browser.close()
    assert labels == ["sweep · 111111", "sweep · 222222", "baseline"]
