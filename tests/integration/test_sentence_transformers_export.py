"""A text job's downloads load in the tools people already run, and give what ``/embed`` gives.

One small minilm job (51 train pairs, one epoch, max_length 16) goes through
the service as a user would run it: upload a .jsonl, submit, the worker's task
body trains and exports it, the API serves the files. Then, on the downloaded
bytes alone:

- ``sentence_transformers``: the real sentence-transformers library, in a child
  process with the Hugging Face hub switched off and an empty cache
  (HF_HUB_OFFLINE=1), loads the unzipped folder; ``encode`` equals ``/embed``;
- ``onnx``: onnxruntime fed by the zip's own tokenizer.json (the tokenizers
  library) equals ``/embed``;
- ``onnx_int8``: the same bundle layout, close to fp32, and its card entry
  records the parity on the test set.

The texts compared include one longer than max_length (truncation) and a batch
of different lengths (padding).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from tokenizers import Tokenizer

from embedmix.api import create_app
from embedmix.service.settings import Settings
from embedmix.store import artifact_store_from_url, create_api_key, create_owner, make_engine, make_session_factory
from embedmix.store.db import migrate
from tests.conftest import RedisServer
from embedmix.worker.context import WorkerContext
from embedmix.worker.train_task import run_job

NAMES = ["Alice", "Bruno", "Chen", "Dmitri", "Esther", "Farid", "Greta", "Hiro"]
FOODS = ["apples", "noodles", "cheese", "lentil soup", "sushi", "pancakes", "olives", "chocolate"]
FORMATS = ["safetensors", "onnx", "onnx_int8", "sentence_transformers"]
SPEC: dict[str, Any] = {
    "name": "text-pairs",
    "model": {"encoder": "minilm", "embedding_dim": 384, "params": {"max_length": 16}},
    "objective": {"loss": "mnrl"},
    "train": {"epochs": 1, "batch_size": 17, "lr": 5e-5, "device": "cpu"},
    "export": {"formats": FORMATS},
}
TEXTS = [
    "Greta likes sushi.",
    "The favourite food of Greta is sushi.",
    "Hiro",
    "A much longer sentence than sixteen word pieces, so that the tokenizer has to cut it at its max_length.",
]
LOAD_OFFLINE = """
import json, sys
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
texts = json.loads(sys.argv[2])
print(json.dumps({"embeddings": model.encode(texts, normalize_embeddings=False).tolist(),
                  "max_seq_length": model.max_seq_length}))
"""


@dataclass
class TextJob:
    client: TestClient
    headers: dict[str, str]
    job_id: str
    card: dict[str, Any]
    embedded: np.ndarray  # /embed of TEXTS


@pytest.fixture(scope="module")
def text_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextJob]:
    tmp = tmp_path_factory.mktemp("service")
    redis_server = RedisServer(tmp)
    redis_server.start()
    database_url = f"sqlite:///{tmp / 'service.db'}"
    migrate(database_url)
    settings = Settings(database_url=database_url, redis_url=redis_server.url, artifacts="db", work_dir=str(tmp))
    session_factory = make_session_factory(make_engine(database_url))
    with session_factory() as session:
        _, key = create_api_key(session, create_owner(session, "alice").id)
        session.commit()
    headers = {"Authorization": f"Bearer {key}"}
    pairs = [{"anchor": f"{name} likes {food}.", "positive": f"The favourite food of {name} is {food}."}
             for name, food in itertools.product(NAMES, FOODS)]
    lines = "".join(json.dumps(pair) + "\n" for pair in pairs).encode()
    try:
        with TestClient(create_app(settings)) as client:
            dataset = client.post("/v1/datasets", files={"file": ("pairs.jsonl", lines)}, headers=headers).json()
            submitted = client.post("/v1/jobs", json={**SPEC, "dataset": {"id": dataset["id"]}}, headers=headers)
            assert submitted.status_code == 201, submitted.text
            job_id = submitted.json()["id"]
            context = WorkerContext(settings, session_factory, artifact_store_from_url(settings.artifacts))
            assert run_job(job_id, context) == "succeeded"
            card = client.get(f"/v1/jobs/{job_id}/model/card", headers=headers).json()
            embedded = client.post(f"/v1/jobs/{job_id}/embed", json={"inputs": TEXTS}, headers=headers)
            assert embedded.status_code == 200, embedded.text
            yield TextJob(client, headers, job_id, card, np.array(embedded.json()["embeddings"], dtype=np.float32))
    finally:
        redis_server.kill()


def download(job: TextJob, fmt: str, to: Path) -> Path:
    """GET the model in `fmt` and unzip it into `to`: what a user does with the file."""
    response = job.client.get(f"/v1/jobs/{job.job_id}/model", params={"format": fmt}, headers=job.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    file = job.card["files"][fmt]["file"]
    assert file.endswith(".zip") and f'filename="text-pairs-{file}"' in response.headers["content-disposition"]
    archive = to / file
    archive.write_bytes(response.content)
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(to / "unzipped")
    return to / "unzipped"


def onnx_with_bundled_tokenizer(folder: Path, texts: list[str]) -> np.ndarray:
    """The bundle's README recipe: its tokenizer.json makes the int64 inputs, onnxruntime runs model.onnx."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    encodings = tokenizer.encode_batch(texts)
    feed = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}
    return ort.InferenceSession(str(folder / "model.onnx")).run(["embedding"], feed)[0]


