"""A worker's lease on its job, and the heartbeat thread that keeps it alive.

The lease is what makes Celery's at-least-once delivery safe: whoever holds a
live lease runs the job, every other delivery of the message exits. The
heartbeat renews it every ``ttl / 3`` so that two missed beats still leave
time for a third; once a renewal is refused (the reaper or another worker took
the job) or no renewal has succeeded for a whole TTL (the database is
unreachable), the lease counts as lost and the training loop stops.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from types import TracebackType

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from embedmix.store.jobs import claim_lease, get_job_unscoped, release_lease, renew_lease

log = logging.getLogger("embedmix.worker")

HOSTNAME_CHARS = 64
HEARTBEAT_RETRY_S = 1.0


def new_owner_token() -> str:
    """A token naming this process and this claim, so an operator can tell who holds a job."""
    host = socket.gethostname()[:HOSTNAME_CHARS]
    return f"{host}:{os.getpid()}:{secrets.token_hex(8)}"


class Lease:
    """A claimed lease; use it as a context manager to run the heartbeat while working."""

    def __init__(
        self, session_factory: sessionmaker[Session], job_id: str, token: str, ttl_s: float, attempt: int
    ) -> None:
        self.session_factory = session_factory
        self.job_id = job_id
        self.token = token
        self.ttl_s = ttl_s
        self.attempt = attempt
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def claim(cls, session_factory: sessionmaker[Session], job_id: str, ttl_s: float) -> Lease | None:
        """Claim the job (counting an attempt); None if it is finished, leased or out of attempts."""
        token = new_owner_token()
        with session_factory() as session:
            if not claim_lease(session, job_id, token, ttl_s):
                session.rollback()
                return None
            job = get_job_unscoped(session, job_id)
            assert job is not None  # the claim just matched its row
            attempt = job.attempts
            session.commit()
        return cls(session_factory, job_id, token, ttl_s, attempt)

    @property
    def run_key(self) -> str:
        """Names this claim in event dedup keys: the attempt number alone can recur after a hand-back."""
        return f"{self.attempt}:{self.token.rsplit(':', 1)[-1]}"

    @property
    def lost(self) -> bool:
        """True once the lease can no longer be trusted: stop working and write nothing more."""
        return self._lost.is_set()

    def renew(self, session: Session) -> bool:
        """Renew inside the caller's transaction; a final write uses this to prove it still owns the job.

        On PostgreSQL the UPDATE also locks the row until the caller commits, so
        no other worker can claim the job between this check and that write.
        """
        if self.lost or not renew_lease(session, self.job_id, self.token, self.ttl_s):
            self._lost.set()
            return False
        return True

    def release(self) -> None:
        """Give the lease back; a no-op if the reaper or another worker already took it."""
        try:
            with self.session_factory() as session:
                release_lease(session, self.job_id, self.token)
                session.commit()
        except SQLAlchemyError:
            log.warning("job %s: could not release the lease; it expires by itself", self.job_id, exc_info=True)

    def end(self) -> None:
        """Stop the heartbeat because the job is being finished: a renewal refused from now on
        is the ending itself clearing the lease, not a loss worth a warning."""
        self._stop.set()

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{self.job_id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        """Renew every ttl/3 until stopped or lost; database errors are retried until a TTL has passed.

        After a failed renewal the next try comes within a second, not a whole
        interval later, so a database that is back in time saves the lease.
        """
        interval = self.ttl_s / 3
        last_renewed = time.monotonic()
        wait = interval
        while not self._stop.wait(wait):
            try:
                with self.session_factory() as session:
                    renewed = self.renew(session)
                    session.commit()
            except SQLAlchemyError as exc:
                if time.monotonic() - last_renewed < self.ttl_s:
                    if wait == interval:  # the first failure of an outage; the retries stay quiet
                        log.warning("job %s: heartbeat failed (%s); retrying", self.job_id, type(exc).__name__)
                    wait = min(HEARTBEAT_RETRY_S, interval)
                    continue
                self._lost.set()
                log.error("job %s: no heartbeat reached the database for a whole lease; stopping", self.job_id)
                return
            if not renewed:
                if not self._stop.is_set():
                    log.warning("job %s: lease lost to the reaper or another worker; stopping", self.job_id)
                return
            last_renewed = time.monotonic()
            wait = interval
