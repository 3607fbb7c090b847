"""GPU figures: resnet18 + supcon at batch 512 on CIFAR-shaped synthetic data, engine against a plain loop.

Run through bench/gpu.sh on a machine with a CUDA GPU. Three runs of the same
network, loss, batches and data order, each after its own warm-up epoch
(cuDNN autotuning, compilation), each timed over the epochs that follow:

* plain: what a user writes by hand: the net on the GPU, the data on the GPU,
  bf16 autocast, AdamW with its defaults; nothing else;
* engine: `core.array_train.ArrayTrainer` (bf16 autocast, TF32, channels_last, fused AdamW,
  its schedule, progress reports and per-epoch checkpoints included);
* engine + compile: the same with `train.compile`.

For each: training samples per second, peak GPU memory (`max_memory_allocated`)
and the achieved fraction of the GPU's dense bf16 peak, from the FLOPs of one
training step counted by `torch.utils.flop_counter` (convolutions and matmuls).
Output rows are in BENCHMARKS.md's table format. `--tiny` runs a few small
batches on the CPU to check the script itself.

    bench/gpu.sh                 # on the GPU machine, under 8 minutes
    bench/gpu.sh --tiny          # dry run on the CPU, about a minute
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from embedmix.core import losses
from embedmix.core.data import load_dataset
from embedmix.core.models import build_net
from embedmix.core.spec import validate_spec
from embedmix.core.array_train import ArrayTrainer
from embedmix.core.loop import NullCallbacks, epoch_order

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.5, "H100 SXM": 989.5, "H100 PCIe": 756.0, "H100": 989.5, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def write_data(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-shaped (3, 32, 32) images: 10 class templates plus noise, as an .npz the engine reads."""
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((10, 3, 32, 32)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % 10)  # every class present, also in a dry run
        return templates[y] + rng.standard_normal((n, 3, 32, 32), dtype=np.float32), y

    (x, y), (x_test, y_test) = draw(n_train), draw(n_test)
    path = folder / "cifar_shaped.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def make_spec(path: Path, batch: int, epochs: int, device: str, compile_: bool):
    return validate_spec({
        "name": "gpu-bench",
        "dataset": {"path": str(path), "split": {"kind": "given"}},
        "model": {"encoder": "resnet18", "embedding_dim": 128},
        "objective": {"loss": "supcon"},
        "train": {"epochs": epochs, "batch_size": batch, "lr": 1e-3, "seed": 0, "device": device, "compile": compile_},
        "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    })


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(spec, data, device: torch.device) -> tuple[float, int]:
    """Seconds and steps after the warm-up epoch of a hand-written bf16 loop."""
    torch.manual_seed(spec.train.seed)
    net = build_net(spec.model, data.x_train).to(device)
    loss_fn = losses.build("supcon")
    opt = torch.optim.AdamW(net.parameters(), lr=spec.train.lr, weight_decay=spec.train.weight_decay)
    x, y, b = data.x_train.to(device), data.y_train.to(device), spec.train.batch_size
    steps = len(x) // b
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    start = 0.0
    for epoch in range(spec.train.epochs):
        if epoch == 1:
            sync(device)
            start = time.perf_counter()
        order = epoch_order(spec.train.seed, epoch, len(x)).to(device)
        for i in range(steps):
            idx = order[i * b:(i + 1) * b]
            with autocast:
                z = net(net.encoder.preprocess(x[idx]))
            loss = loss_fn(z.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sync(device)
    return time.perf_counter() - start, (spec.train.epochs - 1) * steps


class StepClock(NullCallbacks):
    """Marks the end of the warm-up epoch and the last step (the progress report follows each step)."""

    def __init__(self, device: torch.device, warmup_steps: int) -> None:
        self.device, self.warmup_steps = device, warmup_steps
        self.start = self.last = 0.0
        self.fell_back = False

    def on_progress(self, progress) -> None:
        if progress.step in (self.warmup_steps, progress.total_steps):
            sync(self.device)
            now = time.perf_counter()
            self.start, self.last = (now, self.last) if progress.step == self.warmup_steps else (self.start, now)

    def on_metrics(self, step, epoch, values) -> None:
        self.fell_back |= "train/compile_fallback" in values


def engine(spec, data, device: torch.device) -> tuple[float, int, bool]:
    steps_per_epoch = len(data.x_train) // spec.train.batch_size
    clock = StepClock(device, steps_per_epoch)
    ArrayTrainer(spec, data, clock, device).run()
    return clock.last - clock.start, (spec.train.epochs - 1) * steps_per_epoch, clock.fell_back


def flops_per_step(spec, data, device: torch.device) -> float:
    """FLOPs of one forward + backward at the spec's batch size, as the flop counter sees them."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_net(spec.model, data.x_train).to(device)
    x = data.x_train[: spec.train.batch_size].to(device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        losses.build("supcon")(net(net.encoder.preprocess(x)).float(), data.y_train[: len(x)].to(device)).backward()
    return float(counter.get_total_flops())


def measure(name: str, fn, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"name": name, "seconds": out[0], "steps": out[1], "peak_mib": peak,
            "note": " (compile failed: eager)" if len(out) > 2 and out[2] else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: batch 8, 2 epochs of 3 steps")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=4, help="the first is warm-up")
    parser.add_argument("--steps", type=int, default=60, help="steps per epoch")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the table")
    args = parser.parse_args()
    if args.tiny:
        args.batch, args.epochs, args.steps = 8, 2, 3  # 24 images: two or more of each class
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    with tempfile.TemporaryDirectory() as tmp:
        path = write_data(Path(tmp), args.batch * args.steps, 1000 if not args.tiny else 50)
        spec = make_spec(path, args.batch, args.epochs, device.type, False)
        data = load_dataset(spec)
        flops = flops_per_step(spec, data, device)
        rows = [measure("plain PyTorch loop (bf16 autocast, AdamW)", lambda: plain_loop(spec, data, device), device),
                measure("embedmix engine", lambda: engine(spec, data, device), device)]
        if not args.no_compile:
            compiled = make_spec(path, args.batch, args.epochs, device.type, True)
            rows.append(measure("embedmix engine, train.compile", lambda: engine(compiled, data, device), device))
    peak = peak_tflops(device, args.peak_tflops)
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {name}, torch {torch.__version__}, "
          f"resnet18 + supcon, batch {args.batch}, {args.steps} steps/epoch, {args.epochs - 1} timed epochs after 1 warm-up; "
          f"{flops / 1e9:.1f} GFLOP per step (flop counter), bf16 peak {peak or 'unknown'} TFLOP/s")
    print("| run | samples/s | steps/s | / plain | peak GPU memory (MiB) | fraction of bf16 peak |")
    print("|---|---:|---:|---:|---:|---:|")
    base = rows[0]["steps"] / rows[0]["seconds"]
    for r in rows:
        rate = r["steps"] / r["seconds"]
        fraction = f"{flops * rate / (peak * 1e12):.3f}" if peak else "n/a"
        print(f"| {r['name']}{r['note']} | {rate * args.batch:.0f} | {rate:.2f} | {rate / base:.2f} | "
              f"{r['peak_mib']:.0f} | {fraction} |")


if __name__ == "__main__":
    main()
