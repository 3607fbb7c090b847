"""Benchmark: our retrieval metrics against PML's AccuracyCalculator (which uses faiss), CPU.

N = 50,000 embeddings of d = 64 in 10 Gaussian classes (fixed seed). Both sides
compute precision_at_1, r_precision and map_at_r with k = "max_bin_count", every
item querying all others (cosine; PML + faiss rank by L2 on the unit vectors,
the same order). Each (implementation, repeat) runs in a fresh subprocess, the
two implementations alternating so that background load hits both alike. A
child builds the data, times one call and reports the time, its peak RSS
(ru_maxrss, whole process) and the peak's growth over the RSS it had before the
call, and the CPU time of the call (user + system, all threads), which other
load on the machine disturbs less than wall time. The parent prints medians,
the largest peak, the max absolute difference of the values and PML time /
our time.

PML materialises its N x max_bin_count neighbour table several times over
(indices, labels, float64 precision matrices): at the default size its child
peaks near 16 GiB, so check free memory before running it.

    .venv/bin/python bench/evaluate.py                # one run each (~5 min on 2 cores)
    .venv/bin/python bench/evaluate.py --repeats 3 --n 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("precision_at_1", "r_precision", "map_at_r")


def make_data(n: int, d: int, classes: int, seed: int = 0):
    """Clustered synthetic embeddings: class centres plus noise, labels uniform over classes."""
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, d, generator=g)
    x = centres[labels] + 1.5 * torch.randn(n, d, generator=g)
    return x, labels


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(impl: str, n: int, d: int, classes: int) -> None:
    """Run one implementation once and print a JSON line with time, memory and values."""
    sys.path.insert(0, str(ROOT))
    import torch

    x, labels = make_data(n, d, classes)
    if impl == "ours":
        from embedmix.core.evaluate import retrieval_metrics

        def run() -> dict[str, float]:
            return retrieval_metrics(x, labels, ks=(1,))
    else:
        import faiss
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        unit = torch.nn.functional.normalize(x, dim=1)
        calculator = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k="max_bin_count",
            device=torch.device("cpu"),
        )

        def run() -> dict[str, float]:
            out = calculator.get_accuracy(unit, labels)
            out["map_at_r"] = out.pop("mean_average_precision_at_r")
            return out

        assert faiss.get_num_gpus() == 0
    before = peak_rss_mib()
    cpu_start, start = cpu_seconds(), time.perf_counter()
    values = run()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    peak = peak_rss_mib()
    print(json.dumps({
        "impl": impl, "seconds": seconds, "cpu_s": cpu, "peak_rss_mib": peak, "growth_mib": peak - before,
        "threads": torch.get_num_threads(), "values": {k: float(values[k]) for k in SHARED},
    }))


def run_child(impl: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--n", str(args.n), "--d", str(args.d), "--classes", str(args.classes)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", choices=("ours", "pml"))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.d, args.classes)
        return
    runs: dict[str, list[dict]] = {"ours": [], "pml": []}
    for _ in range(args.repeats):
        for impl in ("pml", "ours"):
            runs[impl].append(run_child(impl, args))
            r = runs[impl][-1]
            print(f"  {impl:4s} {r['seconds']:7.2f} s  cpu {r['cpu_s']:7.2f} s  peak {r['peak_rss_mib']:7.0f} MiB", file=sys.stderr)
    summary = {
        impl: {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "growth_mib": max(r["growth_mib"] for r in rs),
        }
        for impl, rs in runs.items()
    }
    ours, pml = runs["ours"][0]["values"], runs["pml"][0]["values"]
    diff = max(abs(ours[k] - pml[k]) for k in SHARED)
    print(f"N={args.n} d={args.d} classes={args.classes} torch threads={runs['ours'][0]['threads']} repeats={args.repeats}")
    print("| implementation | time (s) | CPU time (s) | peak RSS (MiB) | RSS growth during call (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for impl, label in (("pml", "PML AccuracyCalculator + faiss"), ("ours", "core.evaluate.retrieval_metrics")):
        s = summary[impl]
        print(f"| {label} | {s['seconds']:.2f} | {s['cpu_s']:.2f} | {s['peak_rss_mib']:.0f} | {s['growth_mib']:.0f} |")
    print(f"values: ours {json.dumps(ours)}")
    print(f"values: pml  {json.dumps(pml)}")
    print(f"max abs difference: {diff:.3g}")
    print(f"PML time / our time: {summary['pml']['seconds'] / summary['ours']['seconds']:.2f}"
          f" (CPU time: {summary['pml']['cpu_s'] / summary['ours']['cpu_s']:.2f})")


if __name__ == "__main__":
    main()
