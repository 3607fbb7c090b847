"""Schemathesis against the live OpenAPI schema: every route, more than a thousand cases.

The app runs in-process (ASGI) on a throwaway PostgreSQL database, where
strings the database cannot store (NUL) would surface as 500s. Each operation
gets schema-valid ("positive") and schema-violating ("negative") cases,
generated deterministically (Hypothesis' derandomize, so a failure reproduces
on every run), sent with a valid key so that authenticated routes are
exercised past the 401. Every response must:

* not be a 5xx (``not_a_server_error``);
* match its documented schema, status code and content type
  (``response_schema_conformance``, ``status_code_conformance``,
  ``content_type_conformance``);
* be a 4xx when the request broke the schema (``negative_data_rejection``).

Each operation on a job gets a finished job of its own (model files, a
checkpoint), and schema-valid cases are sent to it, so that query parameters
and bodies reach the handlers and the database instead of stopping at a 404.
Every case with a JSON body is also sent again encoded as UTF-16, which must
be a 400 (JSON is UTF-8; Python's parser would read UTF-16 and hide NULs and
nesting from the byte-level guards). And every path, query and header
parameter, and every integer in a known-good body, is sent explicit hostile
numbers: past 64 bits, 400 digits, Unicode digits, ``--1``; an integer
parameter must answer 4xx, any other must not answer 5xx.

``positive_data_acceptance`` is not asked for: a JobSpec has rules across
fields (a loss the dataset's task allows, a mixup the loss supports) that JSON
Schema cannot state, so schema-valid specs are rightly refused with 422.

Each operation is sent with a key of its own, so a generated
``DELETE /v1/keys/{id}`` that revokes the caller's key only affects the
rest of that operation's cases (which then get the documented 401).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import checks
from schemathesis.core import NotSet
from schemathesis.generation import GenerationMode
from sqlalchemy.orm import Session, sessionmaker

from embedmix.api import create_app
from embedmix.service.settings import Settings
from embedmix.store import create_api_key
from tests.integration.conftest import Keys, auth
from tests.integration.test_api import SMALL_SPEC, Trained, seed_finished_job

EXAMPLES_PER_MODE = 30
MIN_CASES = 1000
CHECKS = [
    checks.not_a_server_error,
    checks.response_schema_conformance,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.negative_data_rejection,
]
FAILURES_SHOWN_PER_OPERATION = 2
# Numbers no parameter may turn into a 500: past int64, past any float, Unicode digits, a double sign.
HOSTILE_NUMBERS = [str(2**63), "9" * 400, "²", "٣", "--1", "+1", "1_0"]
# Known-good bodies with one integer made huge: each must be a 4xx.
BIG_INTEGER_BODIES: dict[str, list[dict[str, Any]]] = {
    "POST /v1/jobs": [
        {**SMALL_SPEC, "train": {"epochs": 10**400}},
        {**SMALL_SPEC, "dataset": {"name": "mnist1d", "size": 2**63}},
    ],
    "POST /v1/jobs/{job_id}/embed": [{"inputs": [[10**400] + [0] * 39]}, {"inputs": [[1e30] * 40]}],
    "POST /v1/embeddings": [{"model": "{job_id}", "input": [[10**400] + [0] * 39]}],
    "POST /v1/keys": [{"owner_id": 10**400}, {"owner_id": 2**63}, {"owner_id": 2**31}],
}


def fresh_key(db: sessionmaker[Session], owner_id: int) -> str:
    with db() as session:
        _, plain = create_api_key(session, owner_id)
        session.commit()
        return plain


def modes_for(operation: Any) -> list[GenerationMode]:
    """Negative cases need something to break: a parameter or a body."""
    has_input = any(
        (operation.path_parameters, operation.query, operation.headers, operation.body)
    )
    return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if has_input else [GenerationMode.POSITIVE]


def real_ids(
    operation: Any, db: sessionmaker[Session], settings: Settings, owner_id: int, trained: Trained
) -> dict[str, str]:
    """A finished job of the operation's own (a DELETE may remove it) when its path names a job."""
    if "{job_id}" not in operation.path and operation.label not in BIG_INTEGER_BODIES:
        return {}
    finished = seed_finished_job(db, settings, owner_id, trained)
    return {"job_id": finished.job_id, "checkpoint_id": finished.checkpoint_id}


def use_real_ids(case: Any, ids: dict[str, str]) -> None:
    """Point a schema-valid case at things that exist, so it gets past the 404."""
    for name in case.path_parameters or {}:
        if name in ids:
            case.path_parameters[name] = ids[name]
    if case.operation.label == "POST /v1/embeddings" and isinstance(case.body, dict) and ids:
        case.body["model"] = ids["job_id"]


