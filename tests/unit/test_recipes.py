"""recipes/: every spec validates, each pair differs only as its baseline says, every recipe trains (2 steps),
the statistics and verdicts follow the paired t interval, a pretraining stage hands its weights on, and
`run-all` skips what is already complete."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from embedmix.cli import sweep_recipe, temperature
from embedmix.cli.main import app
from embedmix.cli.recipes import (RECIPES, RECIPES_DIR, _train, is_complete, load_pair, load_pretrain, paired_t_interval,
                         read_results, render_report, run_seed, run_spec, spec_hash, summarise, verdict,
                         weights_fingerprint)
from embedmix.core import catalog
from embedmix.core.evaluate import SHOT_MAE
from embedmix.core.mixup.classification import confidence_gap
from embedmix.core.spec import validate_spec

NAMES = sorted(RECIPES)
runner = CliRunner()
T_975_2 = 4.302652729749464  # the 0.975 quantile of Student's t with 2 degrees of freedom (tables: 4.303)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two-step runs of tiny models are fastest on one thread (the machine may be shared); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_recipe_file_belongs_to_a_recipe_and_validates():
    files = {p.name for p in RECIPES_DIR.glob("*.json")}
    expected = ({p.name for r in RECIPES.values() for p in r.spec_files} | {temperature.SPEC_FILE.name}
                | {sweep_recipe.sweep_file(n).name for n in sweep_recipe.sweep_names()})
    assert files == expected
    for name in NAMES:
        recipe = RECIPES[name]
        method, baseline = load_pair(name)
        assert method["name"] == name and baseline["name"] == f"{name}-baseline"
        for spec in (method, baseline):
            parsed = validate_spec(spec)
            for metric in (recipe.metric, *recipe.secondary):
                assert metric in parsed.eval.metrics, (spec["name"], metric)
            if recipe.precondition is not None:
                assert recipe.precondition.metric in parsed.eval.metrics, spec["name"]
        assert recipe.better in ("higher", "lower") and recipe.seeds >= 5
        assert recipe.protocol and recipe.hparams
        if "mixup" in method:
            assert method["mixup"]["method"] in catalog.MIXUPS
        else:  # a loss method (ConR, CACR, iSogCLR, AMCL): the recipe is about its objective
            assert method["objective"]["loss"] in catalog.LOSSES and "mixup" not in baseline
        pretrain = load_pretrain(name)
        if pretrain is not None:  # the same data and architecture, so its encoder fits the fine-tuning runs
            validate_spec(pretrain)
            assert pretrain["dataset"] == method["dataset"] and pretrain["model"] == method["model"]


def _without(spec: dict, *keys: str) -> dict:
    out = copy.deepcopy(spec)
    for key in ("name", *keys):
        out.pop(key, None)
    return out


def _beta_0(m: dict, b: dict) -> None:
    """ConR against the same two-view MSE head: only the regulariser's weight differs, and it is 0."""
    assert m["loss"] == b["loss"] == "conr" and m["params"]["beta"] > 0 and b["params"]["beta"] == 0
    assert {**m["params"], "beta": 0} == b["params"] and m["views"] == b["views"] == 2


def _other_loss(m: dict, b: dict) -> None:
    """CACR / iSogCLR against SimCLR: NT-Xent at one fixed temperature over the same two views."""
    assert m["loss"] != "ntxent" and b["loss"] == "ntxent" and set(b["params"]) == {"temperature"}
    assert m["views"] == b["views"] == 2


def _one_head_fixed(m: dict, b: dict) -> None:
    """AMCL against SimCLR on the same projection: one head, a fixed temperature (NT-Xent, tested in test_amcl.py)."""
    assert m["loss"] == b["loss"] == "amcl" and m["params"]["heads"] > 1 and m["params"]["adaptive"] is True
    assert b["params"]["heads"] == 1 and b["params"]["adaptive"] is False and "temperature" in b["params"]
    for key in ("head_dim", "head_hidden"):
        assert m["params"][key] == b["params"][key]


def _loss_weight_0(m: dict, b: dict) -> None:
    """M3CoL against its heads alone: the same parameters but the contrastive term's weight, which is 0."""
    assert m["loss"] == b["loss"] == "m3col" and m["params"]["weight"] > 0 and b["params"]["weight"] == 0
    assert {**m["params"], "weight": 0} == b["params"]


LOSS_KINDS = {"beta_0": _beta_0, "loss": _other_loss, "one_head_fixed": _one_head_fixed, "loss_weight_0": _loss_weight_0}


