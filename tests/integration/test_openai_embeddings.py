"""``POST /v1/embeddings`` driven by the real ``openai`` package, against a real uvicorn server.

One small text job (the pairs of tests/integration/test_text_pairs_service.py)
is trained with the worker's task body; the OpenAI client, pointed at the
service, must get the vectors ``/embed`` gives, in both encodings, with tokens
counted, and another owner's job must be a 404 error object.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedmix.api import create_app
from embedmix.service.settings import Settings
from embedmix.store import artifact_store_from_url, create_api_key, create_owner, make_engine, make_session_factory
from embedmix.store.db import migrate
from tests.conftest import RedisServer, served_in_thread
from tests.integration.test_text_pairs_service import FOODS, NAMES, SPEC, _jsonl
from embedmix.worker.context import WorkerContext
from embedmix.worker.train_task import run_job

openai = pytest.importorskip("openai", reason="openai is in the dev extra: pip install '.[dev]'")
TEXTS = ["Greta likes sushi.", "The favourite food of Greta is sushi.", "Hiro likes cheese."]


@dataclass
class Served:
    url: str
    job_id: str
    alice: str
    bob: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("openai")
    redis_server = RedisServer(tmp)
    redis_server.start()
    database_url = f"sqlite:///{tmp / 'service.db'}"
    migrate(database_url)
    settings = Settings(database_url=database_url, redis_url=redis_server.url, artifacts="db", work_dir=str(tmp))
    session_factory = make_session_factory(make_engine(database_url))
    with session_factory() as session:
        alice, bob = create_owner(session, "alice"), create_owner(session, "bob")
        (_, alice_key), (_, bob_key) = create_api_key(session, alice.id), create_api_key(session, bob.id)
        session.commit()
    pairs = [{"anchor": f"{n} likes {f}.", "positive": f"The favourite food of {n} is {f}."}
             for n, f in itertools.product(NAMES, FOODS)]
    try:
        with served_in_thread(create_app(settings)) as port:
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {alice_key}"}, timeout=60) as http:
                dataset = http.post("/v1/datasets", files={"file": ("pairs.jsonl", _jsonl(pairs))}).json()["id"]
                job_id = http.post("/v1/jobs", json={**SPEC, "dataset": {"id": dataset}}).json()["id"]
            context = WorkerContext(settings, session_factory, artifact_store_from_url(settings.artifacts))
            assert run_job(job_id, context) == "succeeded"
            yield Served(url, job_id, alice_key, bob_key)
    finally:
        redis_server.kill()


def _client(served: Served, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=key, max_retries=0)


def _embed(served: Served, texts: list[str]) -> np.ndarray:
    response = httpx.post(f"{served.url}/v1/jobs/{served.job_id}/embed", json={"inputs": texts},
                          headers={"Authorization": f"Bearer {served.alice}"}, timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"])


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])  # None: the client's default (base64)
def test_the_openai_client_gets_the_vectors_embed_gives(served: Served, encoding_format: str | None) -> None:
    extra = {"encoding_format": encoding_format} if encoding_format else {}
    result = _client(served, served.alice).embeddings.create(model=served.job_id, input=TEXTS, **extra)
    assert result.model == served.job_id and [d.index for d in result.data] == [0, 1, 2]
    if encoding_format == "base64":  # asked for explicitly, the client hands the strings over as they came
        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in result.data])
    else:
        got = np.asarray([d.embedding for d in result.data])
    np.testing.assert_allclose(got, _embed(served, TEXTS), atol=1e-6)
    assert result.usage.prompt_tokens == result.usage.total_tokens > len(TEXTS)


def test_one_string_is_one_embedding(served: Served) -> None:
    result = _client(served, served.alice).embeddings.create(model=served.job_id, input=TEXTS[0])
    assert len(result.data) == 1
    np.testing.assert_allclose(result.data[0].embedding, _embed(served, TEXTS[:1])[0], atol=1e-6)


def test_another_owners_job_is_a_404_error_object(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        _client(served, served.bob).embeddings.create(model=served.job_id, input=TEXTS)
    assert raised.value.body["code"] == "not_found" and raised.value.body["param"] == "model"
    with pytest.raises(openai.AuthenticationError):
        _client(served, "em_not-a-key").embeddings.create(model=served.job_id, input=TEXTS)


def test_a_dimension_the_model_lacks_is_refused(served: Served) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        _client(served, served.alice).embeddings.create(model=served.job_id, input=TEXTS, dimensions=64)
    assert "384 dimensions" in raised.value.message


def test_a_bad_input_is_named_as_this_body_names_it(served: Served) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        _client(served, served.alice).embeddings.create(model=served.job_id, input=["fine", ""])
    assert raised.value.body["param"] == "input"
