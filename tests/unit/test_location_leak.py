"""Expired bindings leave nothing behind: the expiry loop and the memory store's internals."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from sipshield.message import parse_message
from sipshield.routing import CONTINUE, RequestContext
from sipshield.routing._registrar import LocationLookup, Registrar
from sipshield.state import Binding, ExpiryLoop, MemoryLocationStore, StoreUnavailable


class Flow:
    transport_name = "UDP"
    remote = ("192.0.2.9", 5060)


def register(user: int, expires: int = 120) -> RequestContext:
    data = (
        f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK{user}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:u{user}@example.com>;tag=t\r\nTo: <sip:u{user}@example.com>\r\nCall-ID: {user}@ua\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <sip:u{user}@192.0.2.{user % 250 + 1}:{5060 + user % 1000}>;expires={expires}\r\nContent-Length: 0\r\n\r\n"
    )
    return RequestContext(parse_message(data.encode()), Flow())  # type: ignore[arg-type]


def count(store: Any) -> int:
    box: list[int] = []
    store.count().addCallback(box.append)
    return box[0]


def test_ten_thousand_expired_registrations_leave_the_memory_store_empty() -> None:
    clock = Clock()
    store = MemoryLocationStore(clock)
    registrar = Registrar(store, ["example.com"], clock, min_expires=60)
    loop = ExpiryLoop(store, clock, interval=10)
    loop.startService()
    for user in range(10_000):
        decision = registrar.process(register(user, expires=60 + user % 60))
        assert not isinstance(decision, defer.Deferred) or decision.called
    assert count(store) == 10_000
    clock.advance(60)  # the loop runs at 10 s, 20 s ... and purges whatever is due
    assert 0 < count(store) < 10_000
    clock.advance(60)
    assert count(store) == 0
    assert store._aors == {}
    assert store._heap == []
    assert loop.expired == 10_000
    lookup = LocationLookup(store, ["example.com"], clock)
    invite = parse_message(
        b"INVITE sip:u1@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20;branch=z9hG4bKi\r\nMax-Forwards: 70\r\n"
        b"From: <sip:b@example.com>;tag=b\r\nTo: <sip:u1@example.com>\r\nCall-ID: i@b\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert lookup.process(RequestContext(invite, Flow())) is CONTINUE  # type: ignore[arg-type]
    loop.stopService()
    assert clock.getDelayedCalls() == []


def test_expiry_loop_survives_a_failing_round_and_stops_cleanly() -> None:
    clock = Clock()

    class FlakyStore:
        calls = 0

        def expire(self, now: float) -> defer.Deferred[int]:
            self.calls += 1
            if self.calls == 1:
                return defer.fail(StoreUnavailable("down"))
            return defer.succeed(3)

    store = FlakyStore()
    loop = ExpiryLoop(store, clock, interval=10)
    loop.startService()
    clock.advance(10)
    clock.advance(10)
    assert (store.calls, loop.expired) == (2, 3)
    d = loop.stopService()
    assert d is not None and d.called
    assert clock.getDelayedCalls() == []


def test_expiry_loop_waits_for_a_slow_round_before_the_next() -> None:
    clock = Clock()
    pending: list[defer.Deferred[int]] = []

    class SlowStore:
        def expire(self, now: float) -> defer.Deferred[int]:
            d: defer.Deferred[int] = defer.Deferred()
            pending.append(d)
            return d

    loop = ExpiryLoop(SlowStore(), clock, interval=10)
    loop.startService()
    clock.advance(10)
    clock.advance(30)
    assert len(pending) == 1
    pending[0].callback(5)
    clock.advance(10)
    assert len(pending) == 2 and loop.expired == 5
    pending[1].callback(0)
    loop.stopService()


def test_expiry_uses_the_reactor_clock() -> None:
    clock = Clock()
    store = MemoryLocationStore(clock)
    store.put(Binding("sip:a@example.com", "sip:a@192.0.2.1", expires_at=25))
    loop = ExpiryLoop(store, clock, interval=10)
    loop.startService()
    clock.advance(20)
    assert count(store) == 1
    clock.advance(10)
    assert count(store) == 0
    loop.stopService()
