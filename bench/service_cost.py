"""What the service's callbacks cost the training loop: steps/s with the worker's callbacks vs none.

Both sides run in this process, in pairs, back to back, on the same spec:
``core.train.train`` with the engine's null callbacks, and
``worker.train_task.run_job`` on a real job in a throwaway database (SQLite in
a temp dir, or a throwaway PostgreSQL database with ``--postgres``), so the
worker's side writes its metrics in batches, polls for cancel, renews its
lease and stores verified checkpoints (on a background thread, at most every
``checkpoint_min_interval_s``, the run's last always) in the database's
artifact store, exactly as in production. Steps/s is taken over the training
loop (the engine's own clock, ``TrainResult.seconds``, which the worker writes
into the model card), so data loading and export, which both sides do alike,
do not dilute the comparison. Prints the medians and the median of the pairs'
ratios, and, as a figure that a busy machine does not distort, the CPU time
the training thread spent inside each callback against its whole CPU time in
the loop.

    .venv/bin/python bench/service_cost.py --repeats 8
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedmix.core.data import load_dataset
from embedmix.core.spec import validate_spec
from embedmix.core.train import train
from embedmix.service.settings import Settings
from embedmix.store import create_job, create_owner, make_engine, make_session_factory
from embedmix.store.artifacts import DatabaseArtifacts
from embedmix.store.db import migrate
from embedmix.store.models import Job
from embedmix.worker import train_task
from embedmix.worker.callbacks import StoreCallbacks
from embedmix.worker.context import WorkerContext

SPEC = {
    "name": "bench-cost",
    "dataset": {"name": "mnist1d"},
    "model": {"encoder": "conv1d", "embedding_dim": 64},
    "objective": {"loss": "supcon"},
    "train": {"epochs": 10, "batch_size": 256, "seed": 0},
    "eval": {"metrics": ["precision_at_1"], "every_epochs": 0},
    "export": {"formats": ["safetensors"]},
}
CALLBACKS = ("on_progress", "on_metrics", "on_checkpoint", "should_stop")
CPU_SECONDS: defaultdict[str, float] = defaultdict(float)


class TimedCallbacks(StoreCallbacks):
    """The worker's callbacks, unchanged, with the training thread's CPU time inside each one added up."""


def _timed(name: str) -> Any:
    original = getattr(StoreCallbacks, name)

    def timed(self: StoreCallbacks, *args: Any) -> Any:
        start = time.thread_time()
        try:
            return original(self, *args)
        finally:
            CPU_SECONDS[name] += time.thread_time() - start

    return timed


for _name in CALLBACKS:
    setattr(TimedCallbacks, _name, _timed(_name))
train_task.StoreCallbacks = TimedCallbacks  # type: ignore[misc]  # the bench's only hook into the task

PG_ADMIN = os.environ.get("EMBEDMIX_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def alone(spec: dict) -> float:
    """Steps/s of the training loop with no callbacks."""
    parsed = validate_spec(spec)
    result = train(parsed, load_dataset(parsed))
    return result.step / result.seconds


def through_worker(context: WorkerContext, owner_id: int, spec: dict) -> float:
    """Steps/s of the same loop inside the worker's task, from the model card it wrote."""
    with context.session_factory() as session:
        job, _ = create_job(session, owner_id, validate_spec(spec).model_dump(mode="json"), name="bench")
        session.commit()
        job_id = job.id
    assert train_task.run_job(job_id, context) == "succeeded"
    with context.session_factory() as session:
        training = session.get_one(Job, job_id).card["training"]
    return training["steps"] / training["seconds_last_attempt"]


def loop_cpu_seconds(spec: dict) -> float:
    """The training thread's CPU time for the loop alone (the denominator of the callbacks' share)."""
    parsed = validate_spec(spec)
    data = load_dataset(parsed)
    start = time.thread_time()
    train(parsed, data)
    return time.thread_time() - start


def database_url(use_postgres: bool, tmp: Path) -> tuple[str, str | None]:
    """A migrated throwaway database; the name to drop afterwards for PostgreSQL."""
    if not use_postgres:
        url = f"sqlite:///{tmp / 'bench.db'}"
        migrate(url)
        return url, None
    name = f"embedmix_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    migrate(url)
    return url, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--postgres", action="store_true", help="the worker's store on PostgreSQL, not SQLite")
    args = parser.parse_args()
    spec = {**SPEC, "train": {**SPEC["train"], "epochs": args.epochs}}
    with tempfile.TemporaryDirectory(prefix="embedmix-bench-") as tmp:
        url, pg_name = database_url(args.postgres, Path(tmp))
        engine = make_engine(url)
        settings = Settings(database_url=url, redis_url="redis://unused.invalid:6379/0", work_dir=tmp)
        context = WorkerContext(settings, make_session_factory(engine), DatabaseArtifacts())
        with context.session_factory() as session:
            owner_id = create_owner(session, "bench").id
            session.commit()
        alone(spec)  # warm-up: first-call costs belong to neither side
        rates: dict[str, list[float]] = {"alone": [], "worker": []}
        for repeat in range(args.repeats):
            # Each side goes first in every other repeat: the second run of a pair is
            # measurably slower on this machine, whichever it is.
            sides = [("alone", lambda: alone(spec)), ("worker", lambda: through_worker(context, owner_id, spec))]
            for name, run in sides[:: 1 if repeat % 2 == 0 else -1]:
                rates[name].append(run())
        loop_cpu = loop_cpu_seconds(spec) * args.repeats
        engine.dispose()
        if pg_name:
            admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE "{pg_name}" WITH (FORCE)'))
            admin.dispose()
    a, w = statistics.median(rates["alone"]), statistics.median(rates["worker"])
    # The machine's speed drifts by more than the effect between repeats; each pair ran
    # back to back, so the median of the pairs' ratios is the steadier estimate.
    paired = statistics.median(x / y for x, y in zip(rates["worker"], rates["alone"], strict=True))
    backend = "PostgreSQL" if args.postgres else "SQLite"
    print(f"training loop steps/s, {args.epochs} epochs, {args.repeats} pairs: alone {a:.2f}, worker callbacks "
          f"on {backend} {w:.2f} (medians); median pair ratio {paired:.3f}; service cost {100 * (1 - paired):.1f}%")
    print("  alone:", ", ".join(f"{r:.2f}" for r in rates["alone"]),
          "| worker:", ", ".join(f"{r:.2f}" for r in rates["worker"]))
    inside = sum(CPU_SECONDS.values())
    parts = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in CPU_SECONDS.items())
    print(f"training-thread CPU inside the callbacks: {inside:.3f} s of {loop_cpu:.1f} s in the loop "
          f"({100 * inside / loop_cpu:.2f}%): {parts}")


if __name__ == "__main__":
    main()
