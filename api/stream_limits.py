"""What open event streams may take from one API process: slots, counted per key and in all,
and a few threads for their polls.

A stream costs a poll of the database every half second for as long as its
client holds it, so without a bound one key could open enough of them to take
every thread of FastAPI's pool (each poll holds one) and every pooled
connection, and every other route, ``/v1/jobs`` included, would queue behind
them. So:

* a stream holds a slot from before its first read until its response has
  ended, whichever way it ends (the job finished, the client left, an error,
  the server stopping): :meth:`StreamLimits.hold` is a context manager, and the
  route enters it in a dependency whose exit FastAPI runs after the response;
* beyond ``max_streams_per_key`` slots for one key, or ``max_streams`` in the
  process, a new stream is refused with 429 before it touches the database;
* at most :data:`POLL_THREADS` polls run at once, on FastAPI's thread pool,
  so streams never hold more than that many of its threads and connections.

Counts live in the process (each API process has its own caps) and are only
touched on its event loop, so they need no lock.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

from embedmix.api.errors import ApiError

# Polls of the database that streams may run at once (of FastAPI's 40 threads).
POLL_THREADS = 4
# A slot frees when some stream ends; this is how long a refused client should wait before trying again.
RETRY_AFTER_S = 5

P = ParamSpec("P")
T = TypeVar("T")


class StreamLimits:
    """Slots for open streams (per key and in all) and the gate their polls go through."""

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key = per_key
        self.total = total
        self._by_key: Counter[str] = Counter()
        self._polls = asyncio.Semaphore(POLL_THREADS)

    @property
    def open(self) -> int:
        """Streams open in this process now."""
        return self._by_key.total()

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """A slot for one stream of ``key`` (the API key itself; only its digest is kept) while the block runs.

        Raises the 429 if ``key`` or the process is at its cap.
        """
        digest = hashlib.sha256(key.encode()).hexdigest()
        self._take(digest)
        try:
            yield
        finally:
            self._by_key[digest] -= 1
            if not self._by_key[digest]:
                del self._by_key[digest]

    def _take(self, digest: str) -> None:
        if self._by_key[digest] >= self.per_key:
            raise _refused(
                f"this key already has {self.per_key} event streams open, the most one key may hold "
                "(max_streams_per_key); close one first"
            )
        if self.open >= self.total:
            raise _refused(
                f"this server already holds {self.total} event streams, the most it serves at once "
                "(max_streams); retry shortly"
            )
        self._by_key[digest] += 1

    async def poll(self, read: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one blocking read on FastAPI's thread pool, at most POLL_THREADS at once."""
        async with self._polls:
            return await run_in_threadpool(read, *args, **kwargs)


def _refused(message: str) -> ApiError:
    return ApiError(429, "too_many_streams", message, headers={"Retry-After": str(RETRY_AFTER_S)})
