"""Revision 0006: c_mixup jobs and sweeps stored before `partner_pool` keep the pool they ran with (the batch),
instead of being resolved to the new default (the training set) when the worker runs them again."""

from __future__ import annotations

from typing import Any

from alembic import command

from embedmix.core.spec import validate_spec
from embedmix.store import create_job, create_owner
from embedmix.store.db import alembic_config, make_engine, make_session_factory, migrate
from embedmix.store.models import Job, Sweep
from embedmix.store.sweeps import create_sweep

# A c_mixup spec as revision 0005's code resolved and stored it: every parameter it knew, no partner_pool.
OLD_C_MIXUP: dict[str, Any] = {
    "dataset": {"name": "diabetes"}, "objective": {"loss": "mse", "params": {}},
    "mixup": {"method": "c_mixup", "alpha": 2.0, "level": "input", "params": {"sigma": 20.0}},
}
OTHER: dict[str, Any] = {"dataset": {"name": "mnist1d", "size": 300}, "objective": {"loss": "supcon"},
                         "mixup": {"method": "input", "alpha": 1.0, "params": {}}}


def _downgrade(url: str, revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def test_old_c_mixup_specs_keep_the_batch_pool_and_new_ones_default_to_the_training_set(empty_database_url: str):
    migrate(empty_database_url, "0005")
    engine = make_engine(empty_database_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        owner = create_owner(session, "old")
        job_ids = [create_job(session, owner.id, spec, name="old")[0].id for spec in (OLD_C_MIXUP, OTHER)]
        sweep_id = create_sweep(session, owner.id, name="old", spec=OLD_C_MIXUP, config={})[0].id
        session.commit()
    migrate(empty_database_url)
    with sessions() as session:
        c_mixup, other = (session.get_one(Job, job_id).spec for job_id in job_ids)
        sweep = session.get_one(Sweep, sweep_id).spec
    assert c_mixup["mixup"]["params"] == {"sigma": 20.0, "partner_pool": "batch"}
    assert sweep["mixup"]["params"] == {"sigma": 20.0, "partner_pool": "batch"}
    assert other == OTHER
    assert validate_spec(c_mixup).mixup.params["partner_pool"] == "batch"
    assert validate_spec(OLD_C_MIXUP).mixup.params["partner_pool"] == "train_set"  # a new submission

    _downgrade(empty_database_url, "0005")
    with sessions() as session:
        assert session.get_one(Job, job_ids[0]).spec == OLD_C_MIXUP
    engine.dispose()
