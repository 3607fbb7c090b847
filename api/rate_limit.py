"""Per-owner submission rate limit, shared by every API process through Redis.

A fixed one-minute window per owner: ``INCR`` a key named after the owner and
the window, expiring with the window. Every API process sees the same count,
so running several behind a load balancer does not multiply the limit. The
broker's Redis is used because the API already depends on it; when it cannot
be reached the limiter lets the request through (and logs it): the job is
committed as ``queued`` regardless and the reaper sends its message later, so
refusing submissions while Redis is down would turn a broker hiccup into an
outage.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import redis

from embedmix.api.queue import redis_client_url

logger = logging.getLogger("embedmix.api")

WINDOW_S = 60
_TIMEOUT_S = 1.0


class SubmitRateLimiter:
    """``check(owner_id)`` returns 0 when allowed, else the seconds until the window resets."""

    def __init__(
        self, broker_url: str, per_minute: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._client = redis.Redis.from_url(
            redis_client_url(broker_url),
            socket_connect_timeout=_TIMEOUT_S,
            socket_timeout=_TIMEOUT_S,
        )

    def check(self, owner_id: int) -> int:
        """Count one submission; the Retry-After in seconds if it is over the limit, else 0."""
        now = self.clock()
        window = int(now // WINDOW_S)
        key = f"embedmix:submit-rate:{owner_id}:{window}"
        try:
            pipe = self._client.pipeline()
            pipe.incr(key)
            pipe.expire(key, WINDOW_S + 1)
            count = int(pipe.execute()[0])
        except redis.RedisError as exc:
            logger.warning("submission rate limit not checked: Redis error %s", exc.__class__.__name__)
            return 0
        if count <= self.per_minute:
            return 0
        return max(1, math.ceil((window + 1) * WINDOW_S - now))

    def close(self) -> None:
        self._client.close()
