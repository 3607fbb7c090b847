"""recipes/sweep-NAME.json: a sweep body the service accepts, searching recipe NAME's spec on a validation split.

The body's spec is the recipe's own spec with only `dataset.split.validation_fraction`
added (so the sweep tunes the recipe that RESULTS.md reports, and judges on validation,
never the test split); a smoke run searches, tests the best on the test split next to
the baseline, and renders the RESULTS.md section.
"""

from __future__ import annotations

import copy

import pytest
import torch

from embedmix.api.schemas import SweepIn
from embedmix.api.sweeps import evaluated_metrics
from embedmix.cli import sweep_recipe
from embedmix.cli.recipes import RECIPES, STUDIES, load_pair
from embedmix.core.spec import selection_metric, validate_spec
from embedmix.store.sweeps import path_exists

NAMES = sweep_recipe.sweep_names()


def test_there_is_a_sweep_recipe_and_each_is_a_registered_study() -> None:
    assert NAMES and all(f"sweep-{n}" in STUDIES for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_sweep_body_validates_and_tunes_the_recipe_on_validation(name: str) -> None:
    body = sweep_recipe.load_sweep(name)
    parsed = SweepIn.model_validate(body)
    spec = validate_spec(parsed.spec)
    assert name in RECIPES and parsed.metric == RECIPES[name].metric in evaluated_metrics(spec)
    method, _ = load_pair(name)
    expected = copy.deepcopy(method)
    expected["dataset"].setdefault("split", {})["validation_fraction"] = spec.dataset.split.validation_fraction
    assert spec.dataset.split.validation_fraction is not None and body["spec"] == expected
    resolved = spec.model_dump(mode="json")
    assert selection_metric(resolved, parsed.metric) == f"val/{parsed.metric}"
    for path, param in parsed.space.items():
        assert path_exists(resolved, path), path
        assert param.model_dump(exclude_none=True) == body["space"][path]  # complete as written: run here as is
    assert parsed.trials <= 8  # cheap enough for two CPU cores


def test_a_smoke_run_searches_tests_the_best_and_reports_it(tmp_path) -> None:
    threads = torch.get_num_threads()
    try:
        result = sweep_recipe.run_sweep(NAMES[0], tmp_path, seeds=2, smoke=True, command="test", threads=1)
    finally:
        torch.set_num_threads(threads)
    body = sweep_recipe.load_sweep(NAMES[0])
    found = result["search"]
    assert len(found["trials"]) == body["trials"] and found["metric"] == f"val/{body['metric']}"
    assert found["best"]["value"] == max(t["value"] for t in found["trials"])
    assert {side: len(runs) for side, runs in result["runs"].items()} == {"tuned": 2, "recipe": 2, "baseline": 2}
    tuned = result["runs"]["tuned"][0]["metrics"]
    assert not any(k.startswith("val/") for k in tuned)  # the final runs train on the whole training split
    assert sweep_recipe.reader(NAMES[0])(tmp_path, True) == result
    section = "\n".join(sweep_recipe.section_for(NAMES[0])(result))
    assert "Δ tuned − baseline" in section and "(best)" in section
