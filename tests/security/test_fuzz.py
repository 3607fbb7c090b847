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

``positive_data_acceptance`` is not asked for: a JobSpec has rules across
fields (a loss the dataset's task allows, a mixup the loss supports) that JSON
Schema cannot state, so schema-valid specs are rightly refused with 422.

Each operation is sent with a key of its own, so a generated
``DELETE /v1/keys/{id}`` that revokes the caller's key only affects the
rest of that operation's cases (which then get the documented 401).
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import checks
from schemathesis.generation import GenerationMode
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from store import create_api_key
from service.settings import Settings
from tests.integration.conftest import Keys, auth

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


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_fuzzing_every_route_finds_no_5xx_and_no_response_off_the_schema(
    settings: Settings, keys: Keys, db: sessionmaker[Session], broker: redis.Redis
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    cases: collections.Counter[str] = collections.Counter()
    failures: dict[str, list[str]] = collections.defaultdict(list)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]

    for operation in operations:
        headers = auth(fresh_key(db, keys.alice_id))
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
                cases[operation.label] += 1
                try:
                    case.call_and_validate(headers=headers, checks=CHECKS)
                except BaseException as failure:  # a FailureGroup is a BaseExceptionGroup
                    if isinstance(failure, KeyboardInterrupt):
                        raise
                    found = failures[operation.label]
                    if len(found) < FAILURES_SHOWN_PER_OPERATION:
                        found.append(f"[{mode}] {failure}")

            send()

    report = "\n\n".join(f"== {label}\n" + "\n".join(found) for label, found in failures.items())
    assert not failures, report
    total = sum(cases.values())
    print(f"{total} cases over {len(operations)} operations")  # shown with -rP
    assert total >= MIN_CASES, f"only {total} cases: {dict(cases)}"
    assert set(cases) == {op.label for op in operations}
