"""int8 ONNX (the `onnx_int8` export) against fp32 ONNX: inference latency, same inputs, same session options.

Two models, each exported as a job exports it (`core.export`): an array model (conv1d
on mnist1d, one epoch) and MiniLM (all-MiniLM-L6-v2 as shipped, max_length 128, not
fine-tuned: fine-tuning changes the weights, not the graph) on sentences padded to the
batch's longest (the row says how many tokens). Each side gets one
onnxruntime session with identical `SessionOptions` (`--threads` intra-op threads,
default: all cores) and the same fixed batch; after a warm-up, runs alternate fp32 and
int8, each side going first in every other repeat, and the median of `--repeats`
timed runs is kept. The ratio is int8 / fp32 (below 1: int8 is faster). It also
prints the mean cosine of int8 to fp32 on that batch and both files' sizes.

    .venv/bin/python bench/onnx_int8.py [--repeats 30] [--batch 64] [--threads 0]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from embedmix.core.data import load_dataset
from embedmix.core.export import TEXT_INT8, Int8Options, array_export_inputs, quantize_int8, save_onnx, text_export_inputs
from embedmix.core.models.text_encoder import TextEncoder
from embedmix.core.spec import validate_spec
from embedmix.core.train import train

SENTENCES = ["The quick brown fox jumps over the lazy dog near the river bank at dawn.",
             "Embedding models map text to vectors so that similar meanings land close together.",
             "How do I reset my password if I no longer have access to my email account?",
             "A short one."]


def array_case(work: Path, batch: int) -> tuple[Path, Int8Options, dict[str, np.ndarray]]:
    spec = validate_spec({"name": "bench", "dataset": {"name": "mnist1d"}, "model": {"encoder": "conv1d", "embedding_dim": 64},
                          "train": {"epochs": 1, "batch_size": 256, "device": "cpu"}, "eval": {"metrics": ["precision_at_1"]}})
    data = load_dataset(spec)
    result = train(spec, data)
    path = work / "conv1d.onnx"
    save_onnx(array_export_inputs(result.encoder.cpu().eval(), spec, data), path, spec.export.onnx_opset)
    return path, Int8Options(), {"input": data.x_test[:batch].float().numpy()}


def text_case(work: Path, batch: int) -> tuple[Path, Int8Options, dict[str, np.ndarray]]:
    encoder = TextEncoder(max_length=128).eval()
    spec = validate_spec({"name": "bench", "dataset": {"path": str(work / "unused.jsonl")},
                          "model": {"encoder": "minilm", "embedding_dim": 384, "params": {"max_length": 128}},
                          "objective": {"loss": "mnrl"}})
    path = work / "minilm.onnx"
    save_onnx(text_export_inputs(encoder, spec), path, spec.export.onnx_opset)
    texts = [f"{s} ({i})" for i, s in zip(range(batch), itertools.cycle(SENTENCES))]
    tokens = encoder.tokenize(texts)
    return path, TEXT_INT8, {"input_ids": tokens.ids.long().numpy(), "attention_mask": tokens.mask.long().numpy()}


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    sess.run(["embedding"], feed)
    return time.perf_counter() - start


def compare(name: str, fp32: Path, options: Int8Options, feed: dict[str, np.ndarray], args: Any) -> None:
    int8 = fp32.with_suffix(".int8.onnx")
    quantize_int8(fp32, int8, options)
    sessions = {"fp32": session(fp32, args.threads), "int8": session(int8, args.threads)}
    outputs = {side: s.run(["embedding"], feed)[0] for side, s in sessions.items()}
    for _ in range(3):
        for s in sessions.values():
            s.run(["embedding"], feed)
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for repeat in range(args.repeats):
        order = ["fp32", "int8"] if repeat % 2 == 0 else ["int8", "fp32"]
        for side in order:
            times[side].append(timed(sessions[side], feed))
    median = {side: statistics.median(values) for side, values in times.items()}
    cosine = float((outputs["fp32"] * outputs["int8"]).sum(1).mean())
    sizes = {side: path.stat().st_size / 1e6 for side, path in (("fp32", fp32), ("int8", int8))}
    print(f"| {name} | {len(next(iter(feed.values())))} | {median['fp32'] * 1e3:.2f} | {median['int8'] * 1e3:.2f} | "
          f"{median['int8'] / median['fp32']:.2f} | {cosine:.4f} | {sizes['fp32']:.1f} / {sizes['int8']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads per session; 0: onnxruntime's default")
    args = parser.parse_args()
    print("| model | batch | fp32 median ms | int8 median ms | int8 / fp32 | mean cosine | MB fp32 / int8 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, case in (("conv1d / mnist1d", array_case), ("MiniLM-L6", text_case)):
            path, options, feed = case(work, args.batch)
            if "input_ids" in feed:
                name += f", {feed['input_ids'].shape[1]} tokens"
            compare(name, path, options, feed, args)


if __name__ == "__main__":
    main()
