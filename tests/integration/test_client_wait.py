"""``EmbedmixClient.wait``: the real client against a real uvicorn server, a job run by the worker's task body."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from embedmix.api import create_app
from embedmix.client import EmbedmixClient
from embedmix.service.settings import Settings
from embedmix.store import artifact_store_from_url, create_api_key, create_owner, make_engine, make_session_factory
from embedmix.store.db import migrate
from tests.conftest import RedisServer, served_in_thread
from embedmix.worker.context import WorkerContext
from embedmix.worker.train_task import run_job

SPEC = {"name": "wait", "dataset": {"name": "mnist1d", "size": 300}, "model": {"encoder": "mlp", "width": 16},
        "train": {"epochs": 3, "batch_size": 32, "device": "cpu"}, "eval": {"metrics": ["precision_at_1"]}}


def test_wait_follows_a_job_to_its_end_and_reports_progress(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(database_url)
    settings = Settings(database_url=database_url, redis_url=redis_server.url, artifacts="db", work_dir=str(tmp_path))
    session_factory = make_session_factory(make_engine(database_url))
    with session_factory() as session:
        _, key = create_api_key(session, create_owner(session, "alice").id)
        session.commit()
    seen: list[dict[str, Any]] = []
    with served_in_thread(create_app(settings)) as port, EmbedmixClient(f"http://127.0.0.1:{port}", key) as client:
        job_id = client.submit(SPEC)["id"]
        with pytest.raises(TimeoutError, match="still queued"):
            client.wait(job_id, timeout=0.2, poll_s=0.05)
        context = WorkerContext(settings, session_factory, artifact_store_from_url(settings.artifacts))
        worker = threading.Thread(target=run_job, args=(job_id, context))
        worker.start()
        job = client.wait(job_id, on_progress=seen.append, poll_s=0.05)
        worker.join()
        monkeypatch.chdir(tmp_path)
        downloaded = client.download(job_id, "onnx")  # named as the server names it
        assert downloaded == Path("wait-model.onnx") and downloaded.stat().st_size > 0
    assert job["status"] == "succeeded" and job["metrics"]["precision_at_1"] > 0
    assert seen[-1]["status"] == "succeeded"
    steps = [j["progress"]["step"] for j in seen]
    assert steps == sorted(steps) and steps[-1] == job["progress"]["total_steps"]
    assert len({(j["status"], j["progress"]["step"]) for j in seen}) == len(seen)  # only changes are reported
