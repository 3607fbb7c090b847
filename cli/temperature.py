"""The uniformity–tolerance study: NT-Xent over temperatures (Wang & Liu, Understanding the Behaviour of
Contrastive Loss, CVPR 2021).

The paper's claim is a dilemma: a small temperature spreads the embeddings over the
sphere (more uniform: a lower `uniformity`, the log mean Gaussian potential) but also
pushes apart samples of one class (a lower `tolerance`, the mean same-class cosine),
and the downstream accuracy is best between the extremes. `recipes/temperature.json`
is trained at each of the paper's temperatures for seeds 0..n-1 (one result per point,
no baseline: the study reads the trend, not a paired difference); `embedmix recipes
run-all` runs it after the pairs, `embedmix recipes temperature` alone. The result
file holds every run, and an SVG plot of the three metrics against the temperature
is written beside it; the report adds its table to RESULTS.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Optional

import typer

from embedmix.cli.recipes import (RECIPES_DIR, STUDIES, Device, Out, Smoke, Study, Threads, _device, _machine, _out,
                         _set_threads, _train, _write, mean_std, recipes_app, with_seed)

STUDY = "temperature"
SPEC_FILE = RECIPES_DIR / f"{STUDY}.json"
TEMPERATURES = (0.07, 0.2, 0.3, 0.7, 1.0)  # the paper's (its CIFAR-10 table of uniformity and tolerance)
SEEDS = 3
METRICS = ("uniformity", "tolerance", "knn_accuracy")  # plotted; linear_probe_accuracy is in the table too
TABLE_METRICS = (*METRICS, "linear_probe_accuracy")
PLOT_FILE = f"{STUDY}.svg"


def point_spec(temperature: float, seed: int) -> dict[str, Any]:
    """The study's spec at one temperature and seed."""
    spec = with_seed(json.loads(SPEC_FILE.read_text()), seed)
    spec["objective"].setdefault("params", {})["temperature"] = temperature
    return spec


def run_point(temperature: float, seed: int, smoke: bool = False, device: str | None = "cpu") -> dict[str, Any]:
    """One run of the study: its metrics, steps and CPU time at this temperature and seed."""
    record = _train(point_spec(temperature, seed), smoke=smoke, device=device)[0]
    return {"temperature": temperature, **record}


