"""Text pairs through the service: upload a .jsonl file, submit a minilm job, train it with the
worker's task body, embed strings over HTTP.

Real parts: the API in-process (TestClient over ``create_app``), SQLite, a
throwaway redis-server on a free port as broker (so no shared Redis database is
touched), and ``run_job`` as a worker process runs it. One small job (51 train
pairs, one epoch, max_length 16).
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from embedmix.api import create_app
from embedmix.store import artifact_store_from_url, create_api_key, create_owner, make_engine, make_session_factory
from embedmix.store.db import migrate
from embedmix.service.settings import Settings
from embedmix.worker.context import WorkerContext
from embedmix.worker.train_task import run_job
from tests.conftest import RedisServer

NAMES = ["Alice", "Bruno", "Chen", "Dmitri", "Esther", "Farid", "Greta", "Hiro"]
FOODS = ["apples", "noodles", "cheese", "lentil soup", "sushi", "pancakes", "olives", "chocolate"]
SPEC: dict[str, Any] = {
    "name": "text-pairs",
    "model": {"encoder": "minilm", "embedding_dim": 384, "params": {"max_length": 16}},
    "objective": {"loss": "mnrl"},
    "train": {"epochs": 1, "batch_size": 17, "lr": 5e-5, "device": "cpu"},
    "export": {"formats": ["safetensors"]},
}


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_upload_jsonl_train_minilm_and_embed_strings(tmp_path: Path, redis_server: RedisServer) -> None:
    database_url = f"sqlite:///{tmp_path / 'service.db'}"
    migrate(database_url)
    settings = Settings(database_url=database_url, redis_url=redis_server.url, artifacts="db", work_dir=str(tmp_path))
    session_factory = make_session_factory(make_engine(database_url))
    with session_factory() as session:
        owner = create_owner(session, "alice")
        _, key = create_api_key(session, owner.id)
        session.commit()
    headers = {"Authorization": f"Bearer {key}"}
    pairs = [
        {"anchor": f"{name} likes {food}.", "positive": f"The favourite food of {name} is {food}."}
        for name, food in itertools.product(NAMES, FOODS)
    ]

    with TestClient(create_app(settings)) as client:
        bad = _jsonl(pairs[:3]) + b'{"anchor": "x", "positive": ""}\n'
        refused = client.post("/v1/datasets", files={"file": ("pairs.jsonl", bad)}, headers=headers)
        assert refused.status_code == 422, refused.text
        assert "line 4: 'positive' is empty" in refused.json()["error"]["message"]

        uploaded = client.post("/v1/datasets", files={"file": ("Pairs.JSONL", _jsonl(pairs))}, headers=headers)
        assert uploaded.status_code == 201, uploaded.text
        dataset = uploaded.json()
        assert (dataset["format"], dataset["rows"], dataset["info"]["input_shape"]) == ("jsonl", 64, [])

        wrong = client.post("/v1/jobs", json={**SPEC, "dataset": {"id": dataset["id"]}, "model": {"encoder": "mlp"}},
                            headers=headers)
        assert wrong.status_code == 422 and wrong.json()["error"]["param"] == "model.encoder", wrong.text
        submitted = client.post("/v1/jobs", json={**SPEC, "dataset": {"id": dataset["id"]}}, headers=headers)
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]

        artifacts = artifact_store_from_url(settings.artifacts)
        assert run_job(job_id, WorkerContext(settings, session_factory, artifacts)) == "succeeded"

        events = client.get(f"/v1/jobs/{job_id}/events", headers=headers).json()["data"]
        (start,) = [e["message"] for e in events if e["type"] == "log" and e["message"].startswith(("fine", "train"))]
        assert start == "fine-tuning all-MiniLM-L6-v2 on cpu"
        card = client.get(f"/v1/jobs/{job_id}/model/card", headers=headers).json()
        assert card["input"]["type"] == "text" and card["data"]["train_rows"] == 51
        texts = ["Greta likes sushi.", "The favourite food of Greta is sushi.", "Hiro likes cheese."]
        embedded = client.post(f"/v1/jobs/{job_id}/embed", json={"inputs": texts}, headers=headers)
        assert embedded.status_code == 200, embedded.text
        z = embedded.json()["embeddings"]
        assert len(z) == 3 and len(z[0]) == 384
        dot = [sum(a * b for a, b in zip(z[0], other)) for other in z[1:]]
        assert dot[0] > dot[1], "the paraphrase is closer than another pair's anchor"

        numbers = client.post(f"/v1/jobs/{job_id}/embed", json={"inputs": [[1.0, 2.0]]}, headers=headers)
        assert numbers.status_code == 422 and "must be a string" in numbers.json()["error"]["message"]
        packed = client.post(f"/v1/jobs/{job_id}/embed", json={"inputs_base64": "AAAAAA=="}, headers=headers)
        assert packed.status_code == 422 and packed.json()["error"]["param"] == "inputs_base64"
        assert "text model" in packed.json()["error"]["message"]
        as_bytes = client.post(f"/v1/jobs/{job_id}/embed", json={"inputs": texts, "encoding_format": "base64"},
                               headers=headers).json()
        matrix = np.frombuffer(base64.b64decode(as_bytes["embeddings"]), dtype="<f4").reshape(3, 384)
        np.testing.assert_array_equal(matrix, np.array(z, dtype=np.float32))
