"""The reaper: gives jobs whose worker vanished, or whose message vanished, another chance.

Two ways a job gets stuck, two remedies:

* Its worker died (lease expired). ``store.reap_expired`` settles it with one
  guarded UPDATE (queued while attempts are left, else failed; a cancelling
  job becomes cancelled) and the reaper sends a fresh message for a re-queued
  job; the next attempt resumes from the newest checkpoint.
* Its message was lost (Redis restarted without persistence, the API died
  between commit and publish): the job sits queued, unleased, with nothing in
  the broker. The broker cannot be asked cheaply whether a message exists, so
  the reaper re-sends one once the job has waited ``lost_after_s`` (the
  ``lost_message_after_s`` setting, 2 minutes by default) since its last
  message, then waits twice as long before the next, and so on (capped at
  ``MAX_RESEND_INTERVAL_S``). A re-sent message that was not lost after all is
  harmless: its delivery finds the job leased or finished and exits. The
  doubling keeps a long, legitimately busy queue from filling with copies.

Every message the reaper (or a worker handing a job back) sends is recorded as
an ``enqueued`` event whose dedup key counts the sends, so when several
reapers run (every worker runs one) exactly one of them wins each re-send.
The reaper writes that record, and a reaped job's return to the queue, in the
transaction it commits only once the broker has taken the message: while the
broker is down nothing claims a send that did not happen, and every pass tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from embedmix.service.queue import TaskSender, job_devices, send_train_message
from embedmix.service.settings import Settings
from embedmix.store.db import DATABASE_DOWN
from embedmix.store.events import NewEvent, add_events
from embedmix.store.jobs import expired_leases, get_job_unscoped, reap_expired
from embedmix.store.models import Event, Job, utcnow
from embedmix.worker.context import session_factory_for
from embedmix.worker.events import ENQUEUED, status_event

log = logging.getLogger("embedmix.reaper")

LOST_AFTER_S = 120.0
MAX_RESEND_INTERVAL_S = 6 * 3600.0

Send = Callable[[str, int], None]  # (job id, the devices it asks for): service.queue's route


class BrokerApp(TaskSender, Protocol):
    """What the reaper needs from a Celery app: sending by name, over a connection it configures."""

    def connection_for_write(self, url: str | None = None, **kwargs: Any) -> Any: ...


def reap_once(
    session_factory: sessionmaker[Session],
    celery_app: BrokerApp,
    *,
    lost_after_s: float = LOST_AFTER_S,
    now: datetime | None = None,
) -> list[str]:
    """One pass: settle expired leases and re-send lost messages; returns the ids of the jobs whose message went.

    A job re-queued in this pass has just had its send recorded, so the
    lost-message check that follows does not send it a second time.
    """
    now = now or utcnow()
    with _sender(celery_app) as send:
        sent = _reap_expired_leases(session_factory, send, now)
        return sent + _resend_lost_messages(session_factory, send, now, lost_after_s)


def resend_waiting(session_factory: sessionmaker[Session], celery_app: BrokerApp) -> list[str]:
    """Re-send now the message of every queued job nobody holds; returns their ids (`embedmix up` after a crash).

    What a crashed run's broker still holds is uncertain (a job its worker
    handed back as the run died may have lost its message), and the
    lost-message pass would wait minutes to call it lost; a message too many
    is harmless (its delivery finds the job leased or finished).
    """
    with _sender(celery_app) as send:
        return _resend_lost_messages(session_factory, send, utcnow(), lost_after_s=0.0)


@contextmanager
def _sender(celery_app: BrokerApp) -> Iterator[Send]:
    """Sends over a connection of its own that gives up at the first refusal.

    kombu would otherwise retry for seconds while the send's record holds its
    transaction's locks; the reaper's passes are the retries.
    """
    with celery_app.connection_for_write(transport_options={"max_retries": 0}) as connection:
        yield lambda job_id, devices: send_train_message(celery_app, job_id, devices, retry=False, connection=connection)


def _commit_if_sent(session: Session, send: Send, job_id: str) -> bool:
    """Send the job's message, then commit the transaction that records the send; roll it back if the send failed.

    The record (an ``enqueued`` event, and for a reaped job its return to the
    queue) is the claim on the send, so it must not outlive a send that never
    happened: rolled back, the job looks exactly as before and the next pass tries again.
    """
    job = session.get(Job, job_id)
    assert job is not None  # the caller's transaction holds the row it just changed
    try:
        send(job_id, job_devices(job.spec))
    except Exception as exc:  # noqa: BLE001 - kombu raises many kinds of errors for an unreachable broker
        session.rollback()
        log.warning("job %s: could not send its message (%s: %s); the next pass retries", job_id, type(exc).__name__, exc)
        return False
    session.commit()
    log.info("job %s: message sent", job_id)
    return True


def _reap_expired_leases(session_factory: sessionmaker[Session], send: Send, now: datetime) -> list[str]:
    """Settle each job whose lease expired, each in its own transaction; returns those sent back to the queue."""
    with session_factory() as session:
        candidates = expired_leases(session, now)
    return [job_id for job_id in candidates if _reap(session_factory, send, job_id, now) == "queued"]


def _reap(session_factory: sessionmaker[Session], send: Send, job_id: str, now: datetime) -> str | None:
    """Settle one expired lease; returns the job's new status, or None if nothing changed.

    A job that goes back to the queue is committed only with its message sent,
    so while the broker is down it stays as it was (lease expired) for the next pass.
    """
    with session_factory() as session:
        status = reap_expired(session, job_id, now=now)
        if status is None:
            return None  # a heartbeat or another reaper got there first
        job = get_job_unscoped(session, job_id)
        assert job is not None
        events = [_reaped_event(job, status)]
        if status == "queued":
            events.append(_enqueued_event(session, job_id, "lease_expired", now))
        add_events(session, job_id, events)
        if status != "queued":
            session.commit()
        elif not _commit_if_sent(session, send, job_id):
            return None
    log.warning("job %s: lease expired; now %s", job_id, status)
    return status


def _reaped_event(job: Job, status: str) -> NewEvent:
    """The status event for a job whose worker stopped responding."""
    messages = {
        "queued": f"the worker stopped responding; re-queued after attempt {job.attempts} of {job.max_attempts}",
        "failed": f"the worker stopped responding and all {job.max_attempts} attempts are used",
        "cancelled": "cancelled (the worker stopped responding while cancelling)",
    }
    return status_event(
        job.id, status, messages[status], key=f"{job.attempts}:reaped", reason="lease_expired", attempt=job.attempts
    )


def _resend_lost_messages(
    session_factory: sessionmaker[Session], send: Send, now: datetime, lost_after_s: float
) -> list[str]:
    """Queued, unleased jobs that have waited past their resend interval; each claims its re-send by event."""
    resent = []
    with session_factory() as session:
        waiting = _waiting_jobs(session, now - timedelta(seconds=lost_after_s))
    for job_id, created_at in waiting:
        with session_factory() as session:
            sends, last_sent = _sends(session, job_id)
            interval = min(lost_after_s * 2**sends, MAX_RESEND_INTERVAL_S)
            if now - max(created_at, last_sent or created_at) < timedelta(seconds=interval):
                continue
            claimed = add_events(session, job_id, [_enqueued_event(session, job_id, "lost_message", now)])
            if claimed and _commit_if_sent(session, send, job_id):
                resent.append(job_id)
    return resent


def _waiting_jobs(session: Session, created_before: datetime) -> list[tuple[str, datetime]]:
    """Queued jobs nobody holds, old enough that their first message should long have been taken."""
    query = select(Job.id, Job.created_at).where(
        Job.status == "queued", Job.lease_owner.is_(None), Job.created_at <= created_before
    )
    return [(job_id, created_at) for job_id, created_at in session.execute(query)]


def _sends(session: Session, job_id: str) -> tuple[int, datetime | None]:
    """How many times a message was re-sent for the job, and when the last one went."""
    query = select(func.count(), func.max(Event.time)).where(Event.job_id == job_id, Event.type == ENQUEUED)
    count, last = session.execute(query).one()
    return count, last


def _enqueued_event(session: Session, job_id: str, reason: str, now: datetime) -> NewEvent:
    """The record of one re-send, stamped with the pass's clock (the backoff is measured from it).

    Its key is the send's ordinal, so reapers racing to re-send collide on it and one wins.
    """
    sends, _ = _sends(session, job_id)
    messages = {
        "lease_expired": "message re-sent after the worker stopped responding",
        "lost_message": "message re-sent: no worker took the job (its message may have been lost)",
    }
    return NewEvent(
        type=ENQUEUED,
        message=messages[reason],
        data={"reason": reason},
        dedup_key=f"{job_id}:enqueued:{sends + 1}",
        time=now,
    )


def run_reaper(settings: Settings, stop_event: threading.Event, celery_app: BrokerApp) -> None:
    """Reap every ``reaper_interval_s`` until ``stop_event`` is set (``embedmix reaper`` and the worker's thread).

    ``celery_app`` sends the messages; the caller hands it over (the worker its own
    app, ``embedmix reaper`` one made for the purpose), so the reaper never builds one.
    """
    session_factory = session_factory_for(settings.database_url)
    log.info("reaper running every %.1fs", settings.reaper_interval_s)
    database_down = False
    while True:
        try:
            reap_once(session_factory, celery_app, lost_after_s=settings.lost_message_after_s)
        except DATABASE_DOWN as exc:
            # An outage is expected to end; say so once, not with a traceback every pass.
            if not database_down:
                log.warning("database unreachable (%s); reaping resumes when it is back", type(exc).__name__)
            database_down = True
        except Exception:  # a broker outage or a bug must not end the loop
            log.exception("reaper pass failed; retrying in %.1fs", settings.reaper_interval_s)
        else:
            if database_down:
                log.info("database reachable again; reaping resumed")
            database_down = False
        if stop_event.wait(settings.reaper_interval_s):
            return


def start_reaper_thread(settings: Settings, stop_event: threading.Event, celery_app: BrokerApp) -> threading.Thread:
    """Run the reaper in a daemon thread of this process (each worker runs one; they do not conflict)."""
    thread = threading.Thread(
        target=run_reaper, args=(settings, stop_event, celery_app), name="embedmix-reaper", daemon=True
    )
    thread.start()
    return thread