def test_sentence_transformers_loads_the_folder_offline_and_encodes_as_embed(text_job: TextJob, tmp_path: Path) -> None:
    folder = download(text_job, "sentence_transformers", tmp_path)
    assert {"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "1_Pooling/config.json",
            "config.json", "model.safetensors", "tokenizer.json"} <= {
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert json.loads((folder / "1_Pooling/config.json").read_text())["pooling_mode_mean_tokens"] is True
    empty_cache = tmp_path / "hf-home"
    empty_cache.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(empty_cache), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", LOAD_OFFLINE, str(folder), json.dumps(TEXTS)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["max_seq_length"] == 16
    np.testing.assert_allclose(np.array(loaded["embeddings"]), text_job.embedded, atol=1e-5)


def test_onnx_bundle_with_its_tokenizer_equals_embed(text_job: TextJob, tmp_path: Path) -> None:
    folder = download(text_job, "onnx", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "inputs.json", "model.onnx", "tokenizer.json"]
    described = json.loads((folder / "inputs.json").read_text())
    assert described["inputs"]["input_ids"]["dtype"] == "int64" and described["output"]["name"] == "embedding"
    # Equal, not close: /embed runs this very graph on the same inputs (core.onnx_encoder).
    np.testing.assert_array_equal(onnx_with_bundled_tokenizer(folder, TEXTS), text_job.embedded)


def test_int8_bundle_is_close_to_fp32_and_its_card_records_the_parity(text_job: TextJob, tmp_path: Path) -> None:
    folder = download(text_job, "onnx_int8", tmp_path)
    got = onnx_with_bundled_tokenizer(folder, TEXTS)
    cosine = (got / np.linalg.norm(got, axis=1, keepdims=True) * text_job.embedded).sum(1)
    assert cosine.min() > 0.97, cosine
    parity = text_job.card["files"]["onnx_int8"]["parity"]
    assert parity["test_samples"] == 2 * text_job.card["data"]["test_rows"]
    assert parity["mean_cosine_to_fp32"] >= 0.99
    p1 = parity["metrics"]["precision_at_1"]
    assert p1["fp32"] == pytest.approx(text_job.card["metrics"]["precision_at_1"], abs=1e-4)
    assert p1["change"] == pytest.approx(p1["int8"] - p1["fp32"])


def test_embed_runs_the_onnx_bundle_and_agrees_with_the_safetensors_encoder(text_job: TextJob) -> None:
    """The service serves a text job from its ONNX zip (onnxruntime, the zip's tokenizer); the
    safetensors file rebuilt in torch gives the same vectors, and usage counts each text's own
    tokens, not the padding of the batch."""
    from embedmix.core.export import load_safetensors

    response = text_job.client.get(f"/v1/jobs/{text_job.job_id}/model", headers=text_job.headers)
    assert response.status_code == 200
    weights = Path(text_job.client.app.state.runtime.settings.work_dir) / "served.safetensors"
    weights.write_bytes(response.content)
    torch_vectors = load_safetensors(weights)(TEXTS).detach().numpy()
    np.testing.assert_allclose(text_job.embedded, torch_vectors, atol=1e-5)
    used = text_job.client.post("/v1/embeddings", json={"model": text_job.job_id, "input": TEXTS},
                                headers=text_job.headers).json()["usage"]["prompt_tokens"]
    own = load_safetensors(weights).tokenizer.encode_batch(TEXTS)
    assert used == sum(len(e.ids) for e in own) < len(TEXTS) * max(len(e.ids) for e in own)