def is_integer(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "integer" or any(is_integer(s) for s in schema.get("anyOf", []))


def hostile_number_cases(operation: Any, ids: dict[str, str]) -> Iterator[tuple[Any, bool]]:
    """(case, must be 4xx): each parameter in turn set to each hostile number, the others valid."""
    locations = {"path": "path_parameters", "query": "query", "header": "headers"}
    for param in operation.iter_parameters():
        where = param.definition["in"]
        if where not in locations or param.name == "Authorization":
            continue
        for value in HOSTILE_NUMBERS:
            case = operation.Case(path_parameters=dict(ids_for(operation, ids)))
            container = getattr(case, locations[where])
            if container is None:
                setattr(case, locations[where], {})
                container = getattr(case, locations[where])
            # headers travel as latin-1: these characters put the UTF-8 bytes of the number on the wire
            container[param.name] = value.encode().decode("latin-1") if where == "header" else value
            yield case, is_integer(param.definition["schema"])


def ids_for(operation: Any, ids: dict[str, str]) -> dict[str, str]:
    """Valid path parameters: the real ids, or a well-formed id for anything else."""
    names = [p.name for p in operation.path_parameters]
    return {name: ids.get(name, "ds_nothing") for name in names}


def big_integer_body_cases(operation: Any, ids: dict[str, str]) -> Iterator[Any]:
    for body in BIG_INTEGER_BODIES.get(operation.label, []):
        if body.get("model") == "{job_id}":
            body = {**body, "model": ids["job_id"]}
        yield operation.Case(path_parameters=ids_for(operation, ids), body=body, media_type="application/json")


def as_utf16(case: Any) -> bytes | None:
    """The case's JSON body encoded as UTF-16; None without one (negative cases may send raw bytes)."""
    if case.media_type != "application/json" or isinstance(case.body, NotSet):
        return None
    try:
        return json.dumps(case.body).encode("utf-16")
    except TypeError:
        return None


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_fuzzing_every_route_finds_no_5xx_and_no_response_off_the_schema(
    settings: Settings, keys: Keys, db: sessionmaker[Session], broker: redis.Redis, trained: Trained
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    cases: collections.Counter[str] = collections.Counter()
    failures: dict[str, list[str]] = collections.defaultdict(list)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]

    def fail(operation: Any, what: str) -> None:
        found = failures[operation.label]
        if len(found) < FAILURES_SHOWN_PER_OPERATION:
            found.append(what)

    def judged(operation: Any, label: str, case: Any, **kwargs: Any) -> Any:
        """Send and validate one case; a failed check is recorded, not raised."""
        cases[operation.label] += 1
        try:
            return case.call_and_validate(**kwargs)
        except BaseException as failure:  # a FailureGroup is a BaseExceptionGroup
            if isinstance(failure, KeyboardInterrupt):
                raise
            fail(operation, f"[{label}] {failure}")
            return None

    for operation in operations:
        headers = auth(fresh_key(db, keys.alice_id))
        ids = real_ids(operation, db, settings, keys.alice_id, trained)
        for mode in modes_for(operation):

            @hypothesis_settings(
                max_examples=EXAMPLES_PER_MODE,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def send(case: Any) -> None:
                if mode is GenerationMode.POSITIVE:
                    use_real_ids(case, ids)
                judged(operation, str(mode), case, headers=headers, checks=CHECKS)
                utf16 = as_utf16(case)
                if utf16 is not None:
                    response = judged(operation, "utf-16", case, headers=headers, checks=CHECKS[:4], data=utf16)
                    if response is not None and response.status_code != 400:
                        fail(operation, f"[utf-16] {response.status_code} for {case.body!r:.200}")

            send()

        for case, integer in hostile_number_cases(operation, ids):
            response = judged(operation, "hostile number", case, headers=headers, checks=CHECKS[:4])
            if response is not None and integer and not 400 <= response.status_code < 500:
                fail(operation, f"[hostile number] {response.status_code} for {case.path_parameters} "
                                f"{case.query} {case.headers}")
        for case in big_integer_body_cases(operation, ids):
            response = judged(operation, "big integer body", case, headers=headers, checks=CHECKS[:4])
            if response is not None and not 400 <= response.status_code < 500:
                fail(operation, f"[big integer body] {response.status_code} for {case.body!r:.200}")

    report = "\n\n".join(f"== {label}\n" + "\n".join(found) for label, found in failures.items())
    assert not failures, report
    total = sum(cases.values())
    print(f"{total} cases over {len(operations)} operations")  # shown with -rP
    assert total >= MIN_CASES, f"only {total} cases: {dict(cases)}"
    assert set(cases) == {op.label for op in operations}
