"""The status poll's short way (api.poll): what it answers is exactly what the route answers,
and everything it cannot answer reaches the route unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

import embedmix.api.poll
from embedmix.api.app import create_app
from embedmix.service.settings import Settings
from tests.conftest import wait_for
from tests.integration.conftest import auth, owner_with_keys

SPEC = {"name": "polled", "dataset": {"name": "blobs", "size": 100}, "train": {"epochs": 1}}


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as test_client:
        wait_for(lambda: test_client.app.state.runtime.keys.trusted, 10, "the key cache to be trusted")  # type: ignore[attr-defined]
        yield test_client


@pytest.fixture
def short_way(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The job ids the short way read (the route reads through api.jobs, not api.poll)."""
    read: list[str] = []
    original = embedmix.api.poll.read_job_json

    def counted(engine: Any, owner_id: int, job_id: str) -> bytes | None:
        read.append(job_id)
        return original(engine, owner_id, job_id)

    monkeypatch.setattr(embedmix.api.poll, "read_job_json", counted)
    return read


def answer(response: httpx.Response) -> tuple[int, bytes, str, str]:
    return (response.status_code, response.content, response.headers["content-type"],
            response.headers["content-length"])


def test_a_poll_with_a_known_key_is_answered_the_short_way_exactly_as_the_route_answers(
    client: TestClient, app_settings: Settings, short_way: list[str]
) -> None:
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    job_id = client.post("/v1/jobs", json=SPEC, headers=auth(key)).json()["id"]
    path = f"/v1/jobs/{job_id}"

    short = client.get(path, headers=auth(key))  # the key was cached when it submitted
    assert short_way == [job_id]
    assert short.json()["id"] == job_id and short.json()["status"] == "queued"
    assert client.get(path, headers={"Authorization": f"bearer  {key} "}).content == short.content
    assert short_way == [job_id, job_id]

    client.app.state.runtime.keys.distrust()  # type: ignore[attr-defined]  # now only the route answers
    by_route = client.get(path, headers=auth(key))
    assert short_way == [job_id, job_id]
    assert answer(short) == answer(by_route)

    metrics = client.get("/metrics").text
    assert 'embedmix_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 3.0' in metrics


def test_what_the_short_way_cannot_answer_reaches_the_route(
    client: TestClient, app_settings: Settings, short_way: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, [(_, alice)] = owner_with_keys(app_settings, 1)
    _, [(_, bob)] = owner_with_keys(app_settings, 1)
    job_id = client.post("/v1/jobs", json=SPEC, headers=auth(alice)).json()["id"]
    assert client.get("/v1/jobs", headers=auth(bob)).status_code == 200  # bob's key is now cached too
    path = f"/v1/jobs/{job_id}"

    not_bobs = client.get(path, headers=auth(bob))
    assert not_bobs.status_code == 404 and not_bobs.json()["error"]["code"] == "not_found"
    assert short_way == [job_id]  # looked, found nothing of bob's, handed on

    query = client.get(path, params={"verbose": "1"}, headers=auth(alice))
    assert query.status_code == 422 and query.json()["error"]["param"] == "verbose"
    for headers in ({}, auth("em_unknown_key"), {"Authorization": f"Basic {alice}"}):
        refused = client.get(path, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert short_way == [job_id]
    assert client.get("/v1/jobs/job_unknown", headers=auth(alice)).status_code == 404
    too_long = client.get("/v1/jobs/" + "j" * 65, headers=auth(alice))
    assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "job_id"
    assert short_way == [job_id, "job_unknown"]  # looked for the first, left the second to the route

    def failing(*args: Any) -> bytes:
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(embedmix.api.poll, "read_job_json", failing)
    assert client.get(path, headers=auth(alice)).json()["id"] == job_id  # the route read it
