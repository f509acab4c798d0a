"""The location stores' shared suite (location_store_contract) on the Redis
store, against the test's own redis-server; and what is particular to it:
the registrar's caps and CSeq rule checked inside Redis (two nodes' stores
racing), Redis stopped (503 at once, logged once) and back (reconnected)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import pytest_twisted
from location_store_contract import *  # noqa: F403  (the shared suite, run on the store below)
from location_store_contract import AOR, binding
from redis_support import RedisServer, until
from twisted.internet import defer, reactor

from sipshield.state import BindingLimits, BindingRefused, RedisLocationStore, StoreUnavailable
from sipshield.state._redis_location import redis_location_store


def started(url: str, prefix: str) -> RedisLocationStore:
    store = redis_location_store(url, prefix, reactor)
    pytest_twisted.blockon(store.start())
    pytest_twisted.blockon(until(store.link.up, 10, "the store connected to redis-server"))
    return store


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def store(redis_server: RedisServer, prefix: str) -> Iterator[RedisLocationStore]:
    s = started(redis_server.url, prefix)
    yield s
    pytest_twisted.blockon(s.stop())


@pytest.fixture
def other(redis_server: RedisServer, prefix: str) -> Iterator[RedisLocationStore]:
    """A second node's store on the same Redis and prefix."""
    s = started(redis_server.url, prefix)
    yield s
    pytest_twisted.blockon(s.stop())


def limits(max_bindings: int = 16, per_identity: int = 32, identity: str | None = "alice@example.com", call_id: str = "c1", cseq: int = 1) -> BindingLimits:
    return BindingLimits(max_bindings, per_identity, identity, call_id, cseq)


@pytest_twisted.inlineCallbacks
def test_a_binding_put_by_one_node_is_read_and_removed_by_the_other(store: RedisLocationStore, other: RedisLocationStore):
    yield store.put(binding(identity="alice@example.com"))
    assert [b.contact for b in (yield other.bindings(AOR))] == ["sip:alice@192.0.2.1:5060"]
    assert (yield other.count_for_identity("alice@example.com")) == 1
    assert (yield other.remove(AOR, "sip:alice@192.0.2.1:5060")) is True
    assert (yield store.bindings(AOR)) == []
    assert (yield store.count_for_identity("alice@example.com")) == 0
    assert (yield store.count()) == 0


@pytest_twisted.inlineCallbacks
def test_max_bindings_holds_across_nodes_racing(store: RedisLocationStore, other: RedisLocationStore):
    # Both nodes read one binding and each adds one more under a cap of 2: only one may.
    yield store.put(binding("sip:a@192.0.2.1"))
    results = yield defer.DeferredList([
        store.update(AOR, (), [binding("sip:b@192.0.2.2", call_id="cb")], limits(max_bindings=2, call_id="cb")),
        other.update(AOR, (), [binding("sip:c@192.0.2.3", call_id="cc")], limits(max_bindings=2, call_id="cc")),
    ], consumeErrors=True)
    refused = [r for ok, r in results if not ok]
    assert len(refused) == 1 and refused[0].check(BindingRefused)
    assert (refused[0].value.status, refused[0].value.reason) == (403, "Too Many Contacts")
    assert len((yield store.bindings(AOR))) == 2
    # A refresh of a held binding is never refused.
    yield store.update(AOR, (), [binding("sip:b@192.0.2.2", call_id="cb", cseq=2)], limits(max_bindings=2, call_id="cb", cseq=2))


@pytest_twisted.inlineCallbacks
def test_max_bindings_per_identity_holds_across_aors_and_nodes(store: RedisLocationStore, other: RedisLocationStore):
    who = "alice@example.com"
    yield store.update("sip:a1@example.com", (), [binding("sip:x@192.0.2.1", aor="sip:a1@example.com", identity=who)], limits(per_identity=2))
    results = yield defer.DeferredList([
        s.update(aor, (), [binding("sip:x@192.0.2.1", aor=aor, identity=who)], limits(per_identity=2))
        for s, aor in ((store, "sip:a2@example.com"), (other, "sip:a3@example.com"))
    ], consumeErrors=True)
    refused = [r.value for ok, r in results if not ok]
    assert [(e.status, e.reason) for e in refused] == [(403, "Too Many Registrations")]
    assert (yield other.count_for_identity(who)) == 2
    # Moving a binding within the cap: removing one frees its place.
    yield store.update("sip:a1@example.com", ["sip:x@192.0.2.1"], [binding("sip:y@192.0.2.1", aor="sip:a1@example.com", identity=who)], limits(per_identity=2))
    assert (yield store.count_for_identity(who)) == 2


