"""The status poll's route (api.jobs.JobReadRoute): a poll with a cached key is answered without
FastAPI's dependency solving, with exactly the bytes and headers the solved route answers, and
every request it cannot answer that way gets the solved route's own answer."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

import embedmix.api.job_reads
from embedmix.api.app import create_app
from embedmix.api.deps import get_current_owner
from embedmix.api.job_reads import JobReads
from embedmix.api.key_cache import Caller
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
def solved(client: TestClient) -> list[str]:
    """The paths of the requests whose caller FastAPI solved (through a dependency override, which
    the solver honours and the unsolved answer never reaches)."""
    paths: list[str] = []

    async def counted(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                              Depends(HTTPBearer(auto_error=False))]) -> Caller:
        paths.append(request.url.path)
        return await get_current_owner(request, credentials)

    client.app.dependency_overrides[get_current_owner] = counted  # type: ignore[attr-defined]
    return paths


def answer(response: httpx.Response) -> tuple[int, bytes, str, str]:
    return (response.status_code, response.content, response.headers["content-type"],
            response.headers["content-length"])


def test_a_poll_with_a_cached_key_is_answered_unsolved_exactly_as_the_solved_route_answers(
    client: TestClient, app_settings: Settings, solved: list[str]
) -> None:
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    job_id = client.post("/v1/jobs", json=SPEC, headers=auth(key)).json()["id"]
    path = f"/v1/jobs/{job_id}"
    assert solved == ["/v1/jobs"]  # the submission: the key is cached from here on

    unsolved = client.get(path, headers=auth(key))
    assert unsolved.json()["id"] == job_id and unsolved.json()["status"] == "queued"
    assert client.get(path, headers={"Authorization": f"bearer  {key} "}).content == unsolved.content
    assert solved == ["/v1/jobs"]

    client.app.state.runtime.keys.distrust()  # type: ignore[attr-defined]  # now every request is solved
    by_solver = client.get(path, headers=auth(key))
    assert solved == ["/v1/jobs", path]
    assert answer(unsolved) == answer(by_solver)

    metrics = client.get("/metrics").text
    assert 'embedmix_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 3.0' in metrics


def test_what_the_unsolved_answer_cannot_give_gets_the_solved_routes_answer(
    client: TestClient, app_settings: Settings, solved: list[str]
) -> None:
    _, [(_, alice)] = owner_with_keys(app_settings, 1)
    _, [(_, bob)] = owner_with_keys(app_settings, 1)
    job_id = client.post("/v1/jobs", json=SPEC, headers=auth(alice)).json()["id"]
    assert client.get("/v1/jobs", headers=auth(bob)).status_code == 200  # bob's key is now cached too
    path = f"/v1/jobs/{job_id}"
    solved.clear()

    not_bobs = client.get(path, headers=auth(bob))
    assert not_bobs.status_code == 404 and not_bobs.json()["error"]["code"] == "not_found"
    query = client.get(path, params={"verbose": "1"}, headers=auth(alice))
    assert query.status_code == 422 and query.json()["error"]["param"] == "verbose"
    assert client.get("/v1/jobs/job_unknown", headers=auth(alice)).status_code == 404
    too_long = client.get("/v1/jobs/" + "j" * 65, headers=auth(alice))
    assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "job_id"
    for headers in ({}, auth("em_unknown_key"), {"Authorization": f"Basic {alice}"}):
        refused = client.get(path, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    # each went to the solver (the query's 422 came from a dependency solved before the caller)
    assert solved == [path, "/v1/jobs/job_unknown", "/v1/jobs/" + "j" * 65, path, path, path]
    assert client.get(path, headers=auth(alice)).json()["id"] == job_id
    assert len(solved) == 6  # the owner's own poll did not


def test_a_database_error_in_an_unsolved_poll_is_the_503_every_route_answers(
    client: TestClient, app_settings: Settings, solved: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    job_id = client.post("/v1/jobs", json=SPEC, headers=auth(key)).json()["id"]

    def failing(*args: Any) -> bytes:
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(embedmix.api.job_reads, "read_jobs_json", failing)
    down = client.get(f"/v1/jobs/{job_id}", headers=auth(key))
    assert down.status_code == 503 and down.json()["error"]["code"] == "unavailable"
    assert "retry-after" in down.headers
    assert solved == ["/v1/jobs"]


def test_a_poll_reads_outside_a_transaction(client: TestClient) -> None:
    """One round trip a poll: in a transaction a single SELECT is three (BEGIN, it, ROLLBACK)."""
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    with runtime.poll_engine.connect() as connection:
        driver = connection.connection.dbapi_connection
        # psycopg2 sends no BEGIN in autocommit; Python 3.11's sqlite3 none with isolation_level None
        assert driver.autocommit if hasattr(driver, "autocommit") else driver.isolation_level is None
    with runtime.engine.connect() as connection:  # the other requests' engine keeps its transactions
        driver = connection.connection.dbapi_connection
        assert not driver.autocommit if hasattr(driver, "autocommit") else driver.isolation_level is not None


class GatedExecutor(ThreadPoolExecutor):
    """A poll-thread pool whose batches wait for ``gate`` and count their keys, so a test can
    hold a batch in flight while more polls arrive."""

    def __init__(self) -> None:
        super().__init__(2)
        self.gate = threading.Event()
        self.batches: list[list[tuple[int, str]]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        engine, keys = args
        self.batches.append(list(keys))

        def gated() -> Any:
            self.gate.wait(30)
            return fn(engine, keys)

        return super().submit(gated)


def test_polls_waiting_together_share_one_read_and_each_gets_only_its_own_job(
    client: TestClient, app_settings: Settings
) -> None:
    alice_id, [(_, alice)] = owner_with_keys(app_settings, 1)
    bob_id, [(_, bob)] = owner_with_keys(app_settings, 1)
    alice_job = client.post("/v1/jobs", json=SPEC, headers=auth(alice)).json()["id"]
    bob_job = client.post("/v1/jobs", json=SPEC, headers=auth(bob)).json()["id"]
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    executor = GatedExecutor()
    reads = JobReads(runtime.poll_engine, executor, in_flight=1)

    async def polls() -> list[bytes | None]:
        first = asyncio.ensure_future(reads.read(alice_id, alice_job))  # starts a batch, held at the gate
        await asyncio.sleep(0)
        rest = [asyncio.ensure_future(reads.read(owner, job)) for owner, job in
                [(alice_id, alice_job), (alice_id, bob_job), (bob_id, bob_job), (bob_id, "job_missing")] * 3]
        await asyncio.sleep(0.05)
        executor.gate.set()
        return [await first] + [await r for r in rest]

    bodies = asyncio.run(polls())
    executor.shutdown()
    assert [len(batch) for batch in executor.batches] == [1, 4]  # twelve polls, four distinct, one read
    ids = [None if body is None else json.loads(body)["id"] for body in bodies]
    assert ids == [alice_job] + [alice_job, None, bob_job, None] * 3  # Bob's job is not Alice's


def test_a_poll_arriving_during_a_read_waits_for_the_next_and_sees_what_changed_before_it(
    client: TestClient, app_settings: Settings
) -> None:
    owner_id, [(_, key)] = owner_with_keys(app_settings, 1)
    job_id = client.post("/v1/jobs", json=SPEC, headers=auth(key)).json()["id"]
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    executor = GatedExecutor()
    reads = JobReads(runtime.poll_engine, executor, in_flight=1)

    async def polls() -> tuple[bytes | None, bytes | None]:
        before = asyncio.ensure_future(reads.read(owner_id, job_id))
        await asyncio.sleep(0)
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key)).status_code == 200
        after = asyncio.ensure_future(reads.read(owner_id, job_id))  # the first read is still in flight
        await asyncio.sleep(0.05)
        executor.gate.set()
        return await before, await after

    _, after = asyncio.run(polls())
    executor.shutdown()
    assert len(executor.batches) == 2
    assert after is not None and json.loads(after)["status"] == "cancelled"
