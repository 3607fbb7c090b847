"""The API's cache of authenticated keys: expiry, eviction, and when it must not answer at all."""

from __future__ import annotations

from embedmix.api.key_cache import Caller, KeyCache

ALICE = Caller(id=1, is_admin=False)
BOB = Caller(id=2, is_admin=False)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def trusted_cache(ttl_s: float = 30.0, **kwargs: object) -> tuple[KeyCache, Clock]:
    clock = Clock()
    cache = KeyCache(ttl_s, clock=clock, **kwargs)  # type: ignore[arg-type]
    cache.trust()
    return cache, clock


def test_a_key_is_answered_until_its_ttl_passes() -> None:
    cache, clock = trusted_cache(ttl_s=30)
    cache.put("em_alice", ALICE, cache.generation)
    assert cache.get("em_alice") == ALICE
    assert cache.get("em_other") is None
    clock.now += 29.9
    assert cache.get("em_alice") == ALICE
    clock.now += 0.1
    assert cache.get("em_alice") is None


def test_nothing_is_answered_before_revocations_can_be_heard_or_after_they_cannot() -> None:
    cache = KeyCache(30)
    cache.put("em_alice", ALICE, cache.generation)
    assert cache.get("em_alice") is None  # never trusted: the put was dropped
    cache.trust()
    cache.put("em_alice", ALICE, cache.generation)
    assert cache.get("em_alice") == ALICE
    cache.distrust()
    assert cache.get("em_alice") is None
    cache.trust()  # back: it starts empty, since revocations may have been missed meanwhile
    assert cache.get("em_alice") is None


def test_a_revocation_evicts_every_key_of_that_owner_only() -> None:
    cache, _ = trusted_cache()
    cache.put("em_alice_1", ALICE, cache.generation)
    cache.put("em_alice_2", ALICE, cache.generation)
    cache.put("em_bob", BOB, cache.generation)
    cache.evict_owner(ALICE.id)
    assert cache.get("em_alice_1") is None and cache.get("em_alice_2") is None
    assert cache.get("em_bob") == BOB


def test_a_lookup_that_raced_a_revocation_is_not_kept() -> None:
    """The lookup read the key as valid, the revocation committed and evicted, then the lookup
    came back with its stale answer: it must not be stored."""
    cache, _ = trusted_cache()
    began = cache.generation
    cache.evict_owner(ALICE.id)
    cache.put("em_alice", ALICE, began)
    assert cache.get("em_alice") is None
    cache.put("em_alice", ALICE, cache.generation)  # a lookup that began after the revocation
    assert cache.get("em_alice") == ALICE


def test_the_cache_holds_at_most_max_entries_dropping_the_oldest() -> None:
    cache, _ = trusted_cache(max_entries=2)
    for name in ("em_1", "em_2", "em_3"):
        cache.put(name, ALICE, cache.generation)
    assert cache.get("em_1") is None
    assert cache.get("em_2") == ALICE and cache.get("em_3") == ALICE


def test_a_zero_ttl_keeps_nothing() -> None:
    cache, _ = trusted_cache(ttl_s=0)
    cache.put("em_alice", ALICE, cache.generation)
    assert cache.get("em_alice") is None


def test_keys_are_held_by_their_hash_not_in_plain() -> None:
    cache, _ = trusted_cache()
    cache.put("em_secret_key", ALICE, cache.generation)
    assert "em_secret_key" not in repr(vars(cache))
