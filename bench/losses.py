"""Benchmark: our losses against pytorch-metric-learning (PML), forward + backward, CPU.

For every loss PML also has, and B in 256, 1024, 4096 (d = 128, float32; 10, 32
and 100 classes):

* time: one fresh subprocess per (loss, B) runs ours and PML's interleaved
  (warm-ups, then alternating timed forward + backward calls) and reports each
  median, so that load from other jobs on a shared machine hits both alike;
* memory: one fresh subprocess per (loss, implementation, B) so that one case's
  allocations cannot pollute another's: it builds its inputs, records its
  high-water RSS, runs one forward + backward and reports the growth of the
  high-water RSS (ru_maxrss) over that baseline.

Children are capped at 8 GiB of address space above their baseline: an
allocation beyond it is reported as OOM, a child past its time limit as
timeout.

B is the number of rows fed to the loss: two-view NT-Xent gets B/2 pairs. PML
has no batch-hard or semi-hard option on the loss itself, so those rows pair
TripletMarginLoss with BatchHardMiner / TripletMarginMiner("semihard"), and
multi-similarity with its MultiSimilarityMiner, as our defaults do. PML's
all-triplet and semi-hard cases enumerate B^3 triplets and are skipped at
B = 4096; ours are O(B^2 log B) and still run there.

Torch runs single-threaded by default (--threads): on a shared 2-core machine
two threads contend with other jobs and the medians swing by 10x.

    .venv/bin/python bench/losses.py                 # the full table (about 10 min on 2 cores)
    .venv/bin/python bench/losses.py --sizes 256     # one batch size
    .venv/bin/python bench/losses.py --cases supcon  # cases whose name contains a substring
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DIM = 128
CLASSES = {256: 10, 1024: 32, 4096: 100}
MEMORY_CAP = 8 << 30
CHILD_TIMEOUT_S = 150
TIME_BUDGET_S = 2.0
MAX_REPEATS = 100
THREADS = 1


@dataclass(frozen=True)
class Case:
    """One benchmark row: a loss as we build it and as PML builds it."""

    name: str
    ours: str
    pml: str
    skip_pml_at: int | None = None


CASES = [
    Case("contrastive", "contrastive", "contrastive"),
    Case("triplet all", "triplet_all", "triplet_all", skip_pml_at=4096),
    Case("triplet batch_hard", "triplet_batch_hard", "triplet_batch_hard"),
    Case("triplet semi_hard", "triplet_semi_hard", "triplet_semi_hard", skip_pml_at=4096),
    Case("multi_similarity (+miner)", "multi_similarity", "multi_similarity"),
    Case("supcon", "supcon", "supcon"),
    Case("ntxent two views", "ntxent_two_view", "ntxent_two_view"),
    Case("ntxent labels", "ntxent_labels", "ntxent_labels"),
    Case("proxy_anchor", "proxy_anchor", "proxy_anchor"),
    Case("normalized_softmax", "normalized_softmax", "normalized_softmax"),
    Case("arcface", "arcface", "arcface"),
]


def our_loss(key: str, num_classes: int) -> Callable:
    """A callable (embeddings, labels) -> loss for one of our losses."""
    from embedmix.core.losses import build

    simple = {
        "contrastive": ("contrastive", {}),
        "triplet_all": ("triplet", {"triplets": "all"}),
        "triplet_batch_hard": ("triplet", {"triplets": "batch_hard"}),
        "triplet_semi_hard": ("triplet", {"triplets": "semi_hard"}),
        "multi_similarity": ("multi_similarity", {}),
        "supcon": ("supcon", {}),
        "ntxent_labels": ("ntxent", {}),
        "proxy_anchor": ("proxy_anchor", {}),
        "normalized_softmax": ("normalized_softmax", {}),
        "arcface": ("arcface", {}),
    }
    if key == "ntxent_two_view":
        loss = build("ntxent")
        return lambda x, y: loss(x[: len(x) // 2], x[len(x) // 2 :])
    name, params = simple[key]
    loss = build(name, num_classes=num_classes, embedding_dim=DIM, **params)
    return lambda x, y: loss(x, y)


def pml_loss(key: str, num_classes: int) -> Callable:
    """The same loss as PML computes it (miners where our loss selects pairs)."""
    import torch
    from pytorch_metric_learning import losses, miners

    if key == "ntxent_two_view":
        loss = losses.NTXentLoss()
        return lambda x, y: loss(x, torch.arange(len(x) // 2).repeat(2))
    if key == "triplet_batch_hard":
        loss, miner = losses.TripletMarginLoss(margin=0.05), miners.BatchHardMiner()
        return lambda x, y: loss(x, y, miner(x, y))
    if key == "triplet_semi_hard":
        loss, miner = losses.TripletMarginLoss(margin=0.05), miners.TripletMarginMiner(0.05, type_of_triplets="semihard")
        return lambda x, y: loss(x, y, miner(x, y))
    if key == "multi_similarity":
        loss, miner = losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()
        return lambda x, y: loss(x, y, miner(x, y))
    plain = {
        "contrastive": lambda: losses.ContrastiveLoss(),
        "triplet_all": lambda: losses.TripletMarginLoss(margin=0.05),
        "supcon": lambda: losses.SupConLoss(),
        "ntxent_labels": lambda: losses.NTXentLoss(),
        "proxy_anchor": lambda: losses.ProxyAnchorLoss(num_classes, DIM),
        "normalized_softmax": lambda: losses.NormalizedSoftmaxLoss(num_classes, DIM),
        "arcface": lambda: losses.ArcFaceLoss(num_classes, DIM),
    }
    loss = plain[key]()
    return lambda x, y: loss(x, y)


def inputs(batch: int) -> tuple[Any, Any]:
    """Seeded float32 embeddings (B, DIM) that need a gradient, and labels of CLASSES[B] classes."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(batch, DIM, requires_grad=True)
    y = torch.randint(0, CLASSES[batch], (batch,))
    return x, y


