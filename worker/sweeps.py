"""The sweep controller: drives each sweep's Optuna study, where every trial is an ordinary job.

Where it runs: a thread of every worker's main process, next to the reaper
(:class:`SweepStep`, a Celery bootstep), so ``embedmix up`` and every
deployment that runs workers drive sweeps with no process of their own. Each
pass looks for sweeps with work (:func:`store.sweeps.sweeps_to_drive`) and
drives those whose lease it holds or can take; with many workers, the lease
(in the database, like a job's) lets one controller at a time drive a sweep,
and a dead controller's sweeps pass to another once their lease expires.

The study lives in Optuna's RDBStorage on the service's own database (its
own tables; on PostgreSQL in a schema of their own, ``optuna``: see
:func:`optuna_storage`; named by the sweep id). Optuna's samplers and
pruners decide; this module only carries their decisions to the jobs:

* ask: while fewer than ``trials`` were asked and fewer than ``parallel``
  trial jobs are active, renew the lease, ``study.ask()``, then create the
  trial's job (idempotency key from sweep id and trial number, the owner's job
  quota applying) and its row in one transaction, and send its message.
* follow: each running trial's ``eval/<metric>`` points are reported by epoch
  (one intermediate value per epoch, so trials of any batch size compare);
  with a validation set in the base spec (``dataset.split.validation_fraction``)
  the metric is ``val/<metric>``, measured on it, so nothing is chosen on a test
  split (``core.evaluate.selection_metric``);
  when the pruner says so the row becomes ``pruned`` and the job is cancelled
  through the jobs' cancel path.
* tell: a finished job's result is written to its row first (complete with
  the job's final metric, failed with its error), then told to the study.

Killed at any point (kill -9) and restarted, it reads the study and the rows
and carries on: a trial Optuna has as RUNNING without a row was asked but not
launched, so it is launched now (its parameters are the ones Optuna stored;
any missing are suggested again), not asked again; a row already final whose
trial Optuna still has as RUNNING was decided but not told, so it is told
now; a trial is only ever told while Optuna has it RUNNING. A job's message
lost in the crash is re-sent by the reaper. The ask-time check of the lease
is what keeps two controllers from asking: it is renewed just before.

Samplers are rebuilt for each ask with the seed ``seed + trial number``: a
sampler object does not outlive a controller, and re-seeding it the same way
after a restart would repeat the samples it drew before (the grid sampler,
which reads what it visited from the study, keeps ``seed``).

Validation of a trial's parameters happened per value at submission (the
API); a combination that still fails to validate ends that trial as failed,
and the sweep goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import optuna
from celery import bootsteps
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from embedmix.core.errors import SpecError
from embedmix.core.spec import selection_metric, validate_spec
from embedmix.service.settings import Settings
from embedmix.store.db import DATABASE_DOWN
from embedmix.store.jobs import (
    ActiveJobLimit,
    IdempotencyConflict,
    create_job,
    get_job_unscoped,
    request_cancel,
)
from embedmix.store.metrics import list_metrics
from embedmix.store.models import Sweep, SweepTrial
from embedmix.store.sweeps import (
    active_trial_jobs,
    add_trial,
    apply_params,
    claim_sweep_lease,
    count_trials,
    finish_sweep,
    get_sweep_unscoped,
    grid_values,
    list_trials,
    release_sweep_lease,
    set_best,
    settle_trial,
    spec_hash,
    start_sweep,
    sweep_is_active_locked,
    sweeps_to_drive,
    trial_idempotency_key,
)
from embedmix.worker.context import session_factory_for
from embedmix.worker.lease import new_owner_token

log = logging.getLogger("embedmix.sweeps")

Send = Callable[[str, int], None]  # (job id, the devices it asks for): service.queue's route

# The median pruner compares a trial with those that finished; with two finished it has a median to go by.
MEDIAN_STARTUP_TRIALS = 2
OPTUNA_SCHEMA = "optuna"  # PostgreSQL: Optuna's tables and alembic_version, apart from ours (optuna_storage)
SQLITE_BUSY_TIMEOUT_S = 30.0  # Optuna's connections wait for our writers as ours do (store.db)
STOP_TIMEOUT_S = 10.0
TELL_STATES = {"pruned": TrialState.PRUNED, "failed": TrialState.FAIL}


def optuna_storage(database_url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage on the service's database.

    On PostgreSQL Optuna has a schema of its own, ``optuna`` (created here if
    missing), which is the only schema on its connections' ``search_path``: its
    tables (studies, trials, ...) and its own ``alembic_version`` live there, apart
    from ours in the service's schema, so neither migrates the other's tables and
    Optuna's compatibility check runs against its own version.

    SQLite has no schemas; the embedded default keeps Optuna in the service's one
    file (one file to back up or move), so there Optuna finds ``alembic_version``
    filled by our migrations (``store.db.migrate`` runs first), never writes it,
    and its compatibility check (which would compare our revision with its own)
    is skipped. Its tables are created on first use on either backend.

    A PostgreSQL deployment whose studies were kept in its own schema before
    this leaves them there unread: sweeps running across that upgrade start
    new studies, so finish or cancel them first.
    """
    if make_url(database_url).get_backend_name() == "sqlite":
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
        return optuna.storages.RDBStorage(database_url, engine_kwargs=engine_kwargs, skip_compatibility_check=True)
    create_optuna_schema(database_url)
    engine_kwargs = {"pool_pre_ping": True, "connect_args": {"options": f"-csearch_path={OPTUNA_SCHEMA}"}}
    return optuna.storages.RDBStorage(database_url, engine_kwargs=engine_kwargs)


