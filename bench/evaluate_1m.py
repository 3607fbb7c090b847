"""Retrieval over a 1,000,000 x 128 gallery on the CPU: `core.evaluate.query_retrieval_metrics` against faiss.

Gallery: N = 1,000,000 embeddings of d = 128 in 1,000 Gaussian classes (fixed
seed); queries: Q = 10,000 more from the same classes. Both sides find each
query's k = 10 most cosine-similar gallery items exactly: ours by blocked matmul
+ top-k (`core.evaluate.nearest_neighbours`), faiss by `IndexFlatIP` on the
unit vectors (exact inner-product search, faiss's peer of a brute-force scan).
From the neighbours both compute precision_at_1 and recall_at_{1,10} the same
way. Each side runs in a fresh subprocess that builds the data, then times
the search + metrics; it reports the wall time, the CPU time (user + system,
all threads) and the peak RSS of the whole process (`ru_maxrss`), which
includes the 512 MB gallery, the queries and the data generation. Threads: the
same for both (torch's and faiss's OpenMP, `--threads`).

faiss-cpu is a dev dependency (`pip install -e .[dev]`); it is only the peer.

    .venv/bin/python bench/evaluate_1m.py                 # ~5 min on 2 cores
    .venv/bin/python bench/evaluate_1m.py --n 100000 --queries 2000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 10)


def make_data(n: int, queries: int, d: int, classes: int, seed: int = 0):
    """Gallery and queries from the same clustered distribution: class centres plus noise."""
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    labels = torch.randint(0, classes, (n + queries,), generator=g)
    x = torch.randn(n + queries, d, generator=g).mul_(1.5).add_(centres[labels])
    return x[:n], labels[:n], x[n:], labels[n:]


def metrics_from_neighbours(idx, ref_labels, labels) -> dict[str, float]:
    relevant = ref_labels[idx] == labels[:, None]
    out = {"precision_at_1": float(relevant[:, 0].float().mean())}
    out.update({f"recall_at_{k}": float(relevant[:, :k].any(dim=1).float().mean()) for k in KS})
    return out


def child(impl: str, n: int, queries: int, d: int, classes: int, threads: int) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(threads)
    refs, ref_labels, q, labels = make_data(n, queries, d, classes)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, start = usage.ru_utime + usage.ru_stime, time.perf_counter()
    if impl == "ours":
        from embedmix.core.evaluate import query_retrieval_metrics

        values = query_retrieval_metrics(q, labels, refs, ref_labels, ks=KS)
    else:
        import faiss

        faiss.omp_set_num_threads(threads)
        unit_refs = torch.nn.functional.normalize(refs, dim=1).numpy()
        index = faiss.IndexFlatIP(d)
        index.add(unit_refs)
        _, idx = index.search(torch.nn.functional.normalize(q, dim=1).numpy(), max(KS))
        values = metrics_from_neighbours(torch.from_numpy(idx), ref_labels, labels)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime - cpu0,
                      "peak_rss_mib": usage.ru_maxrss / 1024, "values": values}))


def run(impl: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--n", str(args.n), "--queries", str(args.queries),
           "--d", str(args.d), "--classes", str(args.classes), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.queries, args.d, args.classes, args.threads)
        return
    print(f"gallery {args.n} x {args.d}, {args.queries} queries, {args.classes} classes, {args.threads} threads")
    results = {impl: run(impl, args) for impl in ("ours", "faiss")}
    print("| implementation | time (s) | CPU time (s) | peak RSS (MiB) | precision_at_1 | recall_at_10 |")
    print("|---|---:|---:|---:|---:|---:|")
    for impl, r in results.items():
        name = "core.evaluate.query_retrieval_metrics" if impl == "ours" else "faiss IndexFlatIP (exact)"
        v = r["values"]
        print(f"| {name} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mib']:.0f} | "
              f"{v['precision_at_1']:.4f} | {v['recall_at_10']:.4f} |")
    ours, faiss = results["ours"], results["faiss"]
    diff = max(abs(ours["values"][k] - faiss["values"][k]) for k in ours["values"])
    print(f"faiss time / our time: {faiss['seconds'] / ours['seconds']:.2f}; max abs metric difference {diff:.2g}")


if __name__ == "__main__":
    main()
