"""Each security check through the real service, its auth stage included.

The tests of security checks were written against hand-made mutations that
removed or negated one check and left the rest of the suite green
(docs/development.md lists them); each fails with its mutation and passes
without.  The last ones check README claims (forking by q, best-response
selection) the same way.  The service
is built from a real config (tests/pipeline_support.py); alice (staff)
calls bob, whose phones are bound in the location store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from digest_client import authorization, challenges
from pipeline_support import PASSWORD, PHONE, RecordingFlow, proxy_service, request

BOB = "sip:bob@127.0.0.5:5070"
BOB2 = "sip:bob@127.0.0.6:5070"


@pytest.fixture
def proxy(tmp_path: Path):
    proxy = proxy_service(tmp_path)
    yield proxy
    proxy.stop()


def test_alice_with_the_right_password_is_forwarded(proxy) -> None:
    """The control for the tests below: the answer they tamper with, untampered, goes through."""
    hop = proxy.register("bob", BOB)
    proxy.send(proxy.authorized())
    ((fwd, where),) = proxy.forwarded()
    assert where == hop and str(fwd.uri) == BOB


# -- auth stage: what a valid digest must also prove ---------------------------------------

def test_digest_for_another_request_uri_is_challenged_not_forwarded(proxy) -> None:
    """RFC 7616 3.4.6: the digest-uri must be the Request-URI, or a digest
    captured for one request (say, to a free number) lets a replayer call any."""
    proxy.register("bob", BOB)
    proxy.register("carol", "sip:carol@127.0.0.7:5070")
    proxy.send(proxy.authorized(uri="sip:carol@example.com", digest_uri="sip:bob@example.com"))
    assert proxy.forwarded() == []
    assert proxy.last().status == 407


def test_digest_over_an_unparseable_uri_is_challenged_not_forwarded(proxy) -> None:
    """A digest-uri that is not a URI designates no Request-URI: no match (mutmut survivor)."""
    proxy.register("bob", BOB)
    proxy.send(proxy.authorized(digest_uri="not a uri"))
    assert proxy.forwarded() == []
    assert proxy.last().status == 407


def test_nonce_issued_to_another_source_is_challenged_even_with_a_right_digest(proxy) -> None:
    """The nonce is bound to the source address that was challenged: a digest
    computed over a nonce sent elsewhere (or made up) proves no return path."""
    proxy.register("bob", BOB)
    elsewhere = proxy.service.nonces.issue("example.com", "127.0.0.99")
    proxy.send(proxy.authorized(nonce=elsewhere))
    assert proxy.forwarded() == []
    assert proxy.last().status == 407


def test_replayed_nonce_count_is_challenged_with_stale(proxy) -> None:
    proxy.register("bob", BOB)
    data = proxy.authorized()
    proxy.send(data)
    assert len(proxy.forwarded()) == 1
    proxy.send(data.replace(b"branch=z9hG4bK", b"branch=z9hG4bKreplay"))
    assert len(proxy.forwarded()) == 1
    answer = proxy.last()
    assert answer.status == 407 and 'stale=true' in answer.headers.get("Proxy-Authenticate")


def test_md5_answer_is_refused_when_md5_is_not_enabled_even_with_a_stored_md5_ha1(tmp_path: Path) -> None:
    """MD5 only when enabled: alice's MD5 HA1 is still in the store (added
    while MD5 was on), but the config enables SHA-2 only, so an MD5 answer
    (a downgrade an attacker can force by rewriting the challenge) is refused."""
    proxy = proxy_service(tmp_path, user_algorithms=("SHA-256", "MD5"))
    proxy.register("bob", BOB)
    proxy.send(proxy.authorized(algorithm="MD5"))
    assert proxy.forwarded() == []
    assert proxy.last().status == 407
    proxy.send(proxy.authorized(algorithm="SHA-256"))
    assert len(proxy.forwarded()) == 1


def test_our_proxy_authorization_is_stripped_and_another_realms_kept(proxy) -> None:
    """RFC 3261 22.3: credentials for our realm stop here (a downstream element
    must not see, or replay, alice's digest); those for another realm pass."""
    proxy.register("bob", BOB)
    theirs = 'Digest username="alice", realm="carrier.example.net", nonce="n", uri="sip:bob@example.com", response="0123abcd"'
    proxy.send(proxy.authorized(extra=f"Proxy-Authorization: {theirs}\r\n"))
    ((fwd, _),) = proxy.forwarded()
    assert fwd.headers.get_all("Proxy-Authorization") == [theirs]


def _invite_from(from_uri: str, extra: str = "") -> bytes:
    return request(uri="sip:bob@example.com", extra=extra).replace(b"From: <sip:alice@example.com>", f"From: <{from_uri}>".encode())


def _challenge_for(proxy, from_uri: str) -> dict[str, str]:
    proxy.send(_invite_from(from_uri))
    (challenge,) = [c for c in challenges(proxy.phone.sent[-1][0], "Proxy-Authenticate") if c.get("algorithm") == "SHA-256"]
    return challenge


def test_with_two_domains_the_realm_is_the_callers_domain_and_its_password_the_one_checked(tmp_path: Path) -> None:
    """Realm choice (the auth stage's ``_screen``): a caller in the second
    served domain is challenged in that domain's realm and only that realm's
    password lets the INVITE through; alice's example.com digest does not
    pass for alice@example.org (mutmut survivors with one domain)."""
    proxy = proxy_service(tmp_path, server={"domains": ["example.com", "example.org"]})
    try:
        proxy.service.user_stores[0].add("alice", "example.org", "org-secret", ("staff",))
        proxy.register("bob", BOB)
        challenge = _challenge_for(proxy, "sip:alice@example.org")
        assert challenge["realm"] == "example.org"
        theirs = {**challenge, "realm": "example.com"}
        for wrong in (authorization(theirs, "SHA-256", "alice", PASSWORD, "INVITE", "sip:bob@example.com"),
                      authorization(challenge, "SHA-256", "alice", PASSWORD, "INVITE", "sip:bob@example.com")):
            proxy.send(_invite_from("sip:alice@example.org", f"Proxy-Authorization: {wrong}\r\n"))
            assert proxy.forwarded() == []
            assert proxy.last().status == 407
        right = authorization(_challenge_for(proxy, "sip:alice@example.org"), "SHA-256", "alice", "org-secret", "INVITE", "sip:bob@example.com")
        proxy.send(_invite_from("sip:alice@example.org", f"Proxy-Authorization: {right}\r\n"))
        assert len(proxy.forwarded()) == 1
    finally:
        proxy.stop()


def test_a_caller_from_a_domain_we_do_not_serve_is_challenged_in_the_default_realm(tmp_path: Path) -> None:
    """A From in a foreign domain names no realm of ours: the challenge is for
    the first configured domain, never for the domain the sender chose."""
    proxy = proxy_service(tmp_path, server={"domains": ["example.com", "example.org"]})
    try:
        for caller in ("sip:mallory@evil.example", "tel:+15551234"):
            proxy.send(_invite_from(caller))
            assert proxy.last().status == 407
            realms = {c["realm"] for c in challenges(proxy.phone.sent[-1][0], "Proxy-Authenticate")}
            assert realms == {"example.com"}
        assert proxy.forwarded() == []
    finally:
        proxy.stop()


def test_roles_given_to_one_user_are_not_given_to_the_others_of_the_domain(tmp_path: Path) -> None:
    """An operator makes bob staff (``sipshield user roles``) and disables carol:
    alice, an agent, still may not call, and is not disabled either (the SQL
    store's update named the domain only: mutmut survivors _update 9 and 10)."""
    users = {"alice": (PASSWORD, ("agent",)), "bob": ("bob-secret", ("agent",)), "carol": ("carol-secret", ("staff",))}
    proxy = proxy_service(tmp_path, users)
    try:
        proxy.register("bob", BOB)
        (store,) = proxy.service.user_stores
        store.set_roles("bob", "example.com", ["staff"])
        proxy.send(proxy.authorized())
        assert proxy.forwarded() == [] and proxy.last().status == 403
        store.set_roles("alice", "example.com", ["staff"])
        store.set_enabled("carol", "example.com", False)
        proxy.send(proxy.authorized())
        assert len(proxy.forwarded()) == 1
    finally:
        proxy.stop()


# -- response context: what goes back upstream ---------------------------------------------

def test_challenges_of_every_forked_branch_reach_the_caller_in_one_answer(proxy) -> None:
    """RFC 3261 16.7 step 7: the 401/407 sent upstream carries the
    WWW-Authenticate and Proxy-Authenticate values of all branches, so the
    caller can answer each downstream realm at once."""
    hop1 = proxy.register("bob", BOB)
    hop2 = proxy.register("bob", BOB2)
    proxy.send(proxy.authorized())
    branches = dict((hop, fwd) for fwd, hop in proxy.forwarded())
    assert set(branches) == {hop1, hop2}
    proxy.respond(branches[hop1], hop1, 407, [("Proxy-Authenticate", 'Digest realm="one.example.net", nonce="1"')])
    proxy.respond(branches[hop2], hop2, 401, [("WWW-Authenticate", 'Digest realm="two.example.net", nonce="2"')])
    answer = proxy.phone.sent[-1][0]
    assert proxy.last().status in (401, 407)  # either may be the one chosen (16.7 step 6)
    assert [c["realm"] for c in challenges(answer, "Proxy-Authenticate")] == ["one.example.net"]
    assert [c["realm"] for c in challenges(answer, "WWW-Authenticate")] == ["two.example.net"]


def test_branch_that_never_answers_gives_408_when_timer_b_fires(proxy) -> None:
    """RFC 3261 16.7 step 2 / 16.8: a timed-out branch counts as 408."""
    proxy.register("bob", BOB)
    proxy.send(proxy.authorized())
    assert len(proxy.forwarded()) == 1
    proxy.clock.pump([0.5] * 65)  # Timer B (64*T1), step by step through Timer A; well before timer C
    assert proxy.phone.statuses()[-1] == 408


def test_unreachable_branch_counts_as_503_and_goes_upstream_as_500(proxy) -> None:
    """RFC 3261 16.9: a transport error is a 503 on that branch; alone, it
    goes upstream as 500 (16.7 step 6: never a 503), and at once."""
    hop = proxy.register("bob", BOB)
    proxy.dispatcher.unreachable.add(hop)
    proxy.send(proxy.authorized())
    assert proxy.last().status == 500


def test_unreachable_branch_loses_to_the_busy_answer_of_another(proxy) -> None:
    """The 503 of a dead branch ranks below any other answer (16.7 step 6)."""
    hop1 = proxy.register("bob", BOB)
    hop2 = proxy.register("bob", BOB2)
    proxy.dispatcher.unreachable.add(hop2)
    proxy.send(proxy.authorized())
    ((fwd, where),) = proxy.forwarded()
    assert where == hop1
    proxy.respond(fwd, hop1, 486)
    assert proxy.last().status == 486


def test_unsigned_ack_for_2xx_is_not_forwarded_to_its_request_uri(proxy) -> None:
    """An ACK matching no transaction is forwarded only along a route set we
    signed: a plain Route naming us makes no relay to the Request-URI."""
    victim = RecordingFlow(PHONE, local=("127.0.0.1", 5060))
    ack = request("ACK", uri="sip:victim@127.0.0.5", extra="Route: <sip:127.0.0.1:5060;lr>\r\n")
    proxy.send(ack.replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=forged"), victim)
    assert proxy.dispatcher.sent == [] and victim.sent == []


# -- README claims: forking by q, best-response selection (through the real service) -------

def test_invite_forks_in_parallel_to_every_contact_highest_q_first(proxy) -> None:
    low = proxy.register("bob", "sip:bob@127.0.0.5:5070", q=0.2)
    high = proxy.register("bob", "sip:bob@127.0.0.6:5070", q=0.9)
    middle = proxy.register("bob", "sip:bob@127.0.0.7:5070", q=0.5)
    proxy.send(proxy.authorized())
    assert [hop for _, hop in proxy.forwarded()] == [high, middle, low]


def test_best_response_is_a_6xx_else_the_lowest_class_and_waits_for_every_branch(proxy) -> None:
    """RFC 3261 16.7 step 6, with one caller answer per transaction."""
    hops = [proxy.register("bob", f"sip:bob@127.0.0.{n}:5070") for n in (5, 6, 7)]
    proxy.send(proxy.authorized())
    branches = dict((hop, fwd) for fwd, hop in proxy.forwarded())
    proxy.respond(branches[hops[0]], hops[0], 500)
    proxy.respond(branches[hops[1]], hops[1], 486)
    assert [s for s in proxy.phone.statuses() if s >= 200] == [407]  # the challenge only: one branch still rings
    proxy.respond(branches[hops[2]], hops[2], 404)
    assert [s for s in proxy.phone.statuses() if s >= 200] == [407, 404]


def test_a_6xx_cancels_the_branches_that_ring_and_wins_over_their_487(proxy) -> None:
    """RFC 3261 16.7 step 5: a 6xx is not forwarded at once; the pending
    branches are cancelled, and the 6xx is chosen over their 487s."""
    ringing, declining = proxy.register("bob", BOB), proxy.register("bob", BOB2)
    proxy.send(proxy.authorized())
    branches = dict((hop, fwd) for fwd, hop in proxy.forwarded())
    proxy.respond(branches[ringing], ringing, 180)
    proxy.respond(branches[declining], declining, 603)
    ((cancel, where),) = proxy.forwarded("CANCEL")
    assert where == ringing and proxy.phone.statuses()[-1] == 180
    proxy.respond(branches[ringing], ringing, 487)
    assert proxy.phone.statuses()[-1] == 603
