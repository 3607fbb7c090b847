"""Recently authenticated API keys, so that a client polling a job does not cost a key lookup
(two queries and a thread hop) on every request.

A hit names the caller without touching the database; a miss authenticates
against the database and the answer is kept for ``ttl_s`` seconds. Only valid
keys are kept: an unknown or revoked key goes to the database every time.

Revocation stays immediate on every API process. Revoking evicts the owner's
entries in the revoking process and publishes the owner id on
:data:`REVOKED_CHANNEL`; each process's :class:`RevocationListener` evicts
them on receipt. The cache is trusted only while that listener is subscribed:
with Redis out of reach a revocation could pass unseen, so every request goes
to the database until the listener is back, and it then empties the cache,
since it cannot know what it missed.

A lookup that raced a revocation (it read the key as valid just before the
revocation committed, and would store it just after the eviction) must not
survive either: :attr:`KeyCache.generation` counts evictions, and an answer is
stored only if no eviction happened since its lookup began.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from embedmix.api.queue import redis_client_url

logger = logging.getLogger("embedmix.api")

REVOKED_CHANNEL = "embedmix:keys:revoked"
MAX_ENTRIES = 10_000
_RECONNECT_S = 1.0
_WAKE_S = 0.1  # how long a read waits for a message before checking whether to stop
_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: the owner behind its key, which is all a handler scopes by."""

    id: int
    is_admin: bool


class KeyCache:
    """Valid keys (by their sha256) and their callers, each for ``ttl_s`` seconds; 0 turns it off."""

    def __init__(
        self, ttl_s: float, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self.generation = 0
        self._entries: dict[str, tuple[Caller, float]] = {}
        self._trusted = False
        self._lock = threading.Lock()

    @property
    def trusted(self) -> bool:
        """Whether revocations reach this process, so the cache may answer."""
        return self._trusted

    def get(self, key: str) -> Caller | None:
        """The caller behind ``key`` if it was authenticated less than ``ttl_s`` ago."""
        if not self._trusted:
            return None
        entry = self._entries.get(_digest(key))
        if entry is None or self.clock() >= entry[1]:
            return None
        return entry[0]

    def put(self, key: str, caller: Caller, generation: int) -> None:
        """Keep the answer of a lookup that began at ``generation`` (read before the lookup)."""
        if self.ttl_s <= 0:
            return
        with self._lock:
            if not self._trusted or generation != self.generation:
                return  # an eviction happened while the lookup ran: its answer may be stale
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest insertion
            self._entries[_digest(key)] = (caller, self.clock() + self.ttl_s)

    def evict_owner(self, owner_id: int) -> None:
        """Forget every key of ``owner_id`` (one of them was revoked)."""
        with self._lock:
            self.generation += 1
            self._entries = {k: v for k, v in self._entries.items() if v[0].id != owner_id}

    def trust(self) -> None:
        """Revocations reach this process from now on: start afresh and use the cache."""
        with self._lock:
            self.generation += 1
            self._entries.clear()
            self._trusted = True

    def distrust(self) -> None:
        """Revocations may not reach this process: forget everything and stop using the cache."""
        with self._lock:
            self.generation += 1
            self._entries.clear()
            self._trusted = False


def _digest(key: str) -> str:
    """Entries are held by the key's hash, so that a memory dump shows no working key."""
    return hashlib.sha256(key.encode()).hexdigest()


class RevocationListener:
    """Keeps a :class:`KeyCache` in step with the revocations of every API process.

    A daemon thread subscribes to :data:`REVOKED_CHANNEL`, evicts each owner
    announced there, and re-subscribes after a Redis error; the cache is
    trusted only while it is subscribed.
    """

    def __init__(self, broker_url: str, cache: KeyCache) -> None:
        self.cache = cache
        self._client = redis.Redis.from_url(
            redis_client_url(broker_url),
            socket_connect_timeout=_TIMEOUT_S,
            socket_timeout=_TIMEOUT_S,
            health_check_interval=_TIMEOUT_S,
        )
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False  # log an outage once, not once a second

    def start(self) -> None:
        if self.cache.ttl_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="key-revocations", daemon=True)
        self._thread.start()

    def publish(self, owner_id: int) -> None:
        """Tell every API process (this one included, at once) that a key of ``owner_id`` was revoked.

        Called after the revocation is committed. If Redis cannot be reached,
        the other processes' listeners most likely cannot either, and they are
        not using their caches; one that can still reach it honours the key at
        most ``ttl_s`` longer, which the warning records.
        """
        self.cache.evict_owner(owner_id)
        try:
            self._client.publish(REVOKED_CHANNEL, str(owner_id))
        except redis.RedisError as exc:
            logger.warning(
                "key revocation for owner %d not announced to other API processes (Redis error %s); "
                "they drop cached keys within %.0f s",
                owner_id, exc.__class__.__name__, self.cache.ttl_s,
            )

    def close(self) -> None:
        """Stop listening: the thread sees the flag within :data:`_WAKE_S` and closes its connection."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=_TIMEOUT_S)
        self._client.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except (redis.RedisError, OSError) as exc:
                if not self._failing and not self._stopping.is_set():
                    logger.warning("key cache off until Redis is back: %s", exc.__class__.__name__)
                self._failing = True
            finally:
                self.cache.distrust()
            self._stopping.wait(_RECONNECT_S)

    def _listen(self) -> None:
        pubsub = self._client.pubsub()
        try:
            pubsub.subscribe(REVOKED_CHANNEL)
            while not self._stopping.is_set():
                message = pubsub.get_message(timeout=_WAKE_S)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    self.cache.trust()
                    if self._failing:
                        logger.info("key cache on again: revocations reach this process")
                    self._failing = False
                elif message["type"] == "message":
                    self.cache.evict_owner(int(message["data"]))
        finally:
            pubsub.close()
