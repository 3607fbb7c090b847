"""Large contrastive batches on the CPU: the cached loss (train.grad_cache_chunk) against the plain loss and MoCo.

SimCLR-style NT-Xent with two augmented views (the positive of each row is its
other view; the in-batch negatives of a multiple-negatives ranking loss) on
MNIST-1D with the conv1d encoder, trained by the engine (`core.array_train.ArrayTrainer`).
Each case runs in a fresh subprocess whose address space is capped (8 GiB by
default); it reports the training samples per second (from the start of `run()`
to its last step, as bench/engine.py) and the child's peak RSS (`ru_maxrss`).
A case that hits the cap is reported as OOM.

Cases: the plain and the cached loss at a batch both can train (the cached
loss's cost: one extra forward per chunk), both at B = 16,384 (the plain one
cannot), and MoCo v2 (batch 256, a queue of 16,384 negatives): the other way to
get many negatives, from keys of earlier batches rather than the current one.

    .venv/bin/python bench/grad_cache.py                  # ~10 min on 2 cores
    .venv/bin/python bench/grad_cache.py --big 4096 --steps 1 --cap-gib 2   # a quick look
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


def spec_for(batch: int, steps: int, chunk: int | None, moco_queue: int | None) -> dict:
    """A spec whose training split holds exactly `steps` batches (test split 20%)."""
    size = max(int(batch * steps / 0.8) + 10, 1000)
    spec = {
        "name": "grad-cache-bench",
        "dataset": {"name": "mnist1d", "size": size},
        "model": {"encoder": "conv1d", "embedding_dim": 64},
        "objective": {"loss": "ntxent", "views": 2},
        "train": {"epochs": 1, "batch_size": batch, "lr": 1e-3, "seed": 0, "grad_cache_chunk": chunk},
        "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    }
    if moco_queue is not None:
        spec["mixup"] = {"method": "moco", "params": {"queue_size": moco_queue}}
    return spec


def child(spec: dict, cap_gib: float) -> None:
    """Train `spec` in this process under the cap; print a JSON line with rate and peak RSS."""
    limit = int(cap_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, str(ROOT))
    from embedmix.core.data import load_dataset
    from embedmix.core.spec import validate_spec
    from embedmix.core.array_train import ArrayTrainer
    from embedmix.core.loop import NullCallbacks

    class StepClock(NullCallbacks):
        def __init__(self) -> None:
            self.last, self.steps = 0.0, 0

        def on_progress(self, progress) -> None:
            self.last, self.steps = time.perf_counter(), progress.step

        def should_stop(self) -> bool:  # the final evaluation is not what is measured
            return False

    parsed = validate_spec(spec)
    data = load_dataset(parsed)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    clock = StepClock()
    try:
        trainer = ArrayTrainer(parsed, data, clock)
        start = time.perf_counter()
        trainer.run()
    except (RuntimeError, MemoryError) as error:
        status = "OOM" if "memory" in str(error).lower() or isinstance(error, MemoryError) else f"error: {str(error)[:100]}"
        print(json.dumps({"status": status}))
        return
    seconds = clock.last - start
    print(json.dumps({
        "status": "ok", "steps": clock.steps, "seconds": seconds,
        "samples_per_s": clock.steps * parsed.train.batch_size / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "baseline_rss_mib": baseline,
    }))


def run_case(spec: dict, cap_gib: float) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--cap-gib", str(cap_gib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)  # a crash is a status
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
    return {"status": "OOM" if "memory" in tail[0].lower() else f"crashed: {tail[0][:100]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1024, help="a batch the plain loss can train")
    parser.add_argument("--big", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cap-gib", type=float, default=8.0)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child), args.cap_gib)
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, address space capped at {args.cap_gib:g} GiB")
    cases = [
        (f"plain, B = {args.small}", spec_for(args.small, args.steps * 4, None, None)),
        (f"cached (chunk {args.chunk}), B = {args.small}", spec_for(args.small, args.steps * 4, args.chunk, None)),
        (f"plain, B = {args.big}", spec_for(args.big, args.steps, None, None)),
        (f"cached (chunk {args.chunk}), B = {args.big}", spec_for(args.big, args.steps, args.chunk, None)),
        (f"MoCo v2, B = 256, queue {args.big}", spec_for(256, args.steps * 16, None, args.big)),
    ]
    print("| case | samples/s | peak RSS (MiB) | status |")
    print("|---|---:|---:|---|")
    for name, spec in cases:
        r = run_case(spec, args.cap_gib)
        if r["status"] == "ok":
            print(f"| {name} | {r['samples_per_s']:.0f} | {r['peak_rss_mib']:.0f} | ok, {r['steps']} steps |", flush=True)
        else:
            print(f"| {name} | - | - | {r['status']} |", flush=True)


if __name__ == "__main__":
    main()
