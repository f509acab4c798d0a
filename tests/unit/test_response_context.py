"""The response context (RFC 3261 16.7, 16.10) through the real service.

alice (staff) calls bob, whose phones are bound in the location store; the
downstream phones answer through the recording dispatcher, alice's phone
gets what the proxy sends upstream.  CANCEL before and after a branch
rang, a CANCEL while a branch's next hop is still being resolved, 100
Trying, a 3xx beside a ringing branch, challenges aggregated from every
401/407 branch, and a provisional answer to a non-INVITE.  These tests kill
the mutmut survivors of ``proxy/_response.py`` listed in docs/development.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from digest_client import challenges
from inline_pool import ImmediateReactor
from pipeline_support import Proxy, proxy_service
from twisted.internet.defer import Deferred

from sipshield.message import Request, parse_message

BOB = "sip:bob@127.0.0.5:5070"
BOB2 = "sip:bob@127.0.0.6:5070"
BOB3 = "sip:bob@127.0.0.7:5070"


class ResolvingReactor(ImmediateReactor):
    """Name look-ups that wait until the test answers them."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups: dict[str, Deferred[str]] = {}

    def resolve(self, name: str, timeout: object = None) -> Deferred[str]:
        return self.lookups.setdefault(name, Deferred())


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    proxy = proxy_service(tmp_path)
    yield proxy
    proxy.stop()


def cancel_of(invite: bytes) -> bytes:
    """The caller's CANCEL of *invite* (RFC 3261 9.1: its Request-URI, Via, Call-ID, From, To and CSeq number)."""
    request = parse_message(invite)
    assert isinstance(request, Request)
    lines = [f"CANCEL {request.uri} SIP/2.0"]
    for name in ("Via", "Max-Forwards", "From", "To", "Call-ID"):
        lines.append(f"{name}: {request.headers.get(name)}")
    lines.append(f"CSeq: {request.cseq.seq} CANCEL")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def call(proxy: Proxy) -> tuple[bytes, dict[tuple[str, str, int], Request]]:
    """alice's INVITE to bob, forwarded: the INVITE she sent, and the copy
    each of bob's phones got; what alice's phone got so far (the challenge,
    100 Trying) is forgotten."""
    invite = proxy.authorized()
    proxy.send(invite)
    proxy.phone.sent.clear()
    return invite, {hop: fwd for fwd, hop in proxy.forwarded()}


def cancels(proxy: Proxy) -> list[tuple[str, str, int]]:
    return [hop for _, hop in proxy.forwarded("CANCEL")]


def finals(proxy: Proxy) -> list[int]:
    return [status for status in proxy.phone.statuses() if status >= 200]


def test_a_branch_cancelled_before_it_rang_gets_its_cancel_when_it_rings(proxy: Proxy) -> None:
    """RFC 3261 9.1: a CANCEL only after a provisional answer; the branch
    that had none is cancelled as soon as it rings (mutants _cancel_pending 6
    and 7: never; on_response 12: a crash)."""
    ringing, silent = proxy.register("bob", BOB), proxy.register("bob", BOB2)
    invite, branches = call(proxy)
    proxy.respond(branches[ringing], ringing, 180)
    proxy.send(cancel_of(invite))
    assert cancels(proxy) == [ringing]
    proxy.respond(branches[silent], silent, 180)
    assert cancels(proxy) == [ringing, silent]
    proxy.respond(branches[ringing], ringing, 487)
    proxy.respond(branches[silent], silent, 487)
    assert finals(proxy) == [200, 487]  # the CANCEL's 200, then the INVITE's 487


def test_each_ringing_branch_gets_one_cancel_whatever_follows(proxy: Proxy) -> None:
    """A branch once cancelled is not cancelled again: not when it rings once
    more (mutant _send_cancel 4), nor when another branch's 6xx cancels the
    pending ones (mutants _send_cancel 1 and 2)."""
    ringing, declining = proxy.register("bob", BOB), proxy.register("bob", BOB2)
    invite, branches = call(proxy)
    proxy.respond(branches[ringing], ringing, 180)
    proxy.send(cancel_of(invite))
    proxy.respond(branches[ringing], ringing, 183)
    proxy.respond(branches[declining], declining, 603)
    assert cancels(proxy) == [ringing]
    proxy.respond(branches[ringing], ringing, 487)
    assert finals(proxy)[-1] == 603


