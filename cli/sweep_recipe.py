"""Sweep recipes: a seed method's hyper-parameters searched on a validation split, then the best tested once.

`recipes/sweep-NAME.json` is a sweep body as `POST /v1/sweeps` takes it (DESIGN.md;
`embedmix sweep submit` sends it to a service as it is): its `spec` is recipe NAME's
spec (`recipes/NAME.json`) with `dataset.split.validation_fraction` set, and nothing
else changed (tests/unit/test_sweep_recipe.py holds the two together). `embedmix recipes
sweep NAME` runs it in this process: the sweep's sampler (Optuna, seeded as the body
says) proposes each trial's values, the trial trains on the training split less its
validation share and is judged by its metric on that share (`val/<metric>`,
`core.spec.selection_metric`), so no choice sees a test row. Then the best values go
into recipe NAME's own spec (the whole training split), which is trained for seeds
0..n-1 next to the recipe's baseline and the recipe's own settings, and their test
metric is what the result file and RESULTS.md report.

A pruner needs evaluations during training and a service to stop jobs; here every trial
runs to its end (the body's pruner is for the service), which is what a budget of a few
trials wants anyway.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from embedmix.cli.recipes import (RECIPES, RECIPES_DIR, STUDIES, Device, Out, Smoke, Study, Threads, _device, _fmt,
                                  _machine, _out, _set_threads, _signed, _train, _write, load_pair, mean_std,
                                  paired_t_interval, recipes_app, with_seed)

PREFIX = "sweep-"
SEEDS = 5  # seeds of the final test runs (the search itself is one seed: the sweep body's spec)


def sweep_file(name: str) -> Path:
    return RECIPES_DIR / f"{PREFIX}{name}.json"


def sweep_names() -> list[str]:
    """The recipes that have a sweep recipe (recipes/sweep-NAME.json)."""
    return sorted(p.stem.removeprefix(PREFIX) for p in RECIPES_DIR.glob(f"{PREFIX}*.json"))


def load_sweep(name: str) -> dict[str, Any]:
    return json.loads(sweep_file(name).read_text())


def set_paths(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of `spec` with each dotted path set to its value, as a sweep's trial is made."""
    from embedmix.store.sweeps import apply_params  # the service's own rule, so a trial here is a trial there

    return apply_params(spec, params)


