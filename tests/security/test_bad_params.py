"""Bad numbers and encodings in every parameter: each a 4xx naming it, on SQLite and PostgreSQL.

Before these checks, each case below was a 500 on at least one backend:
integers past what SQLite (64 bits) or a PostgreSQL INTEGER column (32 bits)
holds reached the database, cursors such as ``--1`` or ``²`` (a Unicode digit
that ``str.isdigit`` accepts) reached ``int()``, an embed input of 400 digits
overflowed NumPy, and a base64 cursor could carry a NUL to PostgreSQL. Others
were silently wrong: an embed input of 1e30 gave zero vectors, and a UTF-16
body hid its NULs and nesting from the byte-level JSON guards.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import Keys, auth
from tests.integration.test_api import SMALL_SPEC, Finished, assert_error

PAST_INT64 = str(2**63)
PAST_INT32 = str(2**31)  # ids and steps are INTEGER columns: PostgreSQL's int4
HUGE = "9" * 400
# Not integers in ASCII digits, though int() or pydantic's lax parsing reads some of them.
NOT_ASCII_INTEGERS = ["²", "٣", "--1", "+1", " 1", "1_0", "1.0", "0x1", ""]
BAD_INTEGERS = [PAST_INT64, HUGE, *NOT_ASCII_INTEGERS]


def get(client: TestClient, key: str, path: str, **kwargs: Any) -> Any:
    return client.get(path, headers={**auth(key), **kwargs.pop("headers", {})}, **kwargs)


@pytest.mark.parametrize(
    ("route", "param", "bound"),
    [
        ("events", "after", PAST_INT64),
        ("events", "cursor", PAST_INT64),
        ("metrics", "since_step", PAST_INT32),
        ("metrics", "cursor", PAST_INT32),
        ("stream", "last_event_id", PAST_INT64),
    ],
)
def test_integer_query_parameters_refuse_big_and_non_ascii_numbers(
    client: TestClient, keys: Keys, finished: Finished, route: str, param: str, bound: str
) -> None:
    path = f"/v1/jobs/{finished.job_id}/{route}"
    for value in [bound, *BAD_INTEGERS]:
        if value == "" and param != "cursor":
            continue  # an empty optional query value is the parameter left out
        response = get(client, keys.alice, path, params={param: value})
        assert 400 <= response.status_code < 500, (value, response.text)
        error = response.json()["error"]
        assert error["param"] in (param, param.replace("_", "-")), (value, error)
        assert error["message"], value
    assert get(client, keys.alice, path, params={param: "0"}).status_code == 200


def test_last_event_id_header_refuses_big_and_non_ascii_numbers(
    client: TestClient, keys: Keys, finished: Finished
) -> None:
    path = f"/v1/jobs/{finished.job_id}/stream"
    tokens = [f"{PAST_INT64}-", f"0-{PAST_INT32}", "²-", "0-²", "--1", "0---1", "+1-", "1-+1"]
    for token in tokens:
        response = get(client, keys.alice, path, headers={"Last-Event-ID": token.encode()})
        assert_error(response, 422, param="last-event-id")
    for token in ("0-", "3-2", "0--1"):
        assert get(client, keys.alice, path, headers={"Last-Event-ID": token}).status_code == 200


def test_key_ids_in_the_path_refuse_big_and_non_ascii_numbers(client: TestClient, keys: Keys) -> None:
    for value in [PAST_INT32, PAST_INT64, HUGE, "²", "--1", "+1", "1_0"]:
        response = client.delete(f"/v1/keys/{value}", headers=auth(keys.admin))
        assert_error(response, 422, param="key_id")
    assert_error(client.delete("/v1/keys/2147483647", headers=auth(keys.admin)), 404, "not_found")


@pytest.mark.parametrize("owner_id", [2**31, 2**63, int(HUGE), "²", "--1", "+1"])
def test_owner_ids_in_the_body_refuse_big_and_non_ascii_numbers(
    client: TestClient, keys: Keys, owner_id: int | str
) -> None:
    response = client.post("/v1/keys", json={"owner_id": owner_id}, headers=auth(keys.admin))
    assert_error(response, 422, param="owner_id")


def cursor_of(payload: Any) -> str:
    """A cursor as store.paging encodes one, around any JSON."""
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/datasets"])
def test_opaque_cursors_refuse_what_the_database_cannot_compare(
    client: TestClient, keys: Keys, route: str
) -> None:
    moment = "2026-01-01T00:00:00+00:00"
    for payload in ([moment, "job_a\u0000b"], [moment, "job_\ud800"], [moment, "x" * 200], [moment, 7]):
        response = get(client, keys.alice, route, params={"cursor": cursor_of(payload)})
        assert_error(response, 422, "invalid_cursor", "cursor")
    assert get(client, keys.alice, route, params={"cursor": cursor_of([moment, "job_a"])}).status_code == 200


@pytest.mark.parametrize(
    ("sample", "fragment"),
    [
        ([10**400] + [0] * 39, "float32"),
        ([1e39] + [0.0] * 39, "float32"),
        ([1e30] * 40, "too large"),
        ([0.0] * 39 + [-1e30], "too large"),
    ],
)
def test_embed_inputs_the_model_cannot_represent_are_422_naming_the_input(
    client: TestClient, keys: Keys, finished: Finished, sample: list[float], fragment: str
) -> None:
    ok = [0.5] * 40
    response = client.post(
        f"/v1/jobs/{finished.job_id}/embed", json={"inputs": [ok, ok, sample]}, headers=auth(keys.alice)
    )
    error = assert_error(response, 422, "invalid_inputs", "inputs.2")
    assert "input 2" in error["message"] and fragment in error["message"], error


def test_json_bodies_must_be_utf8(client: TestClient, keys: Keys) -> None:
    """Python's json reads UTF-16 and UTF-32 too, so a byte-level guard would miss their NULs and depth."""
    hidden_nul = '{"name": "bo\\u0000b"}'
    deep = '{"a":' * 40 + "1" + "}" * 40
    for text in (hidden_nul, deep, '{"name": "fine"}'):
        for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"):
            response = client.post(
                "/v1/keys",
                content=text.encode(encoding),
                headers={**auth(keys.admin), "Content-Type": "application/json"},
            )
            error = assert_error(response, 400, "invalid_json")
            assert "UTF-8" in error["message"], encoding
    for body in (b'{"name": "\xff"}', b'{"name": "\xed\xa0\x80"}'):  # not UTF-8; a UTF-8-encoded surrogate
        response = client.post(
            "/v1/keys", content=body, headers={**auth(keys.admin), "Content-Type": "application/json"}
        )
        assert_error(response, 400, "invalid_json")
    accepted = client.post(
        "/v1/keys",
        content='{"name": "zoë"}'.encode(),
        headers={**auth(keys.admin), "Content-Type": "application/json"},
    )
    assert accepted.status_code == 201, accepted.text