def builder(impl: str) -> Callable[[str, int], Callable]:
    """`our_loss` or `pml_loss`."""
    return our_loss if impl == "ours" else pml_loss


def step(fn: Callable, x, y) -> float:
    """One forward + backward, in seconds."""
    x.grad = None
    t0 = time.perf_counter()
    fn(x, y).backward()
    return time.perf_counter() - t0


def time_child(keys: dict[str, str], batch: int) -> dict:
    """Time the implementations interleaved, so that load from other jobs hits all of them alike.

    Each gets a cold call (plus two warm-ups when that took under 0.3 s); then
    they alternate until each has three timed repeats and TIME_BUDGET_S has
    passed, or MAX_REPEATS. One whose cold call exceeds the budget is reported
    by that call alone; one that runs out of memory is reported as OOM.
    """
    x, y = inputs(batch)
    fns, results, times = {}, {}, {}
    for impl, key in keys.items():
        fns[impl] = builder(impl)(key, CLASSES[batch])
        try:
            cold = step(fns[impl], x, y)
            if cold > TIME_BUDGET_S:
                results[impl] = {"status": "ok", "time_ms": 1000 * cold, "repeats": 1}
                continue
            for _ in range(2 if cold < 0.3 else 0):
                step(fns[impl], x, y)
            times[impl] = []
        except (RuntimeError, MemoryError) as error:
            results[impl] = failure(error)
    started = time.perf_counter()

    def more() -> bool:
        counts = [len(samples) for samples in times.values()]
        if not counts or min(counts) < 3:
            return bool(counts)
        return time.perf_counter() - started < TIME_BUDGET_S and max(counts) < MAX_REPEATS

    while more():
        for impl, samples in times.items():
            samples.append(step(fns[impl], x, y))
    for impl, samples in times.items():
        results[impl] = {"status": "ok", "time_ms": 1000 * statistics.median(samples), "repeats": len(samples)}
    return results


