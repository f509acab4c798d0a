"""The proxy core's relaying (RFC 3261 16.6 to 16.10) through the real service.

Branches to a host name wait for its look-up (the reactor's ``resolve``,
answered by the test): what is sent once it resolves, and what is never sent
because the call was answered, declined or timed out meanwhile; a 2xx
retransmitted after the response context ended; a CANCEL nobody answers.
These tests kill mutmut survivors of ``proxy/_core.py`` listed in
docs/development.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_support import PHONE, Proxy, proxy_service
from test_response_context import ResolvingReactor, call, cancel_of, cancels
from twisted.internet.error import DNSLookupError

from sipshield.state import Binding

BOB = "sip:bob@127.0.0.5:5070"
NAMED = "sip:bob@bob-phone.example.net:5070"
NAME = "bob-phone.example.net"


@pytest.fixture
def reactor() -> ResolvingReactor:
    reactor = ResolvingReactor()
    reactor.advance(1_000_000)
    return reactor


@pytest.fixture
def proxy(tmp_path: Path, reactor: ResolvingReactor) -> Iterator[Proxy]:
    proxy = proxy_service(tmp_path, clock=reactor)
    yield proxy
    proxy.stop()


def sent_to_named(proxy: Proxy) -> list[str]:
    return [m.method for m, hop in proxy.dispatcher.sent if hop[1] == "127.0.0.6" and hasattr(m, "method")]


def test_a_branch_to_a_host_name_is_sent_once_it_resolves(proxy: Proxy, reactor: ResolvingReactor) -> None:
    """The INVITE goes to the address the name resolved to, Record-Routed as any other (mutant _resolved 9)."""
    proxy.register("bob", NAMED)
    call(proxy)
    assert proxy.forwarded() == []
    reactor.lookups[NAME].callback("127.0.0.6")
    ((fwd, hop),) = proxy.forwarded()
    assert hop == ("UDP", "127.0.0.6", 5070) and fwd.headers.get("Record-Route")


@pytest.mark.parametrize("status", [200, 603])
def test_a_branch_still_resolving_when_another_answers_for_good_is_never_sent(proxy: Proxy, reactor: ResolvingReactor, status: int) -> None:
    """A 2xx or a 6xx elsewhere cancels the pending branches (16.7 step 5 and
    10): the one whose name resolves afterwards is never sent, or bob's
    second phone would ring for a call already answered or declined (mutant
    _resolved 5: only a caller's CANCEL stopped it)."""
    answering = proxy.register("bob", BOB)
    proxy.register("bob", NAMED)
    _, branches = call(proxy)
    proxy.respond(branches[answering], answering, status)
    reactor.lookups[NAME].callback("127.0.0.6")
    assert sent_to_named(proxy) == []
    assert status in proxy.phone.statuses()


def test_a_branch_whose_name_resolves_after_its_timer_c_is_never_sent(tmp_path: Path, reactor: ResolvingReactor) -> None:
    """Timer C (5 s here, under the 10 s look-up deadline) ended the branch
    with 408 (16.8) while its name was looked up, and another branch still
    rings; the late answer sends nothing to the timed-out one (mutant _resolved 2)."""
    proxy = proxy_service(tmp_path, clock=reactor, timers={"timer_c": 5})
    try:
        ringing = proxy.register("bob", BOB)
        proxy.register("bob", NAMED)
        _, branches = call(proxy)
        proxy.respond(branches[ringing], ringing, 180)
        reactor.advance(3)
        proxy.respond(branches[ringing], ringing, 180)  # timer C of this branch starts again
        reactor.advance(3)
        reactor.lookups[NAME].callback("127.0.0.6")
        assert sent_to_named(proxy) == []
    finally:
        proxy.stop()


def test_a_2xx_retransmitted_after_the_call_was_answered_reaches_the_caller_without_our_via(proxy: Proxy) -> None:
    """RFC 3261 16.7 step 3 on the stateless path (RFC 6026 8.2): our Via is
    removed from the retransmission too (mutant forward_retransmitted_2xx 4)."""
    hop = proxy.register("bob", BOB)
    _, branches = call(proxy)
    proxy.respond(branches[hop], hop, 200)
    proxy.respond(branches[hop], hop, 200)
    answers = [m for m in proxy.phone.messages() if m.status == 200]
    assert len(answers) == 2
    for answer in answers:
        assert answer.vias[0].host == PHONE[0] and len(answer.vias) == 1


def test_a_cancel_nobody_answers_ends_quietly_and_the_call_with_timer_c(proxy: Proxy, reactor: ResolvingReactor) -> None:
    """The CANCEL's own transaction times out (Timer F) with nothing to do;
    timer C then ends the branch that never answered with 408."""
    hop = proxy.register("bob", BOB)
    invite, branches = call(proxy)
    proxy.respond(branches[hop], hop, 180)
    proxy.send(cancel_of(invite))
    assert cancels(proxy) == [hop]
    for _ in range(400):
        reactor.advance(0.5)  # through Timer E and F of the CANCEL, then timer C of the INVITE
    assert list(dict.fromkeys(s for s in proxy.phone.statuses() if s >= 200)) == [200, 408]  # the 408 retransmitted until ACKed


def test_a_request_without_max_forwards_goes_on_with_70(proxy: Proxy) -> None:
    """RFC 3261 16.6 step 3: a proxy adds Max-Forwards 70 to a request that
    has none, and so bounds a loop through proxies that do the same
    (mutants _prepare 19: a TypeError, no answer but a 500; 21: 71)."""
    hop = proxy.register("bob", BOB)
    proxy.send(proxy.authorized().replace(b"Max-Forwards: 70\r\n", b""))
    assert [(fwd.headers.get("Max-Forwards"), sent_to) for fwd, sent_to in proxy.forwarded()] == [("70", hop)]


def test_a_sips_contact_behind_a_path_in_clear_is_never_reached_over_it(proxy: Proxy) -> None:
    """bob registered a sips: contact through an edge proxy whose Path is
    plain sip: over UDP: the forwarded Request-URI is sips:, so every hop must
    be TLS (RFC 5630 3.1.3), and that branch is refused with 480, not sent in
    clear to the edge (mutant _prepare 43: only the next hop's URI looked at)."""
    proxy.service.location.put(Binding("sip:bob@example.com", "sips:bob@127.0.0.5:5071", proxy.clock.seconds() + 3600, path=("<sip:127.0.0.8:5060;lr>",)))
    proxy.send(proxy.authorized())
    assert proxy.forwarded() == []
    assert proxy.last().status == 480


def test_a_branch_whose_name_does_not_resolve_ends_at_once_as_a_transport_error(proxy: Proxy, reactor: ResolvingReactor) -> None:
    """RFC 3263 / 16.9: a look-up that fails is the branch's transport error
    (503, passed upstream as 500) at once, not a branch left pending until
    timer C (mutants _start_branch 17, 19)."""
    proxy.register("bob", NAMED)
    call(proxy)
    reactor.lookups[NAME].errback(DNSLookupError(NAME))
    assert proxy.forwarded() == [] and [m.status for m in proxy.phone.messages() if m.status >= 200] == [500]