@pytest_twisted.inlineCallbacks
def test_cseq_rule_is_checked_inside_redis(store: RedisLocationStore, other: RedisLocationStore):
    yield store.update(AOR, (), [binding(call_id="same", cseq=5)], limits(call_id="same", cseq=5))
    with pytest.raises(BindingRefused) as refused:
        yield other.update(AOR, (), [binding(call_id="same", cseq=5)], limits(call_id="same", cseq=5))
    assert (refused.value.status, refused.value.reason) == (400, "CSeq out of order")
    with pytest.raises(BindingRefused):
        yield other.update(AOR, ["sip:alice@192.0.2.1:5060"], (), limits(call_id="same", cseq=4))
    yield other.update(AOR, ["sip:alice@192.0.2.1:5060"], (), limits(call_id="same", cseq=6))
    assert (yield store.bindings(AOR)) == []


@pytest_twisted.inlineCallbacks
def test_expire_reaches_every_index(store: RedisLocationStore):
    now = reactor.seconds()
    for i in range(5):
        yield store.put(binding(f"sip:p{i}@192.0.2.1", expires_in=-1 if i < 3 else 600, identity="who"))
    assert (yield store.expire(now)) == 3
    assert (yield store.count()) == 2
    assert (yield store.count_for_identity("who")) == 2
    assert [b.aor for b in (yield store.listing(10))] == [AOR, AOR]


@pytest_twisted.inlineCallbacks
def test_redis_down_fails_fast_with_store_unavailable_logged_once_then_reconnects(
    store: RedisLocationStore, redis_server: RedisServer, log_lines: list[str]
):
    yield store.put(binding())
    redis_server.kill()
    yield until(lambda: not store.link.up(), 10, "the store seeing redis-server gone")
    for _ in range(3):
        started_at = time.monotonic()
        with pytest.raises(StoreUnavailable):
            yield store.bindings(AOR)
        assert time.monotonic() - started_at < 0.5  # at once, not a timeout
        with pytest.raises(StoreUnavailable):
            yield store.update(AOR, (), [binding("sip:b@192.0.2.2")], limits())
    assert len([line for line in log_lines if "location store: Redis at" in line and "unavailable" in line]) == 1
    redis_server.start_and_wait()  # same port; empty (no persistence), and without the scripts loaded
    yield until(store.link.up, 15, "the store reconnected")
    yield store.update(AOR, (), [binding("sip:b@192.0.2.2")], limits())  # NOSCRIPT -> EVAL
    assert [b.contact for b in (yield store.bindings(AOR))] == ["sip:b@192.0.2.2"]
    assert any("location store: Redis at" in line and "back" in line for line in log_lines)


@pytest_twisted.inlineCallbacks
def test_a_refreshed_binding_keeps_its_id_and_expires_at_its_new_time(store: RedisLocationStore):
    now = reactor.seconds()
    yield store.put(binding(expires_in=10, identity="who"))
    yield store.put(binding(expires_in=1000, identity="who", cseq=2))
    assert (yield store.expire(now + 20)) == 0
    assert [b.cseq for b in (yield store.bindings(AOR))] == [2]
    assert (yield store.count_for_identity("who")) == 1
    # Removed and put again in one update: a new binding (a new id, last among equal q).
    yield store.put(binding("sip:z@192.0.2.9"))
    yield store.update(AOR, ["sip:alice@192.0.2.1:5060"], [binding(expires_in=1000, identity="who", cseq=3)])
    assert [b.contact for b in (yield store.bindings(AOR))] == ["sip:z@192.0.2.9", "sip:alice@192.0.2.1:5060"]
    assert (yield store.expire(now + 2000)) == 2
    assert (yield store.count()) == 0
    assert (yield store.count_for_identity("who")) == 0
