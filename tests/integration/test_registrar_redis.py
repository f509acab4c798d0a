"""The registrar and the location lookup of two nodes on one Redis store (the
test's own redis-server, the real reactor): a binding registered through one
node is found by the other's lookup and removed through it; the caps hold
across nodes racing (checked inside Redis, not by the per-process locks);
Redis stopped: REGISTER and lookup get 503 with Retry-After, no traceback;
Redis back: served again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from pipeline_support import RecordingFlow
from redis_support import RedisServer, until
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred

from sipshield.message import parse_message
from sipshield.routing import CONTINUE, Decision, RequestContext
from sipshield.routing._registrar import LocationLookup, Registrar
from sipshield.state import RedisLocationStore
from sipshield.state._redis_location import redis_location_store

AOR = "sip:alice@example.com"


def register(contact: str | None, to: str = AOR, call_id: str = "reg1@ua", cseq: int = 1, expires: int = 600, identity: str | None = None) -> RequestContext:
    lines = [
        "REGISTER sip:example.com SIP/2.0", f"Via: SIP/2.0/UDP 192.0.2.9:5062;branch=z9hG4bK{uuid.uuid4().hex[:10]}", "Max-Forwards: 70",
        f"From: <{to}>;tag=f1", f"To: <{to}>", f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER", f"Expires: {expires}",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    context = RequestContext(parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()), RecordingFlow(("192.0.2.9", 5062)))  # type: ignore[arg-type]
    context.identity = identity
    return context


def invite(uri: str = AOR) -> RequestContext:
    data = (f"INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK{uuid.uuid4().hex[:10]}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:bob@example.com>;tag=b\r\nTo: <{uri}>\r\nCall-ID: call@b\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    return RequestContext(parse_message(data.encode()), RecordingFlow(("192.0.2.9", 5062)))  # type: ignore[arg-type]


class Node:
    def __init__(self, store: RedisLocationStore, **caps: int) -> None:
        self.store = store
        self.registrar = Registrar(store, ["example.com"], reactor, min_expires=60, store_timeout=2.0, retry_after=17, **caps)
        self.lookup = LocationLookup(store, ["example.com"], reactor, store_timeout=2.0, retry_after=17)

    def register(self, context: RequestContext) -> Deferred[Decision]:
        return defer.maybeDeferred(self.registrar.process, context)

    def route(self, context: RequestContext) -> Deferred[Decision]:
        return defer.maybeDeferred(self.lookup.process, context)



@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[tuple[RedisLocationStore, RedisLocationStore]]:
    prefix = f"r{uuid.uuid4().hex[:8]}:"
    stores = [redis_location_store(redis_server.url, prefix, reactor) for _ in range(2)]
    for store in stores:
        pytest_twisted.blockon(store.start())
    yield stores[0], stores[1]
    for store in stores:
        pytest_twisted.blockon(store.stop())


@pytest_twisted.inlineCallbacks
def test_registered_through_a_routed_by_b_and_unregistered_through_b_gone_on_a(nodes: Any):
    a, b = Node(nodes[0]), Node(nodes[1])
    ok: Decision = yield a.register(register("<sip:alice@192.0.2.9:5062>"))
    assert ok.status == 200
    relayed: Decision = yield b.route(invite())
    assert [str(t.uri) for t in relayed.targets] == ["sip:alice@192.0.2.9:5062"]
    assert relayed.targets[0].source == ("UDP", "192.0.2.9", 5062)
    gone: Decision = yield b.register(register("*", cseq=2, expires=0))
    assert gone.status == 200
    assert (yield a.route(invite())) is CONTINUE


@pytest_twisted.inlineCallbacks
def test_one_identity_racing_into_two_aors_through_two_nodes_gets_one_binding_under_a_cap_of_one(nodes: Any):
    a, b = Node(nodes[0], max_bindings_per_identity=1), Node(nodes[1], max_bindings_per_identity=1)
    answers = yield defer.gatherResults([
        a.register(register("<sip:p@192.0.2.9:5062>", to="sip:one@example.com", identity="mallory@example.com")),
        b.register(register("<sip:p@192.0.2.9:5062>", to="sip:two@example.com", identity="mallory@example.com")),
    ])
    assert sorted((d.status, d.reason) for d in answers) == [(200, "OK"), (403, "Too Many Registrations")]
    assert (yield nodes[0].count_for_identity("mallory@example.com")) == 1


@pytest_twisted.inlineCallbacks
def test_two_contacts_racing_into_one_aor_through_two_nodes_hold_max_bindings(nodes: Any):
    a, b = Node(nodes[0], max_bindings=1), Node(nodes[1], max_bindings=1)
    answers = yield defer.gatherResults([
        a.register(register("<sip:desk@192.0.2.9:5062>", call_id="desk")),
        b.register(register("<sip:mobile@192.0.2.10:5062>", call_id="mobile")),
    ])
    assert sorted((d.status, d.reason) for d in answers) == [(200, "OK"), (403, "Too Many Contacts")]
    assert len((yield nodes[1].bindings(AOR))) == 1


@pytest_twisted.inlineCallbacks
def test_redis_stopped_gives_503_with_retry_after_and_back_it_serves_again(nodes: Any, redis_server: RedisServer, log_lines: list[str]):
    a, b = Node(nodes[0]), Node(nodes[1])
    assert (yield a.register(register("<sip:alice@192.0.2.9:5062>"))).status == 200
    redis_server.kill()
    yield until(lambda: not nodes[0].link.up() and not nodes[1].link.up(), 10, "both stores seeing redis-server gone")
    for decision in ((yield a.register(register("<sip:alice@192.0.2.9:5062>", cseq=2))), (yield b.route(invite()))):
        assert (decision.status, decision.reason) == (503, "Location Service Unavailable")
        assert ("Retry-After", "17") in decision.headers
    redis_server.start_and_wait()  # empty again: no persistence
    yield until(lambda: nodes[0].link.up() and nodes[1].link.up(), 15, "both stores reconnected")
    assert (yield a.register(register("<sip:alice@192.0.2.9:5062>", cseq=3))).status == 200
    assert [str(t.uri) for t in (yield b.route(invite())).targets] == ["sip:alice@192.0.2.9:5062"]
    assert not any("Traceback" in line or "Unhandled" in line for line in log_lines)
