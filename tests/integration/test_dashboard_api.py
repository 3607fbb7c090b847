"""The API side of the dashboard: the pages under /ui, the embedding map route, and /metrics gauges.

A real application on SQLite with the real Redis (database REDIS_DB, this test
file's own), rows seeded through the store as the worker would write them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from embedmix.store import (
    NewEvent,
    add_events,
    artifact_store_from_url,
    create_job,
    transition,
    update_progress,
)
from embedmix.service.settings import Settings
from tests.conftest import flushed_redis
from tests.integration.conftest import auth

REDIS_DB = 6
BROKER_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
SPEC = {"name": "mapped", "dataset": {"name": "blobs"}, "train": {"epochs": 1}}


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    with flushed_redis(BROKER_URL) as client:
        yield client


@pytest.fixture
def settings(tmp_path: Path, broker: redis.Redis) -> Settings:
    """SQLite only; ``client``, ``db`` and ``keys`` (tests/integration/conftest.py) are built on these."""
    from embedmix.store.db import migrate

    url = f"sqlite:///{tmp_path / 'api.db'}"
    migrate(url)
    return Settings(
        database_url=url, redis_url=BROKER_URL, artifacts="db", work_dir=str(tmp_path), admin_key="em_" + "D" * 40
    )


def _job(db: sessionmaker[Session], owner_id: int, *, running: bool = False) -> str:
    with db() as session:
        job, _ = create_job(session, owner_id, SPEC, name="mapped")
        if running:
            assert transition(session, job.id, ["queued"], "running")
        session.commit()
        return job.id


def _succeed_with_map(db: sessionmaker[Session], settings: Settings, job_id: str, body: dict) -> None:
    """What a worker before migration 0003 left: an artifact holding the map, and an event naming it."""
    store = artifact_store_from_url(settings.artifacts)
    with db() as session:
        artifact = store.put(session, [json.dumps(body).encode()])
        add_events(session, job_id, [NewEvent(type="projection", message="map", data={
            "artifact_id": artifact.id, "sha256": artifact.sha256, "bytes": artifact.bytes, "methods": ["pca"]})])
        assert transition(session, job_id, ["queued"], "running")
        assert transition(session, job_id, ["running"], "succeeded")
        session.commit()


def test_pages_are_served_without_a_key_with_a_strict_content_security_policy(client):
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
    scripts = re.findall(r'src="([^"]+)"', page.text)
    assert scripts == ["app.js"]
    for name in ("app.js", "api.js", "charts.js", "job.js", "jobs.js", "compare.js", "new.js", "dom.js", "app.css"):
        asset = client.get(f"/ui/{name}")
        assert asset.status_code == 200, name
        text = asset.text.replace("http://www.w3.org/2000/svg", "")  # the SVG namespace is a name, not a fetch
        assert "http://" not in text and "https://" not in text, name
    assert client.get("/ui/nope.js").status_code == 404
    assert client.get("/ui/..%2Fui.py").status_code in (404, 422)


def test_the_map_is_served_to_its_owner_once_the_job_has_succeeded(client, db, settings, keys):
    body = {"format": 1, "points": 2, "maps": [{"method": "pca", "coords": [[0.0, 1.0], [1.0, 0.0]]}], "labels": [0, 1]}
    running = _job(db, keys.alice_id, running=True)
    response = client.get(f"/v1/jobs/{running}/projection", headers=auth(keys.alice))
    assert response.status_code == 409 and response.json()["error"]["code"] == "invalid_state"

    job_id = _job(db, keys.alice_id)
    _succeed_with_map(db, settings, job_id, body)
    response = client.get(f"/v1/jobs/{job_id}/projection", headers=auth(keys.alice))
    assert response.status_code == 200 and response.json() == body
    assert client.get(f"/v1/jobs/{job_id}/projection", headers=auth(keys.bob)).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/projection").status_code == 401


def test_a_succeeded_job_without_a_map_is_404(client, db, keys):
    job_id = _job(db, keys.alice_id, running=True)
    with db() as session:
        assert transition(session, job_id, ["running"], "succeeded")
        session.commit()
    response = client.get(f"/v1/jobs/{job_id}/projection", headers=auth(keys.alice))
    assert response.status_code == 404


def _gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_metrics_report_the_queue_depth_and_the_training_rate(client, db, keys, broker):
    for spec in (SPEC, {**SPEC, "resources": {"devices": 2}}):
        assert client.post("/v1/jobs", json=spec, headers=auth(keys.alice)).status_code == 201
    text = client.get("/metrics").text
    assert _gauge(text, "embedmix_queue_depth") == 2  # no worker here: both messages wait, each in its queue
    assert _gauge(text, "embedmix_training_steps_per_second") == 0  # the first scrape has no baseline

    job_id = _job(db, keys.alice_id, running=True)
    with db() as session:
        assert update_progress(session, job_id, step=10, epoch=0, total_steps=1000)
        session.commit()
    client.get("/metrics")
    with db() as session:
        assert update_progress(session, job_id, step=70, epoch=0)
        session.commit()
    assert _gauge(client.get("/metrics").text, "embedmix_training_steps_per_second") > 0
    broker.flushdb()
    assert _gauge(client.get("/metrics").text, "embedmix_queue_depth") == 0