def test_lone_surrogate_escapes_are_400(client: TestClient, keys: Keys) -> None:
    """``"\\ud800"`` decodes to a str that no UTF-8 database column can store."""
    for text in ('{"name": "a\\ud800"}', '{"name": "\\udc00b"}', '{"name": "\\uD800\\u0041"}'):
        response = client.post(
            "/v1/keys",
            content=text.encode(),
            headers={**auth(keys.admin), "Content-Type": "application/json"},
        )
        assert_error(response, 400, "invalid_json")
    pair = client.post(
        "/v1/keys",
        content=b'{"name": "\\ud83d\\ude00"}',
        headers={**auth(keys.admin), "Content-Type": "application/json"},
    )
    assert pair.status_code == 201 and pair.json()["id"], pair.text


def test_a_manifold_block_past_the_encoder_is_422_at_submit(client: TestClient, keys: Keys) -> None:
    """It used to be accepted and fail in training as internal_error."""
    spec = {
        **SMALL_SPEC,
        "model": {"encoder": "mlp", "params": {"depth": 2}},
        "mixup": {"method": "manifold", "params": {"block": 2}},
    }
    response = client.post("/v1/jobs", json=spec, headers=auth(keys.alice))
    error = assert_error(response, 422, "invalid_spec", "mixup.params.block")
    assert "has 2 blocks" in error["message"]
    spec["mixup"]["params"]["block"] = 1
    assert client.post("/v1/jobs", json=spec, headers=auth(keys.alice)).status_code == 201


def test_a_content_length_of_unicode_digits_is_not_read_as_a_number(client: TestClient, keys: Keys) -> None:
    """Starlette reads headers as latin-1, where byte 0xB2 is '²': str.isdigit() says yes, int() fails.

    Sent through the ASGI interface itself, since HTTP clients and servers refuse such a header.
    """
    body = b'{"name": "superscript"}'
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"authorization", f"Bearer {keys.admin}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", b"\xb2"),
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/keys", "raw_path": b"/v1/keys", "root_path": "",
        "query_string": b"", "headers": headers, "server": ("testserver", 80), "client": ("testclient", 50000),
    }
    client.portal.call(client.app, scope, receive, send)
    assert sent[0]["status"] == 201, sent
