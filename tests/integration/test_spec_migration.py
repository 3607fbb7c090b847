"""Revision 0004: specs stored before specs were resolved keep only the mixing fields their method uses,
so the worker's validation of a queued job still accepts them, and what ran is still what they say."""

from __future__ import annotations

from typing import Any

from embedmix.core.spec import validate_spec
from embedmix.store import create_job, create_owner
from embedmix.store.db import make_engine, make_session_factory, migrate
from embedmix.store.models import Job

# As the old schema stored them: every common field, with the old defaults where the user gave none.
OLD_INPUT: dict[str, Any] = {
    "dataset": {"name": "mnist1d", "size": 300}, "objective": {"loss": "supcon"},
    "mixup": {"method": "input", "alpha": 1.0, "level": None, "weight": 1.0, "params": {}},
}
OLD_METRIX: dict[str, Any] = {
    "dataset": {"name": "mnist1d", "size": 300}, "objective": {"loss": "multi_similarity"},
    "mixup": {"method": "metrix", "alpha": 1.0, "level": None, "weight": 1.0, "params": {}},
}


def test_old_specs_lose_only_the_fields_their_method_never_read(empty_database_url: str) -> None:
    migrate(empty_database_url, "0003")
    engine = make_engine(empty_database_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        owner = create_owner(session, "old")
        ids = [create_job(session, owner.id, spec, name="old")[0].id for spec in (OLD_INPUT, OLD_METRIX)]
        session.commit()
    migrate(empty_database_url)
    with sessions() as session:
        input_spec, metrix_spec = (session.get_one(Job, job_id).spec for job_id in ids)
    engine.dispose()

    assert input_spec["mixup"] == {"method": "input", "alpha": 1.0, "params": {}}
    assert metrix_spec["mixup"] == {"method": "metrix", "alpha": 1.0, "weight": 1.0, "params": {}}  # what it ran with
    assert validate_spec(input_spec).mixup.weight is None
    assert validate_spec(metrix_spec).mixup.level == "feature"
