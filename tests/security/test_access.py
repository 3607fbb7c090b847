"""Every route tried with no key, a revoked key and another owner's key.

Routes come from the live OpenAPI schema, so a route added later is covered
the day it appears (or fails here, saying what to add). Alice owns a finished
job (checkpoint, model files), a dataset and a key; Bob tries them all:

* no key, a revoked key, a malformed key: 401 with ``WWW-Authenticate: Bearer``
  on every route that declares the bearer scheme;
* Bob's key on a route naming one of Alice's things: 404 (never 403: existence
  is not revealed), and her things are unchanged afterwards;
* Bob's key on list and create routes: his own (empty) world, none of Alice's ids;
* routes without the bearer scheme are the probes and the catalog, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from embedmix.store.models import ApiKey
from tests.integration.conftest import Keys, auth
from tests.integration.test_api import SMALL_SPEC, Finished, assert_error, classification_npz

PUBLIC_ROUTES = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/catalog")}
# The JSON or multipart each route with a body needs to get past validation to the owner check.
BODIES: dict[tuple[str, str], Callable[[dict[str, str]], dict[str, Any]]] = {
    ("POST", "/v1/jobs"): lambda ids: {"json": SMALL_SPEC},
    ("POST", "/v1/jobs/{job_id}/embed"): lambda ids: {"json": {"inputs": [[0.0] * 40]}},
    ("POST", "/v1/datasets"): lambda ids: {"files": {"file": ("d.npz", classification_npz())}},
    ("POST", "/v1/keys"): lambda ids: {"json": {"name": "mallory"}},
    # The job is named in the body, not the path: another owner's is as absent as one that never existed.
    ("POST", "/v1/embeddings"): lambda ids: {"json": {"model": ids["job_id"], "input": [[0.0] * 40]}},
    ("POST", "/v1/sweeps"): lambda ids: {"json": {
        "spec": SMALL_SPEC, "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
        "metric": "precision_at_1", "direction": "maximize", "trials": 1, "parallel": 1}},
}
NO_ACCESS = [
    ("no key", {}),
    ("a malformed key", auth("em_not-a-key")),
    ("another scheme", {"Authorization": "Basic YWxpY2U6eA=="}),
]


def schema_routes(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    paths = client.get("/openapi.json").json()["paths"]
    return [
        (method.upper(), path, operation)
        for path, item in paths.items()
        for method, operation in item.items()
    ]


def alice_ids(
    client: TestClient, keys: Keys, finished: Finished, db: sessionmaker[Session]
) -> dict[str, str]:
    dataset = client.post(
        "/v1/datasets", files={"file": ("a.npz", classification_npz())}, headers=auth(keys.alice)
    ).json()["id"]
    with db() as session:
        key_id = session.scalars(
            select(ApiKey.id).where(ApiKey.owner_id == keys.alice_id, ApiKey.revoked_at.is_(None))
        ).first()
    sweep = client.post("/v1/sweeps", headers=auth(keys.alice), **BODIES[("POST", "/v1/sweeps")]({})).json()["id"]
    return {
        "job_id": finished.job_id,
        "sweep_id": sweep,
        "checkpoint_id": finished.checkpoint_id,
        "dataset_id": dataset,
        "key_id": str(key_id),
    }


def request(client: TestClient, method: str, path: str, ids: dict[str, str], headers: dict[str, str]) -> Any:
    body = BODIES.get((method, path), lambda ids: {})(ids)
    return client.request(method, path.format(**ids), headers=headers, **body)


def test_every_route_refuses_no_key_a_revoked_key_and_another_owners_key(
    client: TestClient, keys: Keys, finished: Finished, db: sessionmaker[Session]
) -> None:
    ids = alice_ids(client, keys, finished, db)
    routes = schema_routes(client)
    tried = 0
    for method, path, operation in routes:
        where = f"{method} {path}"
        if not operation.get("security"):
            assert (method, path) in PUBLIC_ROUTES, f"{where} takes no key; add it to PUBLIC_ROUTES only if that is meant"
            continue
        unknown = set(operation_path_params(path)) - set(ids)
        assert not unknown, f"{where}: no test value for {unknown}; add one to alice_ids"
        for label, headers in [*NO_ACCESS, ("a revoked key", auth(keys.revoked))]:
            response = request(client, method, path, ids, headers)
            assert response.status_code == 401, (where, label, response.text)
            assert_error(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"] == "Bearer", (where, label)
        response = request(client, method, path, ids, auth(keys.bob))
        text = response.text
        if operation_path_params(path):
            assert response.status_code == 404, (where, "bob", text)
            assert_error(response, 404, "not_found")
        elif (method, path) == ("POST", "/v1/keys"):
            assert_error(response, 403, "forbidden")
        elif (method, path) == ("GET", "/v1/keys"):  # bob's own keys, never alice's
            assert response.status_code == 200 and {k["owner_id"] for k in response.json()["data"]} == {keys.bob_id}
        elif path == "/v1/embeddings":
            assert_error(response, 404, "not_found")
        else:
            assert response.status_code in (200, 201), (where, "bob", text)
            assert not any(value in text for name, value in ids.items() if name != "key_id"), (where, text)
        tried += 1
    assert tried >= 15, f"only {tried} authenticated routes found"
    # Bob changed nothing of Alice's.
    job = client.get(f"/v1/jobs/{ids['job_id']}", headers=auth(keys.alice)).json()
    assert job["status"] == "succeeded"
    assert client.get(f"/v1/datasets/{ids['dataset_id']}", headers=auth(keys.alice)).status_code == 200
    assert client.get("/v1/jobs", headers=auth(keys.alice)).status_code == 200, "alice's key was revoked"


def operation_path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]