def study_hash(seeds: list[int], smoke: bool) -> str:
    """What a result file was computed from: the spec, the temperatures, the seeds and the smoke flag."""
    blob = json.dumps({"spec": json.loads(SPEC_FILE.read_text()), "temperatures": TEMPERATURES, "seeds": seeds,
                       "smoke": smoke}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_study(directory: Path, smoke: bool = False) -> dict[str, Any] | None:
    """The study's result file in `directory` if it was computed from the current spec (else None: not yet run)."""
    path = directory / f"{STUDY}.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if result.get("smoke") != smoke or result.get("spec_hash") != study_hash(result.get("seeds", []), smoke):
        return None
    return result


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per temperature, the mean and sample sd over seeds of each metric."""
    out = []
    for t in sorted({r["temperature"] for r in runs}):
        at = [r for r in runs if r["temperature"] == t]
        row: dict[str, Any] = {"temperature": t, "n": len(at)}
        for metric in TABLE_METRICS:
            mean, sd = mean_std([r["metrics"].get(metric, float("nan")) for r in at])
            row[metric] = {"mean": mean, "std": sd}
        out.append(row)
    return out


def _points(work: list[tuple[float, int]], jobs: int, smoke: bool, device: str | None, threads: int):
    if jobs <= 1:
        for t, seed in work:
            yield run_point(t, seed, smoke, device)
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_set_threads,
                             initargs=(threads,)) as pool:
        for future in as_completed([pool.submit(run_point, t, seed, smoke, device) for t, seed in work]):
            yield future.result()


def run_study(out: Path | None, *, seeds: int = SEEDS, jobs: int = 1, smoke: bool = False, device: str | None = "cpu",
              command: str, threads: int | None = None) -> dict[str, Any]:
    """Train the study's spec at every temperature for seeds 0..n-1; write OUT/temperature.json and its SVG plot."""
    used = threads if threads is not None else 1 if jobs > 1 else _set_threads(None)
    if jobs <= 1:
        _set_threads(used)
    seed_ids = list(range(seeds))
    work = [(t, s) for t in TEMPERATURES for s in seed_ids]
    runs = sorted(_points(work, jobs, smoke, device, used), key=lambda r: (r["temperature"], r["seed"]))
    result = {"recipe": STUDY, "paper": "Wang & Liu, Understanding the Behaviour of Contrastive Loss (CVPR 2021)",
              "file": f"recipes/{STUDY}.json", "temperatures": list(TEMPERATURES), "seeds": seed_ids, "smoke": smoke,
              "device": device or "spec", "command": command, "spec_hash": study_hash(seed_ids, smoke),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": _machine(used),
              "runs": runs, "summary": summarise(runs),
              "cpu_s": round(sum(r["cpu_s"] for r in runs), 2), "wall_s": round(sum(r["wall_s"] for r in runs), 2)}
    _write(out, result)
    if out is not None:
        (out / PLOT_FILE).write_text(svg(result["summary"]))
    return result


# --------------------------------------------------------------------------- plot
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 260, 220, 56, 12, 28, 40


def _ticks(lo: float, hi: float) -> list[float]:
    return [lo + (hi - lo) * k / 4 for k in range(5)]


def _panel(summary: list[dict[str, Any]], metric: str, x0: float) -> list[str]:
    """One metric against log temperature: the mean over seeds with ± sd bars, axes and tick labels."""
    ts = [row["temperature"] for row in summary]
    means = [row[metric]["mean"] for row in summary]
    sds = [0.0 if math.isnan(row[metric]["std"]) else row[metric]["std"] for row in summary]
    lows = [m - s for m, s in zip(means, sds) if not math.isnan(m)]
    highs = [m + s for m, s in zip(means, sds) if not math.isnan(m)]
    if not lows:
        return [f'<text x="{x0 + W / 2}" y="{H / 2}" text-anchor="middle">{metric}: no values</text>']
    y_lo, y_hi = min(lows), max(highs)
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    lx_lo, lx_hi = math.log(min(ts)), math.log(max(ts))
    span = lx_hi - lx_lo or 1.0
    px = lambda t: x0 + PAD_L + (math.log(t) - lx_lo) / span * (W - PAD_L - PAD_R)  # noqa: E731
    py = lambda v: PAD_T + (y_hi - v) / (y_hi - y_lo) * (H - PAD_T - PAD_B)  # noqa: E731
    left, right, bottom = x0 + PAD_L, x0 + W - PAD_R, H - PAD_B
    out = [f'<text x="{x0 + W / 2:.1f}" y="16" text-anchor="middle" font-weight="bold">{metric}</text>',
           f'<line x1="{left}" y1="{PAD_T}" x2="{left}" y2="{bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>']
    for v in _ticks(y_lo, y_hi):
        out.append(f'<text x="{left - 4}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.3f}</text>')
    for t in ts:
        out.append(f'<text x="{px(t):.1f}" y="{bottom + 14}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{x0 + W / 2:.1f}" y="{H - 8}" text-anchor="middle">temperature (log scale)</text>')
    pts = [(px(t), py(m)) for t, m in zip(ts, means) if not math.isnan(m)]
    out.append('<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="'
               + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
    for t, m, s in zip(ts, means, sds):
        if math.isnan(m):
            continue
        x = px(t)
        out.append(f'<line x1="{x:.1f}" y1="{py(m - s):.1f}" x2="{x:.1f}" y2="{py(m + s):.1f}" stroke="#1f77b4"/>')
        out.append(f'<circle cx="{x:.1f}" cy="{py(m):.1f}" r="3" fill="#1f77b4"/>')
    return out


def svg(summary: list[dict[str, Any]]) -> str:
    """The three metrics against the temperature, side by side (mean over seeds, bars ± one sd)."""
    body = [line for i, metric in enumerate(METRICS) for line in _panel(summary, metric, i * W)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * len(METRICS)}" height="{H}" '
            f'font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(body) + "\n</svg>\n")


# --------------------------------------------------------------------------- report
def _trend(summary: list[dict[str, Any]], metric: str) -> str:
    means = [row[metric]["mean"] for row in summary]
    if any(math.isnan(m) for m in means):
        return "not measured at every temperature"
    steps = [b - a for a, b in zip(means, means[1:])]
    if all(d > 0 for d in steps):
        return "rises at every step"
    if all(d < 0 for d in steps):
        return "falls at every step"
    return "does not move one way (" + ", ".join(f"{d:+.4f}" for d in steps) + " between neighbours)"


def section(result: dict[str, Any] | None) -> list[str]:
    """RESULTS.md's lines for the study: protocol, the table per temperature, the trends and the plot."""
    lines = ["## Uniformity–tolerance: NT-Xent over temperatures", ""]
    if result is None:
        return lines + ["Not yet run: `embedmix recipes temperature` (or `embedmix recipes run-all`).", ""]
    s = result["summary"]
    lines += [f"Wang & Liu, Understanding the Behaviour of Contrastive Loss (CVPR 2021): a smaller temperature makes "
              "the embeddings more uniform (lower `uniformity`) and less tolerant (lower `tolerance`, the mean "
              "cosine of same-class test pairs), and the downstream accuracy peaks between the extremes. "
              f"`recipes/{STUDY}.json` (self-supervised NT-Xent on mnist1d, 1,500 generated, random 20% test split) "
              f"at the paper's temperatures, seeds {result['seeds'][0]}..{result['seeds'][-1]}, mean ± sd over "
              f"seeds; {result['cpu_s']:.0f} CPU s in all. Plot: [`results/{PLOT_FILE}`](results/{PLOT_FILE}).", "",
              "| temperature | " + " | ".join(TABLE_METRICS) + " |", "|---" * (len(TABLE_METRICS) + 1) + "|"]
    for row in s:
        lines.append(f"| {row['temperature']:g} | " + " | ".join(
            "-" if math.isnan(row[m]["mean"]) else f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}"
            for m in TABLE_METRICS) + " |")
    best = max(s, key=lambda row: -math.inf if math.isnan(row["knn_accuracy"]["mean"]) else row["knn_accuracy"]["mean"])
    lines += ["", f"With the temperature, uniformity {_trend(s, 'uniformity')} and tolerance {_trend(s, 'tolerance')}; "
              f"the best kNN accuracy is at temperature {best['temperature']:g}.", "",
              f"![uniformity, tolerance and kNN accuracy against the temperature](results/{PLOT_FILE})", ""]
    return lines


@recipes_app.command("temperature")
def temperature(seeds: int = typer.Option(SEEDS, "--seeds", min=1, max=100), out: Optional[Path] = Out,
                jobs: int = typer.Option(1, "--jobs", min=1, max=64), threads: Optional[int] = Threads,
                smoke: bool = Smoke, device: str = Device) -> None:
    """The uniformity–tolerance study alone: NT-Xent at each temperature; writes OUT/temperature.json and .svg."""
    out = _out(out, smoke)
    command = f"embedmix recipes temperature --seeds {seeds}" + (f" --jobs {jobs}" if jobs > 1 else "")
    result = run_study(out, seeds=seeds, jobs=jobs, smoke=smoke, device=_device(device), command=command,
                       threads=threads)
    for row in result["summary"]:
        print(f"temperature {row['temperature']:g}: " + ", ".join(
            f"{m} {row[m]['mean']:.4f} ± {row[m]['std']:.4f}" for m in TABLE_METRICS))
    print(f"cpu {result['cpu_s']:.1f}s; wrote {out / (STUDY + '.json')} and {out / PLOT_FILE}")


STUDIES[STUDY] = Study(STUDY, read_study, run_study, section)
