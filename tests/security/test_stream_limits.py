"""Event streams are capped per key and per API process, and the API keeps answering while they are open.

Each test runs ``embedmix api`` as a process (tests/chaos/conftest.py's Stack) on a
throwaway PostgreSQL database and a redis-server of its own, with no worker: a
queued job stays queued, so its streams stay open (polling) until the test
closes them or ends the job through the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from embedmix.service.settings import Settings
from embedmix.store import create_api_key, create_job, create_owner, request_cancel
from embedmix.store.db import POOL_OVERFLOW, POOL_SIZE, migrate
from tests.chaos.conftest import SPEC, Stack
from tests.conftest import PostgresServer, RedisServer, wait_for

# Generous: an answer counts if it comes at all, not because a loaded machine is quick.
CLIENT_TIMEOUT_S = 60.0
FREED_TIMEOUT_S = 60.0
DEFAULT_PER_KEY = Settings.model_fields["max_streams_per_key"].default


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.create_database("streams")
    migrate(url)
    yield url
    postgres_server.drop_database(url)


def start_api(database: str, redis_server: RedisServer, tmp_path: Path, **settings: str) -> Stack:
    stack = Stack(database, redis_server, tmp_path, tmp_path / "cache", **settings)
    stack.start("api")
    return stack


@pytest.fixture
def capped(database: str, redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    """The API with 3 streams per key and 5 in all."""
    stack = start_api(database, redis_server, tmp_path, max_streams_per_key="3", max_streams="5")
    yield stack
    stack.close()


def new_owner(stack: Stack, jobs: int = 1) -> tuple[str, list[str]]:
    """An ordinary (non-admin) owner's key and ``jobs`` queued jobs of theirs."""
    with stack.session_factory() as session:
        owner = create_owner(session, "streamer")
        _, key = create_api_key(session, owner.id)
        ids = [create_job(session, owner.id, SPEC, name="stream", max_attempts=1)[0].id for _ in range(jobs)]
        session.commit()
    return key, ids


def client(stack: Stack, key: str) -> httpx.Client:
    assert stack.api_url is not None
    return httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=CLIENT_TIMEOUT_S,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
    )


def open_stream(streams: ExitStack, api: httpx.Client, job_id: str) -> httpx.Response:
    """A stream held open until ``streams`` closes (its status is known once this returns)."""
    return streams.enter_context(api.stream("GET", f"/v1/jobs/{job_id}/stream"))


def assert_refused(response: httpx.Response, cap: str) -> None:
    response.read()
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_streams" and cap in error["message"], error
    assert int(response.headers["Retry-After"]) > 0


def admitted_once_free(api: httpx.Client, job_id: str) -> bool:
    """Whether a new stream is admitted now (it is closed again at once)."""
    with api.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
        return response.status_code == 200


def test_streams_beyond_the_key_cap_are_429_and_a_closed_stream_frees_its_slot(capped: Stack) -> None:
    key, (job_id,) = new_owner(capped)
    other_key, (other_job,) = new_owner(capped)
    with client(capped, key) as api, client(capped, other_key) as other, ExitStack() as streams:
        held = [open_stream(streams, api, job_id) for _ in range(3)]
        assert [r.status_code for r in held] == [200, 200, 200]
        assert_refused(open_stream(streams, api, job_id), "3 event streams")
        assert api.get("/healthz").status_code == 200
        assert api.get("/v1/jobs").status_code == 200
        assert open_stream(streams, other, other_job).status_code == 200  # the cap is the key's, not everyone's

        held[0].close()
        wait_for(lambda: admitted_once_free(api, job_id), FREED_TIMEOUT_S, "the closed stream's slot", capped.logs)


def test_the_process_cap_counts_every_keys_streams(capped: Stack) -> None:
    keys = [new_owner(capped) for _ in range(2)]
    (first, (first_job,)), (second, (second_job,)) = keys
    with client(capped, first) as api, client(capped, second) as other, ExitStack() as streams:
        assert [open_stream(streams, api, first_job).status_code for _ in range(3)] == [200] * 3
        assert [open_stream(streams, other, second_job).status_code for _ in range(2)] == [200] * 2
        assert_refused(open_stream(streams, other, second_job), "5 event streams")