def create_optuna_schema(database_url: str) -> None:
    """``CREATE SCHEMA IF NOT EXISTS optuna``; two workers starting at once may race, and one finding it made is fine."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{OPTUNA_SCHEMA}"'))
    except IntegrityError:
        pass  # the other one's CREATE committed between our check and ours
    finally:
        engine.dispose()


def make_sampler(config: dict[str, Any], number: int) -> optuna.samplers.BaseSampler:
    """The sweep's sampler, built for asking trial ``number`` (see the module notes on seeds).

    The grid sampler keeps the sweep's seed: its seed also shuffles the grid, and
    every instance must number the grid's points alike; the points it visited are
    read from the study, so it repeats none.
    """
    seed = config["seed"] + number
    if config["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config["sampler"] == "grid":
        space = {path: grid_values(param) for path, param in config["space"].items()}
        return optuna.samplers.GridSampler(space, seed=config["seed"])  # type: ignore[arg-type]
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(config: dict[str, Any]) -> optuna.pruners.BasePruner:
    """The sweep's pruner with the settings its body gave (``pruner_options``; the API let only its own through).

    A setting left out is Optuna's default, except the median pruner's
    ``n_startup_trials`` (MEDIAN_STARTUP_TRIALS). Sweeps stored before the
    options existed have none.
    """
    options = config.get("pruner_options") or {}
    if config["pruner"] == "median":
        return optuna.pruners.MedianPruner(**{"n_startup_trials": MEDIAN_STARTUP_TRIALS, **options})
    if config["pruner"] == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    return optuna.pruners.NopPruner()


def suggest(trial: Trial, path: str, param: dict[str, Any]) -> Any:
    """One parameter of the space, from the trial (the value Optuna already stored, if it has one)."""
    if param["type"] == "categorical":
        return trial.suggest_categorical(path, param["choices"])
    if param["type"] == "int":
        return trial.suggest_int(path, param["low"], param["high"], step=param.get("step") or 1, log=param["log"])
    return trial.suggest_float(path, param["low"], param["high"], step=param.get("step"), log=param["log"])


class SweepController:
    """Drives every sweep whose lease it holds, one pass at a time (:meth:`run_once`)."""

    def __init__(self, settings: Settings, send: Send, session_factory: sessionmaker[Session] | None = None) -> None:
        self.settings = settings
        self.send = send
        self.session_factory = session_factory or session_factory_for(settings.database_url)
        self.token = new_owner_token()
        self.storage = optuna_storage(settings.database_url)

    def run_once(self) -> None:
        """One pass over every sweep with work; a sweep that raises is logged and retried next pass."""
        with self.session_factory() as session:
            sweep_ids = sweeps_to_drive(session)
        for sweep_id in sweep_ids:
            if not self._hold(sweep_id):
                continue
            try:
                self._drive(sweep_id)
            except DATABASE_DOWN:
                raise
            except Exception:  # one sweep's trouble must not stop the others
                log.exception("sweep %s: pass failed; retrying next pass", sweep_id)

    # -- a pass over one sweep ------------------------------------------------------------
    def _hold(self, sweep_id: str) -> bool:
        """Take or renew the sweep's lease; False if another controller drives it."""
        with self.session_factory() as session:
            held = claim_sweep_lease(session, sweep_id, self.token, self.settings.lease_ttl_s)
            session.commit()
        return held

    def _drive(self, sweep_id: str) -> None:
        """One pass: bring every RUNNING trial forward, ask for new ones, end the sweep when all are told."""
        with self.session_factory() as session:
            if start_sweep(session, sweep_id):
                session.commit()
                log.info("sweep %s: started", sweep_id)
            sweep = get_sweep_unscoped(session, sweep_id)
            assert sweep is not None
            rows = {row.number: row for row in list_trials(session, sweep_id)}
        study = self._study(sweep, 0)
        trials = study.get_trials(deepcopy=False)  # read once a pass: it is most of a pass's cost
        outcomes = [
            self._reconcile(sweep, study, t, rows.get(t.number)) for t in trials if t.state == TrialState.RUNNING
        ]
        asked = 0
        if sweep.status == "running" and "waiting" not in outcomes:
            asked = self._ask(sweep, len(trials))
        still_running = asked + sum(outcome != "told" for outcome in outcomes)
        self._conclude(sweep, len(trials) + asked, still_running)

    def _study(self, sweep: Sweep, number: int) -> optuna.Study:
        """The sweep's study (created on first use), with a sampler seeded for trial ``number``."""
        config = sweep.config
        sampler, pruner = make_sampler(config, number), make_pruner(config)
        try:
            return optuna.load_study(study_name=sweep.id, storage=self.storage, sampler=sampler, pruner=pruner)
        except KeyError:
            return optuna.create_study(
                storage=self.storage,
                study_name=sweep.id,
                direction=config["direction"],
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,  # a controller that lost its lease may have just made it
            )

    def _reconcile(self, sweep: Sweep, study: optuna.Study, frozen: FrozenTrial, row: SweepTrial | None) -> str:
        """Bring one trial Optuna has as RUNNING forward: "told", "running", or "waiting" (no job yet: quota)."""
        if row is not None and row.state != "running":
            self._tell(study, frozen.number, row.state, row.value)  # decided before a restart, not told yet
            return "told"
        if sweep.status == "cancelled":
            error = {"code": "cancelled", "message": "the sweep was cancelled"}
            self._settle(sweep, frozen.number, "failed", row, params=frozen.params, error=error)
            self._tell(study, frozen.number, "failed", None)
            return "told"
        if row is None:  # asked before a restart, never launched: launched now, not asked again
            launched = self._launch(sweep, Trial(self._study(sweep, frozen.number), frozen._trial_id))
            return "running" if launched else "waiting"
        return "running" if self._follow(sweep, study, frozen, row) else "told"

    def _ask(self, sweep: Sweep, asked: int) -> int:
        """Ask for new trials while the sweep has trials left and free slots, launching each; returns how many."""
        total, parallel = sweep.config["trials"], sweep.config["parallel"]
        new = 0
        while asked + new < total:
            with self.session_factory() as session:
                active = len(active_trial_jobs(session, sweep.id))
            if active >= parallel or not self._hold(sweep.id):
                break
            trial = self._study(sweep, asked + new).ask()
            new += 1
            log.info("sweep %s: asked for trial %d", sweep.id, trial.number)
            if not self._launch(sweep, trial):
                break
        return new

    def _launch(self, sweep: Sweep, trial: Trial) -> bool:
        """Make the trial's job and row in one transaction and send its message; False if it must wait.

        It waits while the owner's job quota is full, and launches nothing once the sweep is cancelled.
        """
        number, study = trial.number, trial.study
        params = {path: suggest(trial, path, param) for path, param in sweep.config["space"].items()}
        body = {**apply_params(sweep.spec, params), "name": f"{sweep.name}-{number}"}
        try:
            spec = validate_spec(body)
        except SpecError as exc:
            error = {"code": "invalid_spec", "message": "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors)}
            return self._fail_unlaunched(sweep, study, number, params, error)
        resolved = spec.model_dump(mode="json")
        with self.session_factory() as session:
            try:
                job, _ = create_job(
                    session,
                    sweep.owner_id,
                    resolved,
                    name=spec.name,
                    max_attempts=spec.train.max_attempts,
                    idempotency_key=trial_idempotency_key(sweep.id, number),
                    request_hash=spec_hash(resolved),
                    max_active=self.settings.max_active_jobs_per_owner,
                )
            except ActiveJobLimit as exc:
                session.rollback()
                log.info("sweep %s: trial %d waits for the owner's job quota (%s)", sweep.id, number, exc)
                return False
            except IdempotencyConflict as exc:
                session.rollback()
                error = {"code": "idempotency_conflict", "message": str(exc)}
                return self._fail_unlaunched(sweep, study, number, params, error)
            add_trial(session, sweep.id, number, params, job_id=job.id)
            if not sweep_is_active_locked(session, sweep.id):
                session.rollback()  # cancelled meanwhile: launch nothing; the next pass settles the trial
                return False
            session.commit()
        log.info("sweep %s: trial %d is job %s with %s", sweep.id, number, job.id, params)
        self._send(job.id, spec.resources.devices)
        return True

    def _fail_unlaunched(
        self, sweep: Sweep, study: optuna.Study, number: int, params: dict[str, Any], error: dict[str, Any]
    ) -> bool:
        """A trial no job can be made for: a failed row without a job, then the study told."""
        with self.session_factory() as session:
            add_trial(session, sweep.id, number, params, job_id=None, state="failed", error=error)
            session.commit()
        log.warning("sweep %s: trial %d failed before it ran: %s", sweep.id, number, error["message"])
        self._tell(study, number, "failed", None)
        return True

    def _send(self, job_id: str, devices: int) -> None:
        """Send the job's message; if the broker is away, the reaper re-sends it later (a queued job nobody took)."""
        try:
            self.send(job_id, devices)
        except Exception as exc:  # noqa: BLE001 - kombu raises many kinds of errors for an unreachable broker
            log.warning("job %s: could not send its message (%s); the reaper re-sends it", job_id, exc)

    def _follow(self, sweep: Sweep, study: optuna.Study, frozen: FrozenTrial, row: SweepTrial) -> bool:
        """Report the trial's new intermediate values; settle and tell it if its job ended or it is pruned.

        Returns whether it is still running. The pruner is asked only when a new
        value was reported, as it would be inside an objective function.
        """
        metric = selection_metric(sweep.spec, sweep.config["metric"])
        with self.session_factory() as session:
            job = get_job_unscoped(session, row.job_id) if row.job_id else None
            points = list_metrics(session, row.job_id, name=f"eval/{metric}") if job is not None else []
        by_epoch = {p.epoch if p.epoch is not None else p.step: p.value for p in points}
        new = sorted(by_epoch.keys() - frozen.intermediate_values.keys())
        trial = Trial(study, frozen._trial_id) if new else None
        for epoch in new:
            trial.report(by_epoch[epoch], epoch)  # type: ignore[union-attr]
        state, value, error = self._outcome(job, metric)
        if state is None and trial is not None and job.status in ("queued", "running") and trial.should_prune():
            state, value = "pruned", by_epoch[new[-1]]
        if state is None:
            return True
        state, value, error = self._settle(sweep, frozen.number, state, row, value=value, error=error)
        self._tell(study, frozen.number, state, value)
        log.info("sweep %s: trial %d %s (%s %s)", sweep.id, frozen.number, state, metric, value)
        return False

    @staticmethod
    def _outcome(job: Any, metric: str) -> tuple[str | None, float | None, dict[str, Any] | None]:
        """How a trial ends given its job: (state, value, error), or (None, ...) while the job is still active."""
        if job is None:
            return "failed", None, {"code": "job_deleted", "message": "the trial's job was deleted"}
        if job.status == "succeeded":
            value = (job.metrics or {}).get(metric)
            if value is None:
                return "failed", None, {"code": "metric_missing", "message": f"the job reported no {metric}"}
            return "complete", float(value), None
        if job.status == "failed":
            return "failed", None, job.error
        if job.status == "cancelled":
            return "failed", None, {"code": "cancelled", "message": "the trial's job was cancelled"}
        return None, None, None

    def _settle(
        self,
        sweep: Sweep,
        number: int,
        state: str,
        row: SweepTrial | None,
        *,
        params: dict[str, Any] | None = None,
        value: float | None = None,
        error: dict[str, Any] | None = None,
    ) -> tuple[str, float | None, dict[str, Any] | None]:
        """Write the trial's final state and return it (a pruned trial's job is cancelled in the same transaction).

        A job can finish between the pruner's look and the cancel; the cancel then
        finds it ended, and the trial ends as its job did rather than as pruned.
        """
        with self.session_factory() as session:
            if row is None:
                add_trial(session, sweep.id, number, params or {}, job_id=None, state=state, error=error)
            else:
                if state == "pruned" and row.job_id is not None:
                    job = request_cancel(session, sweep.owner_id, row.job_id)
                    if job is None or job.status not in ("cancelled", "cancelling"):
                        state, value, error = self._outcome(job, selection_metric(sweep.spec, sweep.config["metric"]))
                settle_trial(session, sweep.id, number, state, value=value, error=error)
            session.commit()
        return state, value, error

    @staticmethod
    def _tell(study: optuna.Study, number: int, state: str, value: float | None) -> None:
        """Tell the study how a trial ended; only ever for a trial it has as RUNNING.

        The grid sampler asks the study to stop once its grid is covered, which
        outside ``study.optimize`` raises RuntimeError after the result is stored:
        that is a tell that happened, not a failure.
        """
        try:
            if state == "complete":
                study.tell(number, value, skip_if_finished=True)
            else:
                study.tell(number, state=TELL_STATES[state], skip_if_finished=True)
        except RuntimeError:
            if study.get_trials(deepcopy=False)[number].state == TrialState.RUNNING:
                raise

    def _conclude(self, sweep: Sweep, asked: int, running: int) -> None:
        """Record the best trial; end the sweep once every trial is told, and give its lease up."""
        with self.session_factory() as session:
            best = best_trial(list_trials(session, sweep.id), sweep.config["direction"])
            if best != sweep.best:
                set_best(session, sweep.id, best)
            done = not running and (sweep.status == "cancelled" or asked >= sweep.config["trials"])
            if done and sweep.status == "running":
                counts = count_trials(session, sweep.id)
                status = "succeeded" if best is not None else "failed"
                error = None if best else {"code": "no_trial_completed", "message": f"no trial completed: {counts}"}
                if finish_sweep(session, sweep.id, status, error=error):
                    log.info("sweep %s: %s with trials %s, best %s", sweep.id, status, counts, best)
            if done:
                release_sweep_lease(session, sweep.id, self.token)
            session.commit()


def best_trial(rows: list[SweepTrial], direction: str) -> dict[str, Any] | None:
    """The complete trial with the best value (the earliest on a tie), as ``GET /v1/sweeps/{id}`` shows it."""
    complete = [r for r in rows if r.state == "complete" and r.value is not None]
    if not complete:
        return None
    sign = 1 if direction == "maximize" else -1
    row = max(complete, key=lambda r: (sign * r.value, -r.number))  # type: ignore[operator]
    return {"trial": row.number, "value": row.value, "params": row.params, "job_id": row.job_id}


# -- the thread in the worker -----------------------------------------------------------------


def run_controller(settings: Settings, stop_event: threading.Event, send: Send) -> None:
    """Drive sweeps every ``sweep_poll_s`` until ``stop_event`` is set; an outage is waited out like the reaper's."""
    optuna.logging.disable_default_handler()  # Optuna's records go through our logging (JSON lines)
    optuna.logging.enable_propagation()
    controller: SweepController | None = None
    database_down = False
    while not stop_event.is_set():
        try:
            controller = controller or SweepController(settings, send)
            controller.run_once()
        except DATABASE_DOWN as exc:
            if not database_down:
                log.warning("database unreachable (%s); sweeps resume when it is back", type(exc).__name__)
            database_down = True
        except Exception:  # a bug must not end the loop
            log.exception("sweep controller pass failed; retrying in %.1fs", settings.sweep_poll_s)
        else:
            database_down = False
        stop_event.wait(settings.sweep_poll_s)


class SweepStep(bootsteps.StartStopStep):
    """Runs the sweep controller as a thread of the worker's main process while the worker runs."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        self.stop_event.clear()
        app = parent.app
        self.thread = threading.Thread(
            target=run_controller,
            args=(app.embedmix_settings, self.stop_event, app.enqueue),
            name="embedmix-sweeps",
            daemon=True,
        )
        self.thread.start()

    def stop(self, parent: Any) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(STOP_TIMEOUT_S)

    terminate = stop
