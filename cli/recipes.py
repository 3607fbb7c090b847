"""`embedmix recipes`: each mixing method's recipe against its baseline, over seeds, and RESULTS.md.

`recipes/NAME.json` is a method's spec and `recipes/NAME-baseline.json` the same run
without the mixing (see RECIPES: where a spec without mixing cannot compute the
paper's metric, the baseline is the method with its weight or eta at 0). `run`
trains both for seeds 0..n-1 by overriding `train.seed` (which also seeds the
train/test split), prints mean +- standard deviation of the paper's metric, and
writes OUT/NAME.json; `report` turns those files into RESULTS.md.

RECIPES below is the one place that says, per method, which metric the paper
reports and which direction counts as better.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = ROOT / "recipes"
RESULTS_DIR = Path("results")
RESULTS_MD = Path("RESULTS.md")
SMOKE_STEPS = 2
SMOKE_SIZE = 200  # datasets with a size parameter (mnist1d) shrink to this in a smoke run

recipes_app = typer.Typer(help="Run each mixing method's recipe against its baseline over seeds; write RESULTS.md.",
                          no_args_is_help=True)
console = Console(stderr=True)


@dataclass(frozen=True)
class Recipe:
    """One method's pair of specs and how to read its result."""

    name: str
    paper: str
    metric: str  # the paper's metric, as the engine names it
    better: str  # "higher" or "lower"
    claim: str  # the paper's direction, in words
    baseline: str  # what recipes/NAME-baseline.json is
    baseline_kind: str  # how the two specs differ: "no_mixup", "weight_0", "eta_0", "moco", "objective"
    secondary: tuple[str, ...] = ()
    seed_paper: bool = True  # one of the seed papers (the others are the generic mixups the engine also has)

    @property
    def files(self) -> tuple[Path, Path]:
        return RECIPES_DIR / f"{self.name}.json", RECIPES_DIR / f"{self.name}-baseline.json"


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("metrix", "Venkataramanan et al., It Takes Two to Tango (ICLR 2022)", "precision_at_1", "higher",
           "Metrix raises R@1 of multi-similarity (CUB 67.8 -> 71.4)",
           "multi-similarity without mixing", "no_mixup", ("map_at_r",)),
    Recipe("mochi", "Kalantidis et al., Hard Negative Mixing (NeurIPS 2020)", "knn_accuracy", "higher",
           "synthetic hard negatives raise MoCo v2's accuracy",
           "MoCo v2 (method 'moco', same queue, momentum and temperature) = MoCHi with s = s' = 0", "moco",
           ("linear_probe_accuracy",)),
    Recipe("mixed_barlow_twins", "Bandara et al., Guarding Barlow Twins Against Overfitting with Mixed Samples (2023)",
           "knn_accuracy", "higher", "the mixed-sample regulariser raises Barlow Twins' kNN / linear accuracy",
           "Barlow Twins without the regulariser", "no_mixup", ("linear_probe_accuracy",)),
    Recipe("c_mixup", "Yao et al., C-Mixup (NeurIPS 2022)", "rmse", "lower", "C-Mixup lowers the RMSE of plain (ERM) training",
           "the MSE regressor without mixing", "no_mixup", ("mae",)),
    Recipe("supremix", "Wu et al., Mixup Your Own Pairs (2023)", "mae", "lower",
           "SupReMix pre-training lowers the linear probe's MAE relative to contrastive pre-training without its pairs",
           "two-view NT-Xent (SimCLR) pre-training with the same views, temperature 0.3 and probe: the engine has no "
           "un-mixed SupCon on regression targets, so the objective differs too", "objective", ("rmse",)),
    Recipe("decoupled_mixup", "Liu et al., Harnessing Hard Mixed Samples with Decoupled Regularizer (NeurIPS 2023)",
           "accuracy", "higher", "the decoupled regulariser raises the accuracy of mixup training",
           "the same input mixup with eta = 0 (plain mixup cross-entropy, the paper's comparison)", "eta_0", ("ece",)),
    Recipe("rankmixup", "Noh et al., RankMixup (ICCV 2023)", "ece", "lower", "RankMixup (MRL) lowers the expected calibration error",
           "the same spec with weight 0: no mixing is drawn or computed, plain cross-entropy", "weight_0", ("accuracy",)),
    Recipe("mixoe", "Zhang et al., Mixture Outlier Exposure (WACV 2023)", "auroc", "higher",
           "MixOE raises the OOD AUROC of max-softmax scores",
           "the same spec with weight 0: no mixing is drawn or computed, plain cross-entropy", "weight_0",
           ("tnr_at_95_tpr", "accuracy")),
    Recipe("input", "Zhang et al., mixup (ICLR 2018)", "knn_accuracy", "higher", "mixup raises accuracy",
           "SupCon without mixing", "no_mixup", ("precision_at_1",), seed_paper=False),
    Recipe("manifold", "Verma et al., Manifold Mixup (ICML 2019)", "knn_accuracy", "higher", "manifold mixup raises accuracy",
           "cross-entropy without mixing", "no_mixup", ("precision_at_1",), seed_paper=False),
    Recipe("embedding", "embedding-level mixup (a baseline in the Metrix paper)", "precision_at_1", "higher",
           "mixing embeddings raises R@1", "ProxyAnchor without mixing", "no_mixup", ("map_at_r",), seed_paper=False),
    Recipe("cutmix", "Yun et al., CutMix (ICCV 2019)", "knn_accuracy", "higher", "CutMix raises accuracy",
           "cross-entropy without mixing", "no_mixup", ("precision_at_1",), seed_paper=False),
    Recipe("moco", "He et al., MoCo (CVPR 2020); Chen et al., MoCo v2 (2020)", "knn_accuracy", "higher",
           "a momentum queue of negatives beats in-batch negatives at small batch sizes",
           "in-batch NT-Xent (SimCLR) with the same views and temperature", "no_mixup", ("linear_probe_accuracy",),
           seed_paper=False),
]}


