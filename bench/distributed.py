"""N ranks against one device on the same global batch: steps per second and the loss curves.

Both sides train the same spec (conv1d on mnist1d, multi_similarity, Metrix, batch 512) for
the same steps. On the CPU (the default) the ranks are gloo processes of one thread
each, so the 2-rank run uses two cores where the one-device run uses one; with
``--device cuda`` they are nccl ranks, one GPU each (``bench/gpu.sh multi`` runs that
on every GPU of the machine). Steps per second are each run's steps over its
`TrainResult.seconds` (the final evaluation included on both sides). The loss
curves are every step's train/loss; their largest difference is float32 rounding
of the split forward.

    python bench/distributed.py [--steps 40] [--batch 512] [--ranks 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from embedmix.core.array_train import ArrayTrainer
from embedmix.core.data import load_dataset
from embedmix.core.launch import exit_rank
from embedmix.core.loop import NullCallbacks
from embedmix.core.spec import validate_spec


class LossCurve(NullCallbacks):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        if "train/loss" in values:
            self.losses.append(values["train/loss"])


def spec(steps: int, batch: int, ranks: int, device: str) -> dict:
    return {"name": "bench-ranks", "dataset": {"name": "mnist1d", "size": int(batch * steps / 0.8) + 1},
            "model": {"encoder": "conv1d", "embedding_dim": 64, "width": 64},
            "objective": {"loss": "multi_similarity"}, "mixup": {"method": "metrix", "alpha": 1.0, "weight": 0.5},
            "train": {"epochs": 1, "batch_size": batch, "seed": 0, "optimizer": "sgd", "lr": 0.05, "device": device},
            "eval": {"metrics": [], "every_epochs": 0}, "resources": {"devices": ranks}}


def run(spec_dict: dict) -> tuple[float, list[float]]:
    torch.set_num_threads(1)
    resolved = validate_spec(spec_dict)
    curve = LossCurve()
    result = ArrayTrainer(resolved, load_dataset(resolved), curve).run()
    return result.step / result.seconds, curve.losses


def rank_main(rank: int, world: int, init: str, out: str, spec_dict: dict) -> None:
    cuda = spec_dict["train"]["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    rate, losses = run(spec_dict)
    if rank == 0:
        Path(out).write_text(json.dumps({"rate": rate, "losses": losses}))
    dist.destroy_process_group()
    exit_rank()  # the gloo teardown at interpreter exit can abort a finished rank


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < args.ranks:
        raise SystemExit(f"--ranks {args.ranks} needs as many GPUs; this machine has {torch.cuda.device_count()}")
    s = spec(args.steps, args.batch, args.ranks, args.device)
    one_rate, one_losses = run(s)  # the same spec in one process without a group: one device, the same global batches
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        mp.spawn(rank_main, args=(args.ranks, os.path.join(tmp, "init"), out, s), nprocs=args.ranks, join=True)
        many = json.loads(Path(out).read_text())
    diff = max(abs(a - b) for a, b in zip(one_losses, many["losses"]))
    print(f"{args.device}: steps {len(one_losses)}  one device {one_rate:.2f} steps/s  {args.ranks} ranks "
          f"{many['rate']:.2f} steps/s  ratio {many['rate'] / one_rate:.2f}  max loss-curve difference {diff:.2e}")


if __name__ == "__main__":
    main()