@pytest.mark.parametrize("name", NAMES)
def test_method_and_baseline_differ_only_as_the_baseline_says(name):
    method, baseline = load_pair(name)
    kind = RECIPES[name].baseline_kind
    if kind == "no_mixup":
        assert "mixup" not in baseline
        assert _without(method, "mixup") == _without(baseline)
        return
    if kind in LOSS_KINDS:
        assert _without(method, "objective") == _without(baseline, "objective")
        LOSS_KINDS[kind](method["objective"], baseline["objective"])
        return
    assert _without(method, "mixup") == _without(baseline, "mixup")
    m, b = copy.deepcopy(method["mixup"]), copy.deepcopy(baseline["mixup"])
    if kind == "weight_0":
        assert m["weight"] > 0 and b["weight"] == 0
        m["weight"] = b["weight"]
        assert m == b
    elif kind == "eta_0":
        assert m["params"]["eta"] > 0 and b["params"]["eta"] == 0
        m["params"]["eta"] = b["params"]["eta"]
        assert m == b
    elif kind == "no_until":  # early-stopped mixup against the same mixing throughout
        assert "until" in m and "until" not in b
        m.pop("until")
        assert m == b
    elif kind == "moco":  # MoCHi against MoCo: the same queue and momentum, no synthetic negatives
        assert (m["method"], b["method"]) == ("mochi", "moco")
        assert {k: v for k, v in m.items() if k not in ("method", "params")} == \
            {k: v for k, v in b.items() if k not in ("method", "params")}
        assert {k: m["params"][k] for k in b["params"]} == b["params"]
    else:  # SupReMix against the same supervised contrastive regression without its mixed pairs
        assert kind == "no_mixed_pairs" and m["method"] == b["method"] == "supremix"
        assert m["params"].pop("mixed_pairs") is True and b["params"].pop("mixed_pairs") is False
        m["params"].pop("pos_pairs", None)  # which mixed pairs: meaningless (refused) without them
        assert m == b


@pytest.mark.parametrize("name", ["metrix", "embedding"])
def test_metric_learning_recipes_are_class_disjoint_with_metrix_own_ms_settings(name):
    for spec in load_pair(name):
        split = spec["dataset"]["split"]
        assert split["kind"] == "classes" and split["holdout_classes"] == [6, 7, 8, 9]
        assert spec["objective"] == {"loss": "multi_similarity",
                                     "params": {"alpha": 17.97, "beta": 75.66, "base": 0.77, "miner_epsilon": 0.39}}
    assert load_pair("metrix")[0]["mixup"]["params"]["mix"] == "alternate"


def _sides(name: str) -> list[str]:
    return ["method", "baseline"] + (["pretrain"] if RECIPES[name].pretrain else [])


@pytest.mark.parametrize("name,side", [(n, s) for n in NAMES for s in _sides(n)])
def test_every_recipe_trains_two_steps_end_to_end(name, side):
    spec = load_pretrain(name) if side == "pretrain" else load_pair(name)[side == "baseline"]
    result = run_spec(spec, smoke=True)
    assert result["steps"] == 2
    recipe = RECIPES[name]
    assert math.isfinite(result["metrics"][recipe.metric]), (spec["name"], result["metrics"])
    for metric in recipe.secondary:  # a shot region's MAE is absent when the test split has no target there
        assert metric in SHOT_MAE or math.isfinite(result["metrics"][metric]), (spec["name"], metric, result["metrics"])
        assert metric not in result["metrics"] or math.isfinite(result["metrics"][metric])
    assert result["cpu_s"] > 0


def test_the_pretraining_stage_hands_its_encoder_to_both_runs():
    unit = run_seed("mixoe", 0, smoke=True)
    given = unit["pretrain"]["weights"]
    assert unit["method"]["init_weights"] == unit["baseline"]["init_weights"] == given
    assert set(unit["resolved"]) == {"pretrain", "method", "baseline"}
    assert unit["resolved"]["method"]["mixup"]["weight"] == 5.0 and unit["resolved"]["baseline"]["mixup"]["weight"] == 0


def test_a_run_given_weights_starts_from_exactly_them():
    """With a vanishing learning rate the trained encoder's parameters are the starting weights, not a fresh draw."""
    _, pre = _train(copy.deepcopy(load_pretrain("mixoe")), smoke=True, device="cpu")
    weights = {k: v.detach().clone() for k, v in pre.encoder.state_dict().items()}
    spec = copy.deepcopy(load_pair("mixoe")[1])
    spec["train"]["lr"] = 1e-12
    record, result = _train(spec, smoke=True, device="cpu", init_weights=weights)
    assert record["init_weights"] == weights_fingerprint(weights)
    _, fresh = _train(spec, smoke=True, device="cpu")
    for key, param in result.encoder.named_parameters():
        torch.testing.assert_close(param.detach(), weights[key], rtol=0, atol=1e-9)
    assert any(not torch.allclose(p.detach(), weights[k]) for k, p in fresh.encoder.named_parameters())