# --------------------------------------------------------------------------- specs
def load_pair(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw JSON of NAME.json and NAME-baseline.json."""
    method, baseline = RECIPES[name].files
    return json.loads(method.read_text()), json.loads(baseline.read_text())


def with_seed(spec: dict[str, Any], seed: int) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    out.setdefault("train", {})["seed"] = seed
    return out


def smoke_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The recipe shrunk for a smoke run: a small dataset where it has a size, one epoch, eval at the end.

    The batch size that gives SMOKE_STEPS steps is set by `run_spec` once the split is known.
    """
    from core import catalog

    out = copy.deepcopy(spec)
    ds = out["dataset"]
    entry = catalog.DATASETS.get(ds.get("name") or "")
    if entry is not None and any(p.name == "size" for p in entry.params):
        ds["size"] = SMOKE_SIZE
    out.setdefault("train", {})["epochs"] = 1
    out.setdefault("eval", {})["every_epochs"] = 0
    return out


def run_spec(spec: dict[str, Any], *, smoke: bool = False, device: str | None = "cpu") -> dict[str, Any]:
    """Validate, load the data, train and evaluate one spec; the metrics with CPU and wall time of the whole run."""
    import torch

    from core.data import load_dataset
    from core.spec import validate_spec
    from core.train import train

    cpu0, wall0 = time.process_time(), time.perf_counter()
    if smoke:
        spec = smoke_spec(spec)
    parsed = validate_spec(spec)
    data = load_dataset(parsed)
    if smoke:
        spec = copy.deepcopy(spec)
        spec["train"]["batch_size"] = max(2, len(data.x_train) // SMOKE_STEPS)
        parsed = validate_spec(spec)  # the split depends on the seed and fraction, not the batch: data stays valid
    result = train(parsed, data, device=torch.device(device) if device else None)
    return {"seed": parsed.train.seed, "metrics": result.metrics, "steps": result.step,
            "cpu_s": round(time.process_time() - cpu0, 3), "wall_s": round(time.perf_counter() - wall0, 3)}


# --------------------------------------------------------------------------- statistics
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def verdict(method: list[float], baseline: list[float], better: str) -> dict[str, Any]:
    """Paired comparison per seed (the same seed gives both runs the same split and initialisation).

    Improvement d_i = method_i - baseline_i, sign-flipped when lower is better.
    "reproduced": better on average and on every seed; "same direction, within noise":
    better on average but not on every seed; "not reproduced": no better on average.
    """
    sign = 1.0 if better == "higher" else -1.0
    diffs = [sign * (m - b) for m, b in zip(method, baseline)]
    n = len(diffs)
    wins = sum(d > 0 for d in diffs)
    mean_d = statistics.fmean(diffs) if diffs else float("nan")
    if n == 0:
        word = "not yet run"
    elif mean_d > 0 and wins == n:
        word = "reproduced" if n >= 3 else f"reproduced on {n} seed(s) only"
    elif mean_d > 0:
        word = "same direction, within noise"
    elif mean_d == 0:
        word = "not reproduced (a tie on average)"
    else:
        word = "not reproduced"
    return {"improvement": mean_d, "wins": wins, "n": n, "verdict": word}


def summarise(recipe: Recipe, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in ("method", "baseline"):
        metrics = sorted({k for r in runs[side] for k in r["metrics"]})
        out[side] = {k: dict(zip(("mean", "std"), mean_std([r["metrics"].get(k, float("nan")) for r in runs[side]])))
                     for k in metrics}
    values = {side: [r["metrics"].get(recipe.metric, float("nan")) for r in runs[side]] for side in runs}
    out["verdict"] = verdict(values["method"], values["baseline"], recipe.better)
    return out


# --------------------------------------------------------------------------- running
def _machine(threads: int) -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": threads}


def _set_threads(threads: int | None) -> int:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def run_recipe(name: str, seeds: int, *, out: Path | None, smoke: bool = False, device: str | None = "cpu",
               command: str | None = None, threads: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train NAME and NAME-baseline for seeds 0..seeds-1; return (and write to OUT/NAME.json) the result."""
    recipe = RECIPES[name]
    used_threads = _set_threads(threads)
    method_spec, baseline_spec = load_pair(name)
    runs: dict[str, list[dict[str, Any]]] = {"method": [], "baseline": []}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for seed in range(seeds):
        for side, spec in (("method", method_spec), ("baseline", baseline_spec)):
            r = run_spec(with_seed(spec, seed), smoke=smoke, device=device)
            runs[side].append(r)
            if not quiet:
                value = r["metrics"].get(recipe.metric, float("nan"))
                console.print(f"{name} {side:8s} seed {seed}: {recipe.metric} {value:.4f}  "
                              f"cpu {r['cpu_s']:.1f}s wall {r['wall_s']:.1f}s")
    result = {
        "recipe": name, "paper": recipe.paper, "metric": recipe.metric, "better": recipe.better,
        "seeds": list(range(seeds)), "smoke": smoke, "device": device or "spec",
        "command": command or f"embedmix recipes run {name} --seeds {seeds}" + (f" --threads {threads}" if threads else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": _machine(used_threads),
        "files": {"method": f"recipes/{name}.json", "baseline": f"recipes/{name}-baseline.json"},
        "runs": runs, "summary": summarise(recipe, runs),
        "cpu_s": round(time.process_time() - cpu0, 2), "wall_s": round(time.perf_counter() - wall0, 2),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _print_result(result: dict[str, Any]) -> None:
    recipe = RECIPES[result["recipe"]]
    s = result["summary"]
    table = Table(title=f"{recipe.name}: {recipe.metric} ({recipe.better} is better), seeds {result['seeds']}")
    for col in ("run", "metric", "mean", "std"):
        table.add_column(col)
    for side in ("method", "baseline"):
        for metric in (recipe.metric, *recipe.secondary):
            ms = s[side].get(metric, {"mean": float("nan"), "std": float("nan")})
            table.add_row(side, metric, _fmt(ms["mean"]), _fmt(ms["std"]))
    Console().print(table)
    v = s["verdict"]
    print(f"{recipe.name}: {recipe.metric} method {_fmt(s['method'].get(recipe.metric, {}).get('mean'))} "
          f"± {_fmt(s['method'].get(recipe.metric, {}).get('std'))}, baseline "
          f"{_fmt(s['baseline'].get(recipe.metric, {}).get('mean'))} ± {_fmt(s['baseline'].get(recipe.metric, {}).get('std'))}; "
          f"better on {v['wins']}/{v['n']} seeds: {v['verdict']}; cpu {result['cpu_s']:.1f}s wall {result['wall_s']:.1f}s")


def _check_name(name: str) -> None:
    if name not in RECIPES:
        console.print(f"[red]error:[/red] unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
        raise typer.Exit(2)


Seeds = typer.Option(3, "--seeds", min=1, max=100, help="seeds 0..n-1 (each seeds the split, the initialisation and the mixing)")
Out = typer.Option(RESULTS_DIR, "--out", help="directory for the JSON result files")
Threads = typer.Option(None, "--threads", min=1, help="torch threads per process (default: torch's, all cores)")
Smoke = typer.Option(False, "--smoke", help=f"a {SMOKE_STEPS}-step version of each run (tests; not a result)")
Device = typer.Option("cpu", "--device", help="cpu (the reported CPU times), cuda, or auto (the spec's)")


def _device(device: str) -> str | None:
    if device not in ("cpu", "cuda", "auto"):
        console.print(f"[red]error:[/red] --device must be cpu, cuda or auto, not {device!r}")
        raise typer.Exit(2)
    return None if device == "auto" else device


@recipes_app.command("list")
def list_recipes(as_json: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """Each method, the paper's metric and which direction is better, and its two spec files."""
    if as_json:
        print(json.dumps([{"name": r.name, "paper": r.paper, "metric": r.metric, "better": r.better,
                           "baseline": r.baseline, "files": [str(p.relative_to(ROOT)) for p in r.files]}
                          for r in RECIPES.values()], indent=2))
        return
    table = Table(title="recipes")
    for col in ("name", "paper", "metric (better)", "baseline", "files"):
        table.add_column(col, overflow="fold")
    for r in RECIPES.values():
        table.add_row(r.name, r.paper, f"{r.metric} ({r.better})", r.baseline,
                      " ".join(str(p.relative_to(ROOT)) for p in r.files))
    Console(width=200).print(table)


@recipes_app.command("run")
def run(name: str = typer.Argument(..., help="recipe name (see `embedmix recipes list`)"), seeds: int = Seeds,
        out: Path = Out, threads: Optional[int] = Threads, smoke: bool = Smoke, device: str = Device) -> None:
    """Train NAME.json and NAME-baseline.json for each seed; print mean ± std of the paper's metric; write OUT/NAME.json."""
    _check_name(name)
    command = f"embedmix recipes run {name} --seeds {seeds}" + (f" --threads {threads}" if threads else "") + \
        (" --smoke" if smoke else "")
    result = run_recipe(name, seeds, out=out, smoke=smoke, device=_device(device), command=command, threads=threads)
    _print_result(result)
    print(f"wrote {out / (name + '.json')}")


@recipes_app.command("run-all")
def run_all(seeds: int = Seeds, out: Path = Out, threads: Optional[int] = Threads, smoke: bool = Smoke,
            device: str = Device,
            only: Optional[list[str]] = typer.Option(None, "--only", help="run just these recipes (repeatable)"),
            skip_done: bool = typer.Option(False, "--skip-done", help="skip recipes whose OUT/NAME.json has these seeds")) -> None:
    """Run every recipe pair (or --only some) over the seeds, one after the other."""
    names = list(only) if only else list(RECIPES)
    for name in names:
        _check_name(name)
    command = f"embedmix recipes run-all --seeds {seeds}" + (f" --threads {threads}" if threads else "") + \
        (" --smoke" if smoke else "")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for name in names:
        done = out / f"{name}.json"
        if skip_done and done.is_file():
            old = json.loads(done.read_text())
            if old.get("seeds") == list(range(seeds)) and old.get("smoke") == smoke:
                console.print(f"{name}: done already ({done}), skipped")
                continue
        _print_result(run_recipe(name, seeds, out=out, smoke=smoke, device=_device(device), command=command, threads=threads))
    print(f"all: cpu {time.process_time() - cpu0:.1f}s wall {time.perf_counter() - wall0:.1f}s; results in {out}/")


# --------------------------------------------------------------------------- report
def _cell(summary: dict[str, Any], side: str, metric: str) -> str:
    ms = summary[side].get(metric)
    if not ms or math.isnan(ms["mean"]):
        return "-"
    return f"{ms['mean']:.4f} ± {ms['std']:.4f}"


def _setup(name: str, result: dict[str, Any] | None) -> list[str]:
    """The method spec's data, model, objective, schedule and mixing, as table cells."""
    spec, _ = load_pair(name)
    ds, model, obj, train = spec["dataset"], spec.get("model", {}), spec.get("objective", {}), spec.get("train", {})
    data = ds.get("name") or ds.get("path") or ds.get("id")
    data += f" (size {ds['size']})" if ds.get("size") else ""
    data += f", test {ds.get('split', {}).get('test_fraction', 0.2)}"
    net = f"{model.get('encoder', 'mlp')} width {model.get('width', 'default')}, dim {model.get('embedding_dim', 128)}"
    loss = obj.get("loss", "supcon") + "".join(f" {k}={v}" for k, v in obj.get("params", {}).items())
    loss += f", views {obj['views']}" if obj.get("views") else ""
    steps = result["runs"]["method"][0]["steps"] if result and result["runs"]["method"] else None
    sched = f"{train.get('epochs', 10)} epochs x batch {train.get('batch_size', 128)}, lr {train.get('lr', 1e-3)}"
    sched += f" ({steps} steps)" if steps else ""
    mix = spec["mixup"]
    mixing = mix["method"] + "".join(f" {k}={mix[k]}" for k in ("alpha", "level", "weight") if k in mix)
    mixing += "".join(f" {k}={v}" for k, v in mix.get("params", {}).items())
    return [data, net, loss, sched, mixing]


def render_report(results: dict[str, dict[str, Any]]) -> str:
    """RESULTS.md from the result files (one per recipe; recipes without one are marked 'not yet run')."""
    done = [r for r in results.values() if not r.get("smoke")]
    lines = ["# Results: each mixing method against its baseline", ""]
    lines += ["Written by `embedmix recipes report` from the JSON files that `embedmix recipes run-all --seeds 3` "
              "(or `embedmix recipes run NAME --seeds 3`) writes into `results/`. Do not edit by hand: rerun the "
              "commands.", ""]
    if done:
        dates = sorted(r["date"] for r in done)
        machines = {json.dumps({k: v for k, v in r["machine"].items()}, sort_keys=True) for r in done}
        commands = sorted({r["command"] for r in done})
        cpu = sum(r["cpu_s"] for r in done)
        wall = sum(r["wall_s"] for r in done)
        lines += [f"- Run: {dates[0][:10]}" + (f" to {dates[-1][:10]}" if dates[-1][:10] != dates[0][:10] else "")
                  + f" (UTC), commands: " + ", ".join(f"`{c}`" for c in commands) + ", then `embedmix recipes report`.",
                  "- Machine: " + "; ".join(
                      f"{m['platform']}, {m['cpu_count']} CPU cores, torch {m['torch']}, {m['torch_threads']} torch thread(s)"
                      for m in map(json.loads, sorted(machines))) + ", device " + ", ".join(sorted({r['device'] for r in done})) + ".",
                  f"- Total over the {len(done)} recipe(s) run: CPU time {cpu / 60:.1f} min (time.process_time of the "
                  f"process), wall time {wall / 60:.1f} min. The machine was shared with other work, so wall time is an "
                  "upper bound of what the suite needs alone.", ""]
    lines += [
        "How to read the table:",
        "",
        "- Each row trains `recipes/NAME.json` (method) and `recipes/NAME-baseline.json` (baseline) for seeds "
        "0, 1, 2, overriding `train.seed`. The seed also draws the stratified train/test split (`dataset.split` "
        "is seeded by `train.seed`), so the spread across seeds includes the split, not only the initialisation "
        "and the mixing draws. Both runs of one seed share the split and the initial weights, so the comparison "
        "is paired.",
        "- mean ± std: the sample standard deviation (n - 1) over seeds, on the test split.",
        "- Δ: mean over seeds of (method − baseline), sign-flipped when lower is better, so Δ > 0 means the "
        "method is better. Wins: seeds on which the method beat its own baseline.",
        "- Verdict: *reproduced* = the paper's direction on average and on every seed; *same direction, within "
        "noise* = better on average but not on every seed; *not reproduced* = not better on average. Three seeds "
        "on small data is a weak test in both directions: a 'reproduced' here is not significance, and a "
        "'not reproduced' does not refute the paper at its scale.",
        "- No setting was tuned on the test split (nor on any split): every recipe's hyper-parameters were set "
        "once, up front, from the paper's or the reference code's values scaled to these data, and sized for "
        "the CPU budget by timing alone. A method that does not beat its baseline stays in the table with its "
        "verdict.",
        "- CPU: CPU seconds of both runs over all seeds (data loading, training and evaluation).",
        "",
    ]
    header = "| method | paper metric (better) | method mean ± std | baseline mean ± std | Δ | wins | CPU s | verdict | command |"
    rule = "|---|---|---|---|---|---|---|---|---|"
    for title, seed_paper in (("Seed papers", True), ("Other mixing methods in the engine", False)):
        lines += [f"## {title}", "", header, rule]
        for recipe in RECIPES.values():
            if recipe.seed_paper != seed_paper:
                continue
            cmd = f"`embedmix recipes run {recipe.name} --seeds 3`"
            r = results.get(recipe.name)
            if r is None or r.get("smoke"):
                lines.append(f"| {recipe.name} | {recipe.metric} ({recipe.better}) | not yet run | not yet run | - | - | - "
                             f"| not yet run | {cmd} |")
                continue
            s, v = r["summary"], r["summary"]["verdict"]
            lines.append(f"| {recipe.name} | {recipe.metric} ({recipe.better}) | {_cell(s, 'method', recipe.metric)} "
                         f"| {_cell(s, 'baseline', recipe.metric)} | {_fmt(v['improvement'])} | {v['wins']}/{v['n']} "
                         f"| {r['cpu_s']:.0f} | {v['verdict']} | {cmd} |")
        lines.append("")
    lines += ["## Secondary metrics", "", "| method | metric | method mean ± std | baseline mean ± std |", "|---|---|---|---|"]
    for recipe in RECIPES.values():
        r = results.get(recipe.name)
        if r is None or r.get("smoke"):
            continue
        for metric in recipe.secondary:
            lines.append(f"| {recipe.name} | {metric} | {_cell(r['summary'], 'method', metric)} "
                         f"| {_cell(r['summary'], 'baseline', metric)} |")
    ceiling = [n for n, r in results.items() if not r.get("smoke") and RECIPES[n].better == "higher"
               and r["summary"]["baseline"].get(RECIPES[n].metric, {}).get("mean", 0) >= 0.95]
    if ceiling:
        lines += ["", "Baselines at or above 0.95 on their paper metric (little room left to improve at this scale): "
                  + ", ".join(f"`{n}`" for n in ceiling) + "."]
    lines += ["", "## Setups (the method's spec; the baseline differs only as the next table says)", "",
              "| method | data | model | objective | training | mixing |", "|---|---|---|---|---|---|"]
    for recipe in RECIPES.values():
        lines.append(f"| {recipe.name} | " + " | ".join(_setup(recipe.name, results.get(recipe.name))) + " |")
    lines += ["", "## What each pair compares", "", "| method | paper | the paper's claim | baseline |", "|---|---|---|---|"]
    for recipe in RECIPES.values():
        lines.append(f"| {recipe.name} | {recipe.paper} | {recipe.claim} | {recipe.baseline} |")
    lines += [
        "",
        "Baselines that are not 'the same spec without the `mixup` block': the metrics `accuracy`, `ece`, `auroc` "
        "and `tnr_at_95_tpr` come from the classification head that the classification methods own, so a spec "
        "without mixing cannot compute them. RankMixup's and MixOE's baselines are therefore the method with "
        "`weight` 0, which draws and computes no mixing: "
        "`tests/unit/test_mixup_ssl_cls.py::test_rankmixup_weight_zero_is_plain_cross_entropy_training` and "
        "`::test_mixoe_weight_zero_is_plain_cross_entropy_training` prove it trains exactly as plain cross-entropy. "
        "Decoupled Mixup's baseline is the method with `eta` 0, which is plain mixup cross-entropy "
        "(`::test_decoupled_mixup_reduces_to_mixup_ce_and_to_ce`): the paper's claim is over mixup, so this is "
        "the comparison that isolates the decoupled regulariser. MoCHi's baseline is MoCo v2 (method `moco`), "
        "which equals MoCHi with no synthetic negatives (`::test_mochi_without_synthetic_points_is_moco_exactly`). "
        "SupReMix's baseline changes the objective as well (see its row above). "
        "`tests/unit/test_recipes.py` checks that every other pair differs only in the mixing.",
        "",
    ]
    missing = [n for n in RECIPES if n not in results or results[n].get("smoke")]
    if missing:
        lines += ["## Not yet run", "",
                  "These recipes have no result yet; run them with the command in their row "
                  "(or all with `embedmix recipes run-all --seeds 3 --skip-done`), then `embedmix recipes report`: "
                  + ", ".join(f"`{n}`" for n in missing) + ".", ""]
    return "\n".join(lines)


def read_results(directory: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name in RECIPES:
        path = directory / f"{name}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            result["summary"] = summarise(RECIPES[name], result["runs"])  # recomputed: the rule here is the one reported
            out[name] = result
    return out


@recipes_app.command("report")
def report(results: Path = typer.Option(RESULTS_DIR, "--results", help="directory of the JSON result files"),
           out: Path = typer.Option(RESULTS_MD, "--out", help="the Markdown file to write")) -> None:
    """Write RESULTS.md from the JSON result files (recipes without one are marked 'not yet run')."""
    found = read_results(results)
    out.write_text(render_report(found))
    print(f"wrote {out} ({len(found)} of {len(RECIPES)} recipes have results)")


def register(app: typer.Typer) -> None:
    app.add_typer(recipes_app, name="recipes")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(recipes_app())
