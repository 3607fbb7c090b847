"""The status poll's reads: polls waiting at the same moment share one SELECT.

``GET /v1/jobs/{id}`` is the request clients repeat every second a job trains;
under load dozens are waiting at once. Each used to cost a thread hop, a
statement through SQLAlchemy and a round trip to the database of its own.
Here a poll joins the batch that has not started yet; a batch is one
``SELECT ... WHERE id IN (...)`` on a poll thread, and every poll in it gets
its own job's body, or None when the job is not the caller's (the row's owner
is compared here, so a batch mixing owners answers each only with its own jobs).

A batch starts only after its polls arrived, never before: a poll always sees
the job as it was after the poll came in (a cancel then a poll reads the
cancel). At most ``in_flight`` batches run at once; a poll arriving while they
run waits for the next one, no longer than a read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from sqlalchemy import Engine

from embedmix.api.schemas import JobOut
from embedmix.store import get_job_rows

Key = tuple[int, str]  # (owner id, job id)


class JobReads:
    """Batches of job reads on ``executor``'s threads, over ``engine`` (the autocommit poll engine)."""

    def __init__(self, engine: Engine, executor: Executor, in_flight: int = 2) -> None:
        self.engine = engine
        self.executor = executor
        self.in_flight = in_flight
        self._waiting: dict[Key, list[asyncio.Future[bytes | None]]] = {}
        self._running = 0

    async def read(self, owner_id: int, job_id: str) -> bytes | None:
        """The owner's job as the JSON body of ``GET /v1/jobs/{id}``, or None if it is not theirs."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._waiting.setdefault((owner_id, job_id), []).append(future)
        if self._running < self.in_flight:
            self._start(loop)
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting, {}
        try:
            done = loop.run_in_executor(self.executor, read_jobs_json, self.engine, list(batch))
        except RuntimeError as exc:  # the executor is shut down: the server is stopping
            for future in (f for futures in batch.values() for f in futures if not f.done()):
                future.set_exception(exc)
            return
        self._running += 1
        done.add_done_callback(self._answer(loop, batch))

    def _answer(
        self, loop: asyncio.AbstractEventLoop, batch: dict[Key, list[asyncio.Future[bytes | None]]]
    ) -> Callable[[asyncio.Future[dict[Key, bytes]]], None]:
        def answer(done: asyncio.Future[dict[Key, bytes]]) -> None:
            self._running -= 1
            error = done.exception()
            bodies: dict[Key, bytes] = {} if error is not None else done.result()
            for key, futures in batch.items():
                for future in futures:
                    if future.done():  # the client went away
                        continue
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(bodies.get(key))
            if self._waiting and self._running < self.in_flight:
                self._start(loop)

        return answer


def read_jobs_json(engine: Engine, keys: list[Key]) -> dict[Key, bytes]:
    """The JSON body of each (owner, job) whose job exists and is that owner's; one statement.

    The model is dumped once here, not validated again and dumped by FastAPI.
    """
    with engine.connect() as connection:
        rows = get_job_rows(connection, sorted({job_id for _, job_id in keys}))
    by_id: dict[str, Any] = {row.id: row for row in rows}
    bodies = {}
    for owner_id, job_id in keys:
        row = by_id.get(job_id)
        if row is not None and row.owner_id == owner_id:
            bodies[(owner_id, job_id)] = JobOut.of(row).model_dump_json().encode()
    return bodies
