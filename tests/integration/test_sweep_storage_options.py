"""Sweep bodies' pruner settings (``pruner_options``) over HTTP, and where Optuna keeps its study on PostgreSQL.

The options are checked against the chosen pruner (a 422 names the field), stored
with the sweep and echoed by ``GET /v1/sweeps/{id}``; the plain string ``pruner``
of DESIGN.md still works alone. On PostgreSQL Optuna's tables and its own
``alembic_version`` are in the ``optuna`` schema after a sweep ran, none of them
in ``public``, and our ``alembic_version`` holds our migrations' revision still.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from embedmix.service.settings import Settings
from embedmix.worker.context import WorkerContext
from embedmix.worker.sweeps import OPTUNA_SCHEMA, SweepController
from tests.integration.conftest import Keys, auth
from tests.integration.test_sweeps import LR_SWEEP, TINY, Sent, context, drive_in_turns, settings, submit  # noqa: F401

PRUNED = {**LR_SWEEP, "spec": {**TINY, "eval": {"metrics": ["precision_at_1"], "every_epochs": 1}}}
OPTUNA_TABLES = {"studies", "trials", "trial_values", "trial_intermediate_values", "version_info"}


def test_pruner_options_are_stored_and_echoed(client: TestClient, keys: Keys) -> None:
    options = {"n_startup_trials": 3, "n_warmup_steps": 1}
    sweep = submit(client, keys.alice, {**PRUNED, "pruner": "median", "pruner_options": options})
    again = client.get(f"/v1/sweeps/{sweep['id']}", headers=auth(keys.alice)).json()
    assert sweep["pruner"] == again["pruner"] == "median"
    assert sweep["pruner_options"] == again["pruner_options"] == options


def test_the_plain_string_pruner_still_works_alone(client: TestClient, keys: Keys) -> None:
    sweep = submit(client, keys.alice, {**PRUNED, "pruner": "successive_halving"})
    assert sweep["pruner"] == "successive_halving" and sweep["pruner_options"] is None


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"pruner": "median", "pruner_options": {"min_resource": 2}}, "pruner_options.min_resource"),
        ({"pruner": "successive_halving", "pruner_options": {"n_warmup_steps": 1}}, "pruner_options.n_warmup_steps"),
        ({"pruner": "none", "pruner_options": {"n_startup_trials": 1}}, "pruner_options.n_startup_trials"),
        ({"pruner": "successive_halving", "pruner_options": {"reduction_factor": 1}}, "pruner_options.reduction_factor"),
        ({"pruner": "median", "pruner_options": {"n_startup_trials": -1}}, "pruner_options.n_startup_trials"),
        ({"pruner": "median", "pruner_options": {"patience": 2}}, "pruner_options.patience"),
        ({"pruner": "median", "pruner_options": {"interval_steps": 0}}, "pruner_options.interval_steps"),
    ],
)
def test_a_bad_pruner_setting_is_a_422_naming_it(client: TestClient, keys: Keys, change: dict[str, Any],
                                                  param: str) -> None:
    response = client.post("/v1/sweeps", json={**PRUNED, **change}, headers=auth(keys.alice))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param, response.json()


def _tables_by_schema(url: str) -> dict[str, set[str]]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT table_schema, table_name FROM information_schema.tables "
                                       "WHERE table_schema IN ('public', :optuna)"), {"optuna": OPTUNA_SCHEMA})
        out: dict[str, set[str]] = {}
        for schema, table in rows:
            out.setdefault(schema, set()).add(table)
    engine.dispose()
    return out


def _revision(url: str, schema: str) -> str:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        revision = connection.execute(text(f'SELECT version_num FROM "{schema}".alembic_version')).scalar_one()
    engine.dispose()
    return revision


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_on_postgresql_optuna_keeps_its_tables_and_version_in_its_own_schema(
    client: TestClient, keys: Keys, db: sessionmaker[Session], settings: Settings, context: WorkerContext,  # noqa: F811
) -> None:
    ours = _revision(settings.database_url, "public")
    sweep = submit(client, keys.alice, {**LR_SWEEP, "trials": 2, "parallel": 1})
    sent = Sent()
    controller = SweepController(settings, sent, db)
    drive_in_turns(controller, sent, context, sweep["id"])
    assert client.get(f"/v1/sweeps/{sweep['id']}", headers=auth(keys.alice)).json()["status"] == "succeeded"
    tables = _tables_by_schema(settings.database_url)
    assert OPTUNA_TABLES <= tables[OPTUNA_SCHEMA] and "alembic_version" in tables[OPTUNA_SCHEMA]
    assert not OPTUNA_TABLES & tables["public"], tables["public"]
    assert _revision(settings.database_url, "public") == ours  # ours untouched
    assert _revision(settings.database_url, OPTUNA_SCHEMA) != ours  # Optuna's own, checked by Optuna
    assert "jobs" not in tables[OPTUNA_SCHEMA]