def test_a_cancel_while_the_next_hop_is_resolved_ends_the_branch_unsent_with_487(tmp_path: Path) -> None:
    """A branch whose host name is still being looked up when the caller
    cancels is never sent: it ends as if it had answered 487 (the mutants of
    on_cancelled_unsent, which no test ran)."""
    reactor = ResolvingReactor()
    reactor.advance(1_000_000)
    proxy = proxy_service(tmp_path, clock=reactor)
    try:
        proxy.register("bob", "sip:bob@bob-phone.example.net:5070")
        invite, _ = call(proxy)
        assert proxy.forwarded() == [] and list(reactor.lookups) == ["bob-phone.example.net"]
        proxy.send(cancel_of(invite))
        reactor.lookups["bob-phone.example.net"].callback("127.0.0.5")
        assert proxy.forwarded() == [] and proxy.dispatcher.sent == []
        answers = [(m.status, m.reason, m.cseq.method) for m in proxy.phone.messages() if m.status >= 200]
        assert answers == [(200, "OK", "CANCEL"), (487, "Request Terminated", "INVITE")]
    finally:
        proxy.stop()


def test_a_branchs_100_trying_is_not_relayed_upstream(proxy: Proxy) -> None:
    """100 Trying is hop by hop (RFC 3261 16.7 step 4): alice gets the proxy's own only (mutant on_response 9)."""
    hop = proxy.register("bob", BOB)
    proxy.send(proxy.authorized())
    ((fwd, _),) = proxy.forwarded()
    assert proxy.phone.statuses()[-1] == 100  # the proxy's own
    proxy.respond(fwd, hop, 100)
    proxy.respond(fwd, hop, 180)
    assert proxy.phone.statuses()[-3:] == [407, 100, 180]


def test_a_3xx_waits_for_the_ringing_branch_and_cancels_nothing(proxy: Proxy) -> None:
    """Only a 2xx goes upstream at once and cancels the others (16.7 step 5);
    a 300 is weighed with the rest (mutants on_response 34 and 35)."""
    redirecting, ringing = proxy.register("bob", BOB), proxy.register("bob", BOB2)
    _, branches = call(proxy)
    proxy.respond(branches[ringing], ringing, 180)
    proxy.respond(branches[redirecting], redirecting, 300, [("Contact", "<sip:bob@192.0.2.77>")])
    assert cancels(proxy) == [] and finals(proxy) == []
    proxy.respond(branches[ringing], ringing, 486)
    assert finals(proxy) == [300]


def test_every_401_and_407_challenge_is_aggregated_past_the_other_answers(proxy: Proxy) -> None:
    """16.7 step 7 over three branches: a 401, a 486 and another 401 and a
    407; the answer carries the challenges of all three (mutants
    _aggregate_challenges 7: a 401 left out, 9: the loop stopped at the 486,
    10: WWW-Authenticate left out)."""
    hops = [proxy.register("bob", contact) for contact in (BOB, BOB2, BOB3, "sip:bob@127.0.0.8:5070")]
    _, branches = call(proxy)
    proxy.respond(branches[hops[0]], hops[0], 401, [("WWW-Authenticate", 'Digest realm="one.example.net", nonce="1"')])
    proxy.respond(branches[hops[1]], hops[1], 486)
    proxy.respond(branches[hops[2]], hops[2], 401, [("WWW-Authenticate", 'Digest realm="two.example.net", nonce="2"')])
    proxy.respond(branches[hops[3]], hops[3], 407, [("Proxy-Authenticate", 'Digest realm="three.example.net", nonce="3"')])
    answer = proxy.phone.sent[-1][0]
    assert proxy.last().status == 401
    assert sorted(c["realm"] for c in challenges(answer, "WWW-Authenticate")) == ["one.example.net", "two.example.net"]
    assert [c["realm"] for c in challenges(answer, "Proxy-Authenticate")] == ["three.example.net"]