def test_paired_t_interval_by_hand():
    lo, hi = paired_t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3: 2 -+ t(0.975, 2) / sqrt(3)
    half = T_975_2 / math.sqrt(3)
    assert lo == pytest.approx(2 - half, abs=1e-9) and hi == pytest.approx(2 + half, abs=1e-9)
    assert all(math.isnan(v) for v in paired_t_interval([1.0]))


def test_verdict_follows_the_interval_and_the_better_direction():
    up = verdict([0.8, 0.7, 0.9, 0.75], [0.7, 0.6, 0.8, 0.66], "higher")  # diffs .1 .1 .1 .09
    assert up["verdict"] == "reproduced" and up["ci"][0] > 0 and up["n"] == 4
    assert up["improvement"] == pytest.approx(0.0975) and up["std"] == pytest.approx(0.005)
    noisy = verdict([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], "higher")  # the hand-computed interval above contains 0
    assert noisy["verdict"] == "inconclusive" and noisy["ci"][0] == pytest.approx(2 - T_975_2 / math.sqrt(3))
    down = verdict([0.6, 0.5, 0.7], [0.7, 0.6, 0.81], "higher")
    assert down["verdict"] == "contradicted" and down["ci"][1] < 0
    lower = verdict([50.0, 52.0, 49.0], [55.0, 56.0, 53.5], "lower")  # lower is better: diffs 5, 4, 4.5
    assert lower["verdict"] == "reproduced" and lower["improvement"] == pytest.approx(4.5)
    lo, hi = lower["ci"]
    assert (lo + hi) / 2 == pytest.approx(4.5) and (hi - lo) / 2 == pytest.approx(T_975_2 * 0.5 / math.sqrt(3))
    assert verdict([0.9], [0.1], "higher")["verdict"] == "inconclusive"  # one seed: no interval
    assert verdict([0.9, float("nan"), 0.8], [0.1, 0.2, 0.3], "higher")["n"] == 2  # a missing value drops its pair
    assert verdict([], [], "higher")["verdict"] == "not yet run"


def test_list_names_every_recipe_with_its_metric_seeds_and_files():
    res = runner.invoke(app, ["recipes", "list", "--json"])
    assert res.exit_code == 0, res.output
    listed = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(listed) == set(RECIPES)
    assert listed["metrix"]["metric"] == "precision_at_1" and listed["c_mixup"]["better"] == "lower"
    assert listed["rankmixup"]["files"] == ["recipes/rankmixup.json", "recipes/rankmixup-baseline.json"]
    assert listed["mixoe"]["files"][-1] == "recipes/mixoe-pretrain.json"
    assert listed["c_mixup"]["seeds"] == RECIPES["c_mixup"].seeds
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
    assert result["resolved_specs"]["method"]["mixup"]["params"]["partner_pool"] == "train_set"
    assert "rmse" in result["summary"]["method"] and "95% CI" in res.stdout

    # A smoke result is no result: the report marks it 'not yet run' with the command to run it.
    md = tmp_path / "RESULTS.md"
    res = runner.invoke(app, ["recipes", "report", "--results", str(out), "--out", str(md)])
    assert res.exit_code == 0, res.output
    text = md.read_text()
    assert "| c_mixup |" in text and "not yet run | not yet run" in text and "`embedmix recipes run c_mixup`" in text

    result["smoke"] = False
    text = render_report({"c_mixup": result})
    row = next(line for line in text.splitlines() if line.startswith("| c_mixup |"))
    v = result["summary"]["verdict"]
    assert RECIPES["c_mixup"].protocol in row and RECIPES["c_mixup"].hparams in row
    assert f"(n 2) | [{v['ci'][0]:+.4f}, {v['ci'][1]:+.4f}] | {v['verdict']} |" in row
    if v["verdict"] != "reproduced":  # a row not reproduced says what the evidence says about why
        assert "- **c_mixup** (" in text and "half-width" in text