def test_slots_are_freed_by_a_refused_job_and_by_the_job_ending(capped: Stack) -> None:
    key, (job_id, later_job) = new_owner(capped, jobs=2)
    with client(capped, key) as api:
        for _ in range(4):  # more than the cap: a 404 must not keep its slot
            response = api.get("/v1/jobs/job_unknown/stream")
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        with ExitStack() as streams:
            held = [open_stream(streams, api, job_id) for _ in range(3)]
            assert [r.status_code for r in held] == [200] * 3
            with capped.session_factory() as session:
                assert request_cancel(session, capped.job(job_id).owner_id, job_id) is not None
                session.commit()
            for response in held:  # each stream ends by itself with the terminal status
                last = [line for line in response.iter_lines() if line.startswith("event:")][-1]
                assert last == "event: status"
        wait_for(lambda: admitted_once_free(api, later_job), FREED_TIMEOUT_S, "the ended streams' slots", capped.logs)
        with ExitStack() as streams:
            assert [open_stream(streams, api, later_job).status_code for _ in range(3)] == [200] * 3


def test_a_stop_ends_open_streams(capped: Stack) -> None:
    """SIGTERM with streams open: the API stops (uvicorn would otherwise wait for the job to end)."""
    key, (job_id,) = new_owner(capped)
    (api_process,) = capped.processes
    with client(capped, key) as api, ExitStack() as streams:
        assert [open_stream(streams, api, job_id).status_code for _ in range(2)] == [200] * 2
        api_process.terminate(timeout=CLIENT_TIMEOUT_S)  # fails the test if the process is still there
    assert "Application shutdown complete" in api_process.log()


def test_300_streams_from_one_key_get_429_beyond_the_cap_and_the_api_keeps_answering(
    database: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    codes, answers = _open_many(start_api(database, redis_server, tmp_path), 300)
    assert codes.count(200) == DEFAULT_PER_KEY and codes.count(429) == 300 - DEFAULT_PER_KEY, codes
    assert answers == {"/healthz": 200, "/v1/jobs": 200, "/readyz": 200}


def test_more_streams_than_pooled_connections_open_at_once_when_the_caps_allow(
    database: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Streams take no connection for themselves: more than the pool holds all open, and the API answers."""
    count = 2 * (POOL_SIZE + POOL_OVERFLOW)
    stack = start_api(database, redis_server, tmp_path, max_streams_per_key=str(count), max_streams=str(count))
    codes, answers = _open_many(stack, count)
    assert codes == [200] * count, codes
    assert answers == {"/healthz": 200, "/v1/jobs": 200, "/readyz": 200}


def _open_many(stack: Stack, count: int) -> tuple[list[int | str], dict[str, int]]:
    """``count`` streams of one key's job opened at once, and the other routes' answers while they are open."""
    try:
        key, (job_id,) = new_owner(stack)
        assert stack.api_url is not None
        return asyncio.run(_many_and_probe(stack.api_url, key, job_id, count))
    finally:
        stack.close()


async def _many_and_probe(url: str, key: str, job_id: str, count: int) -> tuple[list[int | str], dict[str, int]]:
    """Open ``count`` streams, then, with the admitted ones still open, call the other routes."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=CLIENT_TIMEOUT_S, limits=limits) as api:
        release = asyncio.Event()
        codes: list[int | str] = []

        async def hold() -> None:
            try:
                async with api.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
                    codes.append(response.status_code)
                    if response.status_code == 200:
                        await release.wait()
            except httpx.HTTPError as exc:  # counted, so the wait below ends and the assert names it
                codes.append(type(exc).__name__)

        holders = [asyncio.ensure_future(hold()) for _ in range(count)]
        while len(codes) < count:
            await asyncio.sleep(0.1)
        answers = {path: (await api.get(path)).status_code for path in ("/healthz", "/v1/jobs", "/readyz")}
        release.set()
        await asyncio.gather(*holders)
    return codes, answers