def memory_child(impl: str, key: str, batch: int) -> dict:
    """Peak RSS growth of one forward + backward, over the high-water mark after building the inputs."""
    x, y = inputs(batch)
    fn = builder(impl)(key, CLASSES[batch])
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        step(fn, x, y)
    except (RuntimeError, MemoryError) as error:
        return failure(error)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"status": "ok", "peak_mb": (peak_kb - baseline_kb) / 1024}


def failure(error: BaseException) -> dict:
    """A failed call as a status: OOM when the allocator ran into the cap."""
    return {"status": "OOM" if "memory" in str(error).lower() else f"error: {str(error)[:80]}"}


def cap_memory() -> None:
    """Limit the child's address space to its current size plus MEMORY_CAP."""
    with open("/proc/self/status") as status:
        vm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
    limit = vm_kb * 1024 + MEMORY_CAP
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def child_main(mode: str, spec: list[str], threads: int) -> None:
    """Entry point of a subprocess: `time OURS_KEY PML_KEY|- B` or `memory IMPL KEY B`."""
    sys.path.insert(0, str(ROOT))
    import pytorch_metric_learning.losses  # noqa: F401  (loaded before the cap: its mappings are not the loss's)
    import torch

    torch.set_num_threads(threads)
    cap_memory()
    if mode == "time":
        ours_key, pml_key, batch = spec
        keys = {"ours": ours_key} | ({} if pml_key == "-" else {"pml": pml_key})
        print(json.dumps(time_child(keys, int(batch))))
    else:
        impl, key, batch = spec
        print(json.dumps(memory_child(impl, key, int(batch))))


def run(args: list[str], threads: int) -> dict:
    """Run a child in a fresh subprocess and read its JSON line; a crash or timeout becomes a status."""
    cmd = [sys.executable, __file__, "--threads", str(threads), "--child", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (>{CHILD_TIMEOUT_S} s)"}
    if proc.returncode != 0:
        return {"status": "killed" if proc.returncode < 0 else f"exit {proc.returncode}: {proc.stderr[-200:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(case: Case, batch: int, threads: int) -> str:
    """One table row: a timing child for both implementations, then a memory child for each that ran."""
    skip_pml = case.skip_pml_at is not None and batch >= case.skip_pml_at
    timed = run(["time", case.ours, "-" if skip_pml else case.pml, str(batch)], threads)
    if "status" in timed:  # the whole timing child failed
        timed = {"ours": timed} | ({} if skip_pml else {"pml": timed})
    cells = {}
    for impl, key in (("ours", case.ours), ("pml", case.pml)):
        if impl not in timed:
            cells[impl] = ("skipped", "-")
            continue
        memory = run(["memory", impl, key, str(batch)], threads) if timed[impl]["status"] == "ok" else timed[impl]
        time_cell = f"{timed[impl]['time_ms']:.1f}" if timed[impl]["status"] == "ok" else timed[impl]["status"]
        memory_cell = f"{max(memory['peak_mb'], 0):.0f}" if memory["status"] == "ok" else memory["status"]
        cells[impl] = (time_cell, memory_cell)
    ratio = "-"
    if all(impl in timed and timed[impl]["status"] == "ok" for impl in ("ours", "pml")):
        ratio = f"{timed['pml']['time_ms'] / timed['ours']['time_ms']:.2f}"
    (ot, om), (pt, pm) = cells["ours"], cells["pml"]
    return f"| {case.name} | {batch} | {ot} | {pt} | {ratio} | {om} | {pm} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(CLASSES))
    parser.add_argument("--cases", nargs="+", help="substrings of case names to run")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads per case (default %(default)s)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child[0], args.child[1:], args.threads)
        return
    print(f"torch threads {args.threads}, d={DIM}, classes {CLASSES}, float32, forward+backward; "
          f"time = median ms, peak = MB of RSS growth")
    print("| loss | B | ours ms | PML ms | PML/ours time | ours peak MB | PML peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case in CASES:
        if args.cases and not any(s in case.name for s in args.cases):
            continue
        for batch in args.sizes:
            print(row(case, batch, args.threads), flush=True)


if __name__ == "__main__":
    main()