def search(name: str, smoke: bool, device: str | None) -> dict[str, Any]:
    """The sweep's trials, one after another, each judged on the validation split; returns trials and the best."""
    import optuna

    from embedmix.core.spec import selection_metric, validate_spec
    from embedmix.worker.sweeps import suggest

    body = load_sweep(name)
    base = validate_spec(body["spec"]).model_dump(mode="json")
    judged = selection_metric(base, body["metric"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=body["direction"], sampler=optuna.samplers.TPESampler(seed=body["seed"]))
    trials = []
    for _ in range(body["trials"]):
        trial = study.ask()
        params = {path: suggest(trial, path, param) for path, param in body["space"].items()}
        record = _train(set_paths(base, params), smoke=smoke, device=device)[0]
        value = record["metrics"][judged]
        study.tell(trial, value)
        trials.append({"number": trial.number, "params": params, "value": value, "cpu_s": record["cpu_s"],
                       "wall_s": record["wall_s"]})
    best = max(trials, key=lambda t: (value_key(t["value"], body["direction"]), -t["number"]))
    return {"metric": judged, "trials": trials, "best": best}


def value_key(value: float, direction: str) -> float:
    """Larger is better: the value as a maximised quantity (NaN last)."""
    if math.isnan(value):
        return -math.inf
    return value if direction == "maximize" else -value


def final_runs(name: str, params: dict[str, Any], seeds: list[int], smoke: bool, device: str | None
               ) -> dict[str, list[dict[str, Any]]]:
    """Recipe NAME's spec with the best values, its own spec and its baseline, each on the test split per seed."""
    from embedmix.core.spec import validate_spec

    method, baseline = load_pair(name)
    tuned = set_paths(validate_spec(method).model_dump(mode="json"), params)
    sides = {"tuned": tuned, "recipe": method, "baseline": baseline}
    return {side: [_train(with_seed(spec, s), smoke=smoke, device=device)[0] for s in seeds]
            for side, spec in sides.items()}


def summarise(name: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per side the test metric's mean and sd over seeds; the paired differences tuned − baseline and tuned − recipe."""
    metric = RECIPES[name].metric
    values = {side: [r["metrics"][metric] for r in records] for side, records in runs.items()}
    out: dict[str, Any] = {"metric": metric}
    for side, vals in values.items():
        mean, sd = mean_std(vals)
        out[side] = {"mean": mean, "std": sd}
    for other in ("baseline", "recipe"):
        diffs = [a - b for a, b in zip(values["tuned"], values[other])]
        out[f"tuned_minus_{other}"] = {"mean": statistics.fmean(diffs), "ci": list(paired_t_interval(diffs)),
                                       "n": len(diffs)}
    return out


def study_hash(name: str, seeds: list[int], smoke: bool) -> str:
    """What a result was computed from: the sweep body, the recipe's pair, the seeds and the smoke flag."""
    method, baseline = load_pair(name)
    blob = json.dumps({"sweep": load_sweep(name), "method": method, "baseline": baseline, "seeds": seeds,
                       "smoke": smoke}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_sweep(name: str, out: Path | None, *, seeds: int = SEEDS, smoke: bool = False, device: str | None = "cpu",
              command: str, threads: int | None = None) -> dict[str, Any]:
    """Search, then test the best against the baseline; writes OUT/sweep-NAME.json."""
    used = _set_threads(threads)
    seed_ids = list(range(seeds))
    found = search(name, smoke, device)
    runs = final_runs(name, found["best"]["params"], seed_ids, smoke, device)
    cpu = sum(t["cpu_s"] for t in found["trials"]) + sum(r["cpu_s"] for rs in runs.values() for r in rs)
    wall = sum(t["wall_s"] for t in found["trials"]) + sum(r["wall_s"] for rs in runs.values() for r in rs)
    result = {"recipe": f"{PREFIX}{name}", "file": f"recipes/{PREFIX}{name}.json", "seeds": seed_ids, "smoke": smoke,
              "device": device or "spec", "command": command, "spec_hash": study_hash(name, seed_ids, smoke),
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": _machine(used),
              "search": found, "runs": runs, "summary": summarise(name, runs),
              "cpu_s": round(cpu, 2), "wall_s": round(wall, 2)}
    _write(out, result)
    return result


def reader(name: str):
    """The study's `read`: its result file if computed from the current files (else None: not yet run)."""
    def read(directory: Path, smoke: bool = False) -> dict[str, Any] | None:
        try:
            result = json.loads((directory / f"{PREFIX}{name}.json").read_text())
        except (OSError, ValueError):
            return None
        if result.get("smoke") != smoke or result.get("spec_hash") != study_hash(name, result.get("seeds", []), smoke):
            return None
        return result
    return read


def section_for(name: str):
    """The study's RESULTS.md section: the search on validation, then the best against the baseline on test."""
    def section(result: dict[str, Any] | None) -> list[str]:
        body = load_sweep(name)
        lines = [f"## Sweep: {name}'s {', '.join(f'`{p}`' for p in body['space'])} chosen on a validation split", ""]
        if result is None:
            return lines + [f"Not yet run: `embedmix recipes sweep {name}` (or `embedmix recipes run-all`).", ""]
        found, s = result["search"], result["summary"]
        fraction = body["spec"]["dataset"]["split"]["validation_fraction"]
        text = (f"`recipes/{PREFIX}{name}.json`: {body['trials']} trials ({body['sampler']} sampler, seed "
                f"{body['seed']}) of recipe {name}'s spec, each judged by `{found['metric']}` on a validation "
                f"share of {fraction:g} carved from the training split (`dataset.split.validation_fraction`); "
                "no trial reads the test split. The best values then go into `recipes/"
                f"{name}.json` (the whole training split), trained for seeds {result['seeds'][0]}.."
                f"{result['seeds'][-1]} next to the recipe's baseline and its own settings; the test "
                f"`{s['metric']}` is reported. {result['cpu_s']:.0f} CPU s, {result['wall_s']:.0f} s wall in all; "
                f"command: `{result['command']}`.")
        if body["spec"]["dataset"]["split"].get("kind") == "classes":
            text += (" The test classes are held out of training, so the validation rows (a share of the training "
                     "classes' rows) measure retrieval among seen classes: an easier task than the test's, and "
                     "one that ranks the trials by less.")
        lines += [text, "", "| trial | " + " | ".join(f"`{p}`" for p in body["space"]) + f" | `{found['metric']}` |",
                  "|---" * (len(body["space"]) + 2) + "|"]
        for t in found["trials"]:
            mark = " (best)" if t["number"] == found["best"]["number"] else ""
            lines.append(f"| {t['number']}{mark} | " + " | ".join(f"{v:.4g}" for v in t["params"].values())
                         + f" | {_fmt(t['value'])} |")
        lines += ["", f"| on the test split | {s['metric']} mean ± sd (n {len(result['seeds'])}) |", "|---|---|"]
        for side, label in (("tuned", f"{name} with the best values"), ("recipe", f"{name} as the recipe sets it"),
                            ("baseline", "the recipe's baseline")):
            lines.append(f"| {label} | {_fmt(s[side]['mean'])} ± {_fmt(s[side]['std'])} |")
        for other in ("baseline", "recipe"):
            d = s[f"tuned_minus_{other}"]
            lo, hi = d["ci"]
            ci = "-" if math.isnan(lo) else f"[{_signed(lo)}, {_signed(hi)}]"
            lines.append(f"| Δ tuned − {other} (paired, 95% CI) | {_signed(d['mean'])} {ci} |")
        return lines + [""]
    return section


def runner(name: str):
    """The study's `run` as run-all calls it (it has no worker processes: the trials are sequential)."""
    def run(out: Path | None, *, jobs: int = 1, smoke: bool = False, device: str | None = "cpu", command: str,
            threads: int | None = None) -> dict[str, Any]:
        return run_sweep(name, out, smoke=smoke, device=device, command=command, threads=threads)
    return run


@recipes_app.command("sweep")
def sweep(name: str = typer.Argument(..., help="a recipe with recipes/sweep-NAME.json"),
          seeds: int = typer.Option(SEEDS, "--seeds", min=2, max=100, help="seeds of the final test runs"),
          out: Path | None = Out, threads: int | None = Threads, smoke: bool = Smoke,
          device: str = Device) -> None:
    """Search recipe NAME's hyper-parameters on a validation split, then test the best against its baseline."""
    if name not in sweep_names():
        typer.echo(f"error: no sweep recipe {name!r}; there are {sweep_names()}", err=True)
        raise typer.Exit(2)
    out = _out(out, smoke)
    command = (f"embedmix recipes sweep {name}" + (f" --seeds {seeds}" if seeds != SEEDS else "")
               + (f" --threads {threads}" if threads else "") + (" --smoke" if smoke else ""))
    result = run_sweep(name, out, seeds=seeds, smoke=smoke, device=_device(device), command=command, threads=threads)
    for line in section_for(name)(result):
        print(line)
    print(f"cpu {result['cpu_s']:.1f}s; wrote {out / (PREFIX + name + '.json')}")


for _name in sweep_names():
    STUDIES[f"{PREFIX}{_name}"] = Study(f"{PREFIX}{_name}", reader(_name), runner(_name), section_for(_name))
