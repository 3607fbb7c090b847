"""Engine steps per second against a plain PyTorch loop with the same model, loss and batches.

The plain loop is what a user would write by hand: the same network, loss, optimizer
and data order, with no callbacks, checkpoints, schedules or evaluation. Its AdamW
has torch's defaults (one op per tensor on the CPU); the engine's is the fused
kernel, which is one of the engine's optimisations under test. The engine
run is timed from the start of `run()` to its last step and includes everything it
does per step for a real job (learning-rate schedule, finiteness check, progress
reports, per-epoch checkpoint serialisation); the final evaluation and export come
after the last step and are not counted. Runs alternate, each side going first
in every other repeat, and the median of `--repeats` is kept.

    python bench/engine.py [--repeats 3] [--epochs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from embedmix.core import losses
from embedmix.core.data import load_dataset
from embedmix.core.models import build_net
from embedmix.core.spec import validate_spec
from embedmix.core.array_train import ArrayTrainer
from embedmix.core.loop import NullCallbacks, epoch_order

CASES = {
    "mlp/blobs": {"dataset": {"name": "blobs", "size": 20000, "params": {"num_features": 64}},
                  "model": {"encoder": "mlp", "width": 256, "embedding_dim": 64}},
    "conv1d/mnist1d": {"dataset": {"name": "mnist1d"}, "model": {"encoder": "conv1d", "embedding_dim": 64}},
}


def make_spec(case: str, epochs: int):
    return validate_spec({"name": "bench", **CASES[case], "objective": {"loss": "supcon"},
                          "train": {"epochs": epochs, "batch_size": 256, "lr": 1e-3, "seed": 0},
                          "eval": {"metrics": ["precision_at_1"], "every_epochs": 0}})


def plain_loop(spec, data) -> tuple[float, int]:
    """A hand-written loop: same net, loss, optimizer and batches, nothing else."""
    torch.manual_seed(spec.train.seed)
    net = build_net(spec.model, data.x_train)
    loss_fn = losses.build(spec.objective.loss, num_classes=data.num_classes, embedding_dim=spec.model.embedding_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay)
    x, y, b = data.x_train, data.y_train, spec.train.batch_size
    steps_per_epoch = len(x) // b
    start = time.perf_counter()
    for epoch in range(spec.train.epochs):
        order = epoch_order(spec.train.seed, epoch, len(x))
        for i in range(steps_per_epoch):
            idx = order[i * b:(i + 1) * b]
            loss = loss_fn(net(net.encoder.preprocess(x[idx])), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start, spec.train.epochs * steps_per_epoch


class _StepClock(NullCallbacks):
    """Null callbacks that note when the last training step was reported."""

    def __init__(self) -> None:
        self.last = 0.0

    def on_progress(self, progress) -> None:
        self.last = time.perf_counter()


def engine(spec, data) -> tuple[float, int]:
    """Seconds from the start of `run()` to the last step, checkpoints and progress reports included.

    The final evaluation and export that follow the last step are not training
    steps, and the plain loop has none, so they are left out of both clocks.
    """
    clock = _StepClock()
    trainer = ArrayTrainer(spec, data, clock)
    start = time.perf_counter()
    result = trainer.run()
    return clock.last - start, result.step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| case | plain loop steps/s | engine steps/s | engine / plain |")
    print("|---|---|---|---|")
    for case in CASES:
        spec = make_spec(case, args.epochs)
        data = load_dataset(spec)
        plain, eng = [], []
        runs = [(plain_loop, plain), (engine, eng)]
        for i in range(args.repeats):
            # Which side runs first alternates: the second of a pair ran measurably slower
            # on this VM whichever it was (engine / plain 0.93 plain-first, 1.09 engine-first).
            for fn, rates in runs if i % 2 == 0 else runs[::-1]:
                seconds, steps = fn(spec, data)
                rates.append(steps / seconds)
        p, e = statistics.median(plain), statistics.median(eng)
        print(f"| {case} | {p:.1f} | {e:.1f} | {e / p:.3f} |")


if __name__ == "__main__":
    main()
