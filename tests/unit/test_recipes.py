"""recipes/: every spec validates, each pair differs only in the mixing, and every recipe trains (2 steps)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from cli.recipes import RECIPES, RECIPES_DIR, load_pair, render_report, run_spec, verdict
from core import catalog
from core.spec import validate_spec

NAMES = sorted(RECIPES)
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two-step runs of tiny models are fastest on one thread (the machine may be shared); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_recipe_file_belongs_to_a_pair_and_validates():
    files = {p.name for p in RECIPES_DIR.glob("*.json")}
    expected = {p.name for r in RECIPES.values() for p in r.files}
    assert files == expected
    for name in NAMES:
        method, baseline = load_pair(name)
        assert method["name"] == name and baseline["name"] == f"{name}-baseline"
        for spec in (method, baseline):
            parsed = validate_spec(spec)
            assert RECIPES[name].metric in parsed.eval.metrics, spec["name"]
            for metric in RECIPES[name].secondary:
                assert metric in parsed.eval.metrics, (spec["name"], metric)
        assert RECIPES[name].better in ("higher", "lower")
        assert method["mixup"]["method"] in catalog.MIXUPS


def _without(spec: dict, *keys: str) -> dict:
    out = copy.deepcopy(spec)
    for key in ("name", *keys):
        out.pop(key, None)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_method_and_baseline_differ_only_in_the_mixing(name):
    method, baseline = load_pair(name)
    kind = RECIPES[name].baseline_kind
    if kind == "no_mixup":
        assert "mixup" not in baseline
        assert _without(method, "mixup") == _without(baseline)
    elif kind in ("weight_0", "eta_0"):
        assert _without(method, "mixup") == _without(baseline, "mixup")
        m, b = copy.deepcopy(method["mixup"]), copy.deepcopy(baseline["mixup"])
        if kind == "weight_0":
            assert m["weight"] > 0 and b["weight"] == 0
            m["weight"] = b["weight"]
        else:
            assert m["params"]["eta"] > 0 and b["params"]["eta"] == 0
            m["params"]["eta"] = b["params"]["eta"]
        assert m == b
    elif kind == "moco":  # MoCHi against MoCo: the same queue and momentum, no synthetic negatives
        assert _without(method, "mixup") == _without(baseline, "mixup")
        m, b = method["mixup"], baseline["mixup"]
        assert (m["method"], b["method"]) == ("mochi", "moco")
        assert {k: v for k, v in m.items() if k not in ("method", "params")} == \
            {k: v for k, v in b.items() if k not in ("method", "params")}
        assert {k: m["params"][k] for k in b["params"]} == b["params"]
    else:  # SupReMix: no un-mixed SupCon on regression targets, so the baseline's objective is NT-Xent
        assert kind == "objective" and name == "supremix"
        assert "mixup" not in baseline
        assert _without(method, "mixup", "objective") == _without(baseline, "objective")
        assert baseline["objective"]["views"] == method["objective"]["views"] == 2
        assert baseline["objective"]["params"]["temperature"] == method["mixup"]["params"]["temperature"]


@pytest.mark.parametrize("side", ["method", "baseline"])
@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_trains_two_steps_end_to_end(name, side):
    spec = load_pair(name)[side == "baseline"]
    result = run_spec(spec, smoke=True)
    assert result["steps"] == 2
    recipe = RECIPES[name]
    for metric in (recipe.metric, *recipe.secondary):
        assert math.isfinite(result["metrics"][metric]), (spec["name"], metric, result["metrics"])
    assert result["cpu_s"] > 0


def test_list_names_every_recipe_with_its_metric_and_files():
    res = runner.invoke(app, ["recipes", "list", "--json"])
    assert res.exit_code == 0, res.output
    listed = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(listed) == set(RECIPES)
    assert listed["metrix"]["metric"] == "precision_at_1" and listed["c_mixup"]["better"] == "lower"
    assert listed["rankmixup"]["files"] == ["recipes/rankmixup.json", "recipes/rankmixup-baseline.json"]
    res = runner.invoke(app, ["recipes", "list"])
    assert res.exit_code == 0 and "mixed_barlow_twins" in res.stdout


def test_run_writes_the_result_and_report_renders_it(tmp_path):
    out = tmp_path / "results"
    torch.set_num_threads(2)
    res = runner.invoke(app, ["recipes", "run", "c_mixup", "--seeds", "2", "--smoke", "--threads", "1", "--out", str(out)])
    assert torch.get_num_threads() == 1  # --threads is honoured (the module fixture restores the count after)
    assert res.exit_code == 0, res.output
    result = json.loads((out / "c_mixup.json").read_text())
    assert result["seeds"] == [0, 1] and result["smoke"] is True
    assert [r["seed"] for r in result["runs"]["method"]] == [0, 1] == [r["seed"] for r in result["runs"]["baseline"]]
    assert result["summary"]["verdict"]["n"] == 2 and result["cpu_s"] > 0
    assert "rmse" in result["summary"]["method"] and "± " in res.stdout

    # A smoke result is no result: the report marks it 'not yet run' with the command to run it.
    md = tmp_path / "RESULTS.md"
    res = runner.invoke(app, ["recipes", "report", "--results", str(out), "--out", str(md)])
    assert res.exit_code == 0, res.output
    text = md.read_text()
    assert "| c_mixup | rmse (lower) | not yet run" in text and "`embedmix recipes run c_mixup --seeds 3`" in text

    result["smoke"] = False
    text = render_report({"c_mixup": result})
    row = next(line for line in text.splitlines() if line.startswith("| c_mixup |"))
    assert "±" in row and "/2 |" in row
    assert "| metrix | precision_at_1 (higher) | not yet run" in text


def test_unknown_recipe_is_refused():
    res = runner.invoke(app, ["recipes", "run", "nope", "--smoke"])
    assert res.exit_code == 2


def test_verdict_is_paired_and_follows_the_better_direction():
    assert verdict([0.8, 0.7, 0.9], [0.7, 0.6, 0.8], "higher")["verdict"] == "reproduced"
    assert verdict([0.8, 0.5, 0.9], [0.7, 0.6, 0.8], "higher")["verdict"] == "same direction, within noise"
    assert verdict([0.6, 0.5, 0.7], [0.7, 0.6, 0.8], "higher")["verdict"] == "not reproduced"
    lower = verdict([50.0, 52.0, 49.0], [55.0, 53.0, 50.0], "lower")
    assert lower["verdict"] == "reproduced" and lower["wins"] == 3 and lower["improvement"] == pytest.approx(7 / 3)