def test_report_shows_a_precondition_and_marks_it_when_not_met():
    runs = {side: [{"seed": s, "metrics": {"ece": e, "accuracy": 0.6, "confidence_gap": g}, "steps": 1, "cpu_s": 1.0,
                    "wall_s": 1.0} for s, (e, g) in enumerate(vals)]
            for side, vals in (("method", [(0.05, 0.1), (0.06, 0.1), (0.05, 0.1)]),
                               ("baseline", [(0.04, -0.02), (0.05, -0.03), (0.045, -0.01)]))}
    result = {"recipe": "rankmixup", "smoke": False, "runs": runs, "summary": summarise(RECIPES["rankmixup"], runs),
              "cpu_s": 6.0, "wall_s": 6.0, "date": "2026-01-01T00:00:00+00:00", "command": "x", "device": "cpu",
              "machine": {"platform": "p", "cpu_count": 2, "torch": "t", "torch_threads": 1}}
    assert result["summary"]["precondition"] == {"text": "baseline confidence_gap > 0", "met": False}
    text = render_report({"rankmixup": result})
    row = next(line for line in text.splitlines() if line.startswith("| rankmixup |"))
    assert "precondition not met: baseline confidence_gap > 0" in row
    assert "| rankmixup | baseline confidence_gap > 0:" in text and "-0.0200 ± 0.0100 | no |" in text
    assert "NOT met, so this pair cannot test the claim" in text


def test_run_all_skips_what_is_complete_and_force_reruns(tmp_path):
    out, md = tmp_path / "results", tmp_path / "R.md"

    def run_all(*extra: str, jobs: int = 1, only: tuple[str, ...] = ("c_mixup", "supremix")):
        args = ["recipes", "run-all", "--smoke", "--jobs", str(jobs), "--out", str(out), "--report", str(md), *extra]
        res = runner.invoke(app, args + [a for n in only for a in ("--only", n)])
        assert res.exit_code == 0, res.output
        return res.output

    run_all(jobs=2)  # two worker processes
    path = out / "c_mixup.json"
    first = json.loads(path.read_text())
    assert first["spec_hash"] == spec_hash("c_mixup", [0, 1], True) and is_complete(path, "c_mixup", [0, 1], True)
    assert not is_complete(path, "c_mixup", [0, 1, 2], True) and not is_complete(path, "c_mixup", [0, 1], False)
    assert set(json.loads((out / "run-all.json").read_text())["recipes_run"]) == {"c_mixup", "supremix"}

    again = run_all()
    assert "c_mixup: complete" in again and "supremix: complete" in again and "0 recipe(s) run" in again
    assert json.loads(path.read_text())["date"] == first["date"]

    path.write_text(json.dumps(dict(first, spec_hash="0" * 16)))  # as if the recipe's spec had changed since
    assert not is_complete(path, "c_mixup", [0, 1], True)
    assert "1 recipe(s) run" in run_all() and is_complete(path, "c_mixup", [0, 1], True)
    assert "2 recipe(s) run" in run_all("--force")
    assert not md.exists()  # a smoke run writes no report


def test_unknown_recipe_is_refused():
    res = runner.invoke(app, ["recipes", "run", "nope", "--smoke"])
    assert res.exit_code == 2


def test_report_leaves_out_results_of_other_specs(tmp_path):
    res = runner.invoke(app, ["recipes", "run", "c_mixup", "--smoke", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    path = tmp_path / "c_mixup.json"
    assert set(read_results(tmp_path)) == {"c_mixup"}
    path.write_text(json.dumps(dict(json.loads(path.read_text()), spec_hash="0" * 16)))
    assert read_results(tmp_path) == {}


def test_confidence_gap_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1])  # predictions 0, 0, 1: accuracy 2/3; mean confidence (0.9 + 0.6 + 0.7) / 3
    assert confidence_gap(probs, labels) == pytest.approx(2.2 / 3 - 2 / 3)


def test_the_temperature_study_runs_every_point_plots_it_and_reports_it(tmp_path):
    """A smoke run of the uniformity-tolerance study: one run per (temperature, seed), an SVG, a RESULTS.md table."""
    result = temperature.run_study(tmp_path, seeds=1, jobs=1, smoke=True, command="test")
    assert [(r["temperature"], r["seed"]) for r in result["runs"]] == [(t, 0) for t in temperature.TEMPERATURES]
    assert temperature.read_study(tmp_path, smoke=True)["spec_hash"] == result["spec_hash"]
    assert temperature.read_study(tmp_path) is None  # a smoke result never stands for the real study
    plot = (tmp_path / temperature.PLOT_FILE).read_text()
    assert plot.startswith("<svg") and all(m in plot for m in temperature.METRICS)
    lines = temperature.section(result)
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [float(line.split("|")[1]) for line in rows] == list(temperature.TEMPERATURES)