def test_a_provisional_answer_to_a_message_is_relayed(proxy: Proxy) -> None:
    """A non-INVITE branch has no timer C: its 1xx is relayed as it is (mutant on_response 13: a crash)."""
    hop = proxy.register("bob", BOB)
    proxy.send(proxy.authorized("MESSAGE"))
    ((fwd, where),) = proxy.forwarded("MESSAGE")
    assert where == hop
    proxy.respond(fwd, hop, 182)
    proxy.respond(fwd, hop, 200)
    assert proxy.phone.statuses()[-2:] == [182, 200]


@pytest.mark.parametrize(("other", "chosen"), [(404, 401), (404, 407), (404, 415), (404, 420), (404, 484), (503, 504), (404, 603)])
def test_the_best_of_two_finals_is_the_one_the_caller_can_act_on(proxy: Proxy, other: int, chosen: int) -> None:
    """16.7 step 6: within 4xx a challenge, 415, 420 or 484 over a plain 404;
    a 503 only when nothing else (a 504 wins); a 6xx over all (mutants
    _rank 8 and 12 to 15)."""
    first, second = proxy.register("bob", BOB), proxy.register("bob", BOB2)
    _, branches = call(proxy)
    proxy.respond(branches[first], first, other)
    proxy.respond(branches[second], second, chosen)
    assert finals(proxy)[-1] == chosen


def test_a_600_cancels_the_ringing_branches_too(proxy: Proxy) -> None:
    """Every 6xx, 600 Busy Everywhere included, ends the search (16.7 step 5; mutants on_response 600 -> 601)."""
    ringing, busy = proxy.register("bob", BOB), proxy.register("bob", BOB2)
    _, branches = call(proxy)
    proxy.respond(branches[ringing], ringing, 180)
    proxy.respond(branches[busy], busy, 600)
    assert cancels(proxy) == [ringing]
    proxy.respond(branches[ringing], ringing, 487)
    assert finals(proxy) == [600]


def test_a_branch_that_never_answers_ends_with_408_request_timeout(proxy: Proxy) -> None:
    """Timer B: the proxy's own 408, its reason phrase as RFC 3261 21.4.9 names it (mutants on_timeout 4 to 7)."""
    proxy.register("bob", BOB)
    call(proxy)
    proxy.clock.pump([0.5] * 65)
    answer = [m for m in proxy.phone.messages() if m.status >= 200][0]
    assert (answer.status, answer.reason) == (408, "Request Timeout")


@pytest.mark.parametrize("later", [486, 300])
def test_after_a_200_no_other_final_reaches_the_caller(proxy: Proxy, later: int) -> None:
    """One final answer per transaction: once a 2xx went upstream, another
    branch's 4xx or 3xx stays here (the server transaction, in RFC 6026's
    Accepted, holds that too: _forward_final's own guard survives mutation)."""
    answering, other = proxy.register("bob", BOB), proxy.register("bob", BOB2)
    _, branches = call(proxy)
    proxy.respond(branches[answering], answering, 200)
    proxy.respond(branches[other], other, later)
    assert list(dict.fromkeys(finals(proxy))) == [200]


def test_two_407_challenges_are_aggregated_when_a_407_is_the_best(proxy: Proxy) -> None:
    """16.7 step 7 when the answer chosen is a 407 (mutant _maybe_finish 20: only a 401 was)."""
    first, second = proxy.register("bob", BOB), proxy.register("bob", BOB2)
    _, branches = call(proxy)
    proxy.respond(branches[first], first, 407, [("Proxy-Authenticate", 'Digest realm="one.example.net", nonce="1"')])
    proxy.respond(branches[second], second, 407, [("Proxy-Authenticate", 'Digest realm="two.example.net", nonce="2"')])
    answer = proxy.phone.sent[-1][0]
    assert sorted(c["realm"] for c in challenges(answer, "Proxy-Authenticate")) == ["one.example.net", "two.example.net"]


def test_a_503_goes_upstream_as_500_server_internal_error(proxy: Proxy) -> None:
    """16.7 step 6: the status and its reason phrase (mutants _maybe_finish 10, 15 to 17, _rewrite_status 2)."""
    hop = proxy.register("bob", BOB)
    _, branches = call(proxy)
    proxy.respond(branches[hop], hop, 503)
    answer = [m for m in proxy.phone.messages() if m.status >= 200][0]
    assert (answer.status, answer.reason) == (500, "Server Internal Error")
