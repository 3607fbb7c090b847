"""Input no handler should see: over-deep JSON, NUL characters, unknown query parameters.

Each is refused with a 4xx in the error format whose message says what is
wrong, before it reaches a handler or the database; on PostgreSQL a NUL that
got through would be a 500 (text and JSONB cannot hold one).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from embedmix.api import create_app
from tests.integration.conftest import Keys, auth
from tests.integration.test_api import DESIGN_EXAMPLE, SMALL_SPEC, assert_error
from tests.security.conftest import security_settings

on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def nested(depth: int) -> str:
    """A JSON object ``depth`` levels deep: {"a": {"a": ... 1 ...}}."""
    return '{"a":' * (depth - 1) + '{"a":1' + "}" * depth


def post_json(client: TestClient, path: str, body: str, key: str) -> object:
    headers = {**auth(key), "Content-Type": "application/json"}
    return client.post(path, content=body.encode(), headers=headers)


@on_sqlite
def test_json_nested_past_the_limit_is_400_and_up_to_it_is_read(
    client: TestClient, keys: Keys
) -> None:
    limit = 32  # Settings.max_json_depth's default
    for path in ("/v1/jobs", "/v1/jobs/job_x/embed", "/v1/keys"):
        error = assert_error(post_json(client, path, nested(limit + 1), keys.admin), 400, "json_too_deep")
        assert f"more than {limit} levels" in error["message"]
        # at the limit the body is parsed and judged by the route (a bad spec, an unknown job, ...)
        assert post_json(client, path, nested(limit), keys.admin).status_code in (404, 422)
    # a megabyte of brackets is refused by the depth check, not by a recursion error
    brackets = "[" * 500_000 + "]" * 500_000
    assert_error(post_json(client, "/v1/jobs", brackets, keys.alice), 400, "json_too_deep")
    # brackets inside strings are text, not nesting
    spec = {**SMALL_SPEC, "name": "x", "unknown": "[[[[" * 40}
    assert_error(post_json(client, "/v1/jobs", json.dumps(spec), keys.alice), 422, "invalid_spec")


@on_sqlite
def test_the_depth_limit_is_a_setting(
    database_url: str, scratch: Path, broker: redis.Redis, keys: Keys
) -> None:
    settings = security_settings(database_url, scratch, max_json_depth=4)
    with TestClient(create_app(settings)) as client:
        assert post_json(client, "/v1/jobs", json.dumps(DESIGN_EXAMPLE), keys.alice).status_code == 201
        error = assert_error(post_json(client, "/v1/jobs", nested(5), keys.alice), 400, "json_too_deep")
        assert "more than 4 levels" in error["message"]


def test_nul_characters_are_400_on_every_backend(client: TestClient, keys: Keys) -> None:
    """PostgreSQL refuses NUL in text and JSONB: without the guard each of these was a 500 there."""
    for url in ("/v1/jobs/job%00x", "/v1/datasets/ds_%00", "/v1/jobs?cursor=a%00b"):
        error = assert_error(client.get(url, headers=auth(keys.alice)), 400, "bad_request")
        assert "NUL" in error["message"], url
    headers = {**auth(keys.alice), "Idempotency-Key": "a\x00b"}
    assert_error(client.post("/v1/jobs", json=SMALL_SPEC, headers=headers), 400, "bad_request")
    for key in ("em_ab\x00cdefgh", "em_\x00" + "x" * 40):
        assert_error(client.get("/v1/jobs", headers=auth(key)), 400, "bad_request")
    error = assert_error(
        client.post("/v1/keys", json={"name": "bo\u0000b"}, headers=auth(keys.admin)), 400, "invalid_json"
    )
    assert "\\u0000" in error["message"]
    # an escaped backslash before u0000 is the text "\u0000", not a NUL: the route judges it
    text = post_json(client, "/v1/keys", '{"name": "bo\\\\u0000b"}', keys.admin)
    assert text.status_code == 201, text.text


@on_sqlite
def test_unknown_query_parameters_are_422_naming_them(client: TestClient, keys: Keys) -> None:
    error = assert_error(
        client.get("/v1/jobs", params={"stauts": "failed"}, headers=auth(keys.alice)),
        422,
        "invalid_request",
        "stauts",
    )
    assert "status" in error["message"]  # it lists what the call does take
    assert client.get("/v1/jobs", params={"status": "failed"}, headers=auth(keys.alice)).status_code == 200
    assert_error(client.get("/v1/catalog", params={"x": "1"}), 422, "invalid_request", "x")
    # probes stay lenient: load balancers add their own parameters
    assert client.get("/healthz", params={"probe": "lb"}).status_code == 200


@on_sqlite
def test_a_body_that_is_not_json_says_what_and_where_in_words(client: TestClient, keys: Keys) -> None:
    error = assert_error(post_json(client, "/v1/jobs", '{"name": "x",\n "train": oops}', keys.alice), 422)
    assert error["param"] == "body"  # was the byte offset, "22"
    assert error["message"] == "body: the body is not valid JSON: Expecting value at line 2, column 11"
