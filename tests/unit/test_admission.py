"""Admission before any state: what an unauthenticated UDP source gets back.

The whole service (its real pipeline, auth stage included) on Clock time, fed
parsed requests as its UDP listener would.  For every request kind from a
source that has not proven its return path: at most one datagram back, at
most 4 times the request's size, to the address the datagram came from, and
no transaction (nor timer) left behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_support import PHONE as ATTACKER
from pipeline_support import PROXY, build_service
from pipeline_support import RecordingFlow as _Flow

from sipshield.message import Response, parse_message
from sipshield.proxy import endpoints


def RecordingFlow() -> _Flow:
    return _Flow(remote=ATTACKER, local=PROXY)


@pytest.fixture
def service(tmp_path: Path):
    svc = build_service(tmp_path)
    yield svc, svc.reactor
    svc.transactions.stop()


def request(method: str, *, via_extra: str = "", auth: str = "", ruri: str = "sip:bob@example.com", max_forwards: int = 70, extra: str = "") -> bytes:
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.9:5099;branch=z9hG4bK{method.lower()}77{via_extra}\r\n"
        f"Max-Forwards: {max_forwards}\r\n{extra}From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n"
        f"Call-ID: adm-{method}\r\nCSeq: 1 {method}\r\n" + (f"{auth}\r\n" if auth else "") + "Content-Length: 0\r\n\r\n"
    ).encode()


BOGUS = ('Proxy-Authorization: Digest username="alice", realm="example.com", nonce="forged", '
         'uri="sip:bob@example.com", response="0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", algorithm=SHA-256, '
         'qop=auth, nc=00000001, cnonce="c0ffee"')


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (request("INVITE"), 407),
        (request("INVITE", auth=BOGUS), 407),
        (request("INVITE", via_extra=";maddr=127.0.0.7"), 407),
        (request("REGISTER", ruri="sip:example.com"), 401),
        (request("MESSAGE"), 407),
        (request("SUBSCRIBE"), 407),
        (request("OPTIONS"), 407),
        (request("INVITE", max_forwards=0), 483),
        (request("INVITE", extra="Proxy-Require: x-unknown\r\n"), 420),
        (request("INVITE", ruri="mailto:bob@example.com"), 416),
    ],
    ids=["invite", "invite-forged-nonce", "invite-maddr", "register", "message", "subscribe", "options-to-user", "too-many-hops", "bad-extension", "bad-scheme"],
)
def test_unauthenticated_request_gets_one_small_datagram_and_leaves_no_state(service, data: bytes, status: int) -> None:
    svc, clock = service
    flow = RecordingFlow()
    svc.core.message_received(parse_message(data), flow)
    clock.advance(64 * 0.5 + 1)  # past every retransmission timer and Timer H/J
    assert len(flow.sent) == 1, [d[:40] for d, _ in flow.sent]
    answer, where = flow.sent[0]
    assert where == ATTACKER  # the datagram's source, never the Via sent-by or maddr
    assert len(answer) <= 4 * len(data)
    response = parse_message(answer)
    assert isinstance(response, Response) and response.status == status
    assert svc.transactions.counts() == {"server": 0, "client": 0, "rfc2543_ack": 0, "sources": 0}
    # The one thing a challenge leaves: its (source, user) in the bounded table
    # of challenges nobody answered yet, under that table's single timer.
    unanswered = next(stage for stage in svc.pipeline.stages if stage.name == "auth").unanswered
    assert [call.func for call in clock.getDelayedCalls()] == ([unanswered._expire] if status in (401, 407) else [])
    assert len(unanswered) == (1 if status in (401, 407) else 0)
    assert svc.core.counters["stateless_replies"] == 1


def test_answer_with_a_nonce_issued_to_this_source_is_admitted(service) -> None:
    """A nonce this proxy sent to the source proves the return path: the
    request gets a transaction (and the backend's verdict)."""
    svc, clock = service
    nonce = svc.nonces.issue("example.com", ATTACKER[0])
    auth = BOGUS.replace('nonce="forged"', f'nonce="{nonce}"')
    flow = RecordingFlow()
    svc.core.message_received(parse_message(request("MESSAGE", auth=auth)), flow)
    assert svc.core.counters["stateless_replies"] == 0
    assert svc.transactions.counts()["server"] == 1


def test_nonce_issued_to_another_source_is_challenged_statelessly(service) -> None:
    svc, clock = service
    nonce = svc.nonces.issue("example.com", "127.0.0.99")
    auth = BOGUS.replace('nonce="forged"', f'nonce="{nonce}"')
    flow = RecordingFlow()
    svc.core.message_received(parse_message(request("INVITE", auth=auth)), flow)
    assert svc.core.counters["stateless_replies"] == 1
    assert svc.transactions.counts()["server"] == 0


@pytest.mark.parametrize("method", ["INVITE", "BYE", "MESSAGE", "REFER"])
@pytest.mark.parametrize("route", ["<sip:127.0.0.1:5060;lr>", "<sip:127.0.0.1:5060;lr;ss=00112233445566778899aabbccddeeff>"], ids=["unsigned", "forged-token"])
def test_in_dialog_request_with_a_route_we_did_not_sign_is_challenged_statelessly(service, method: str, route: str) -> None:
    """A To tag and a Route naming us, without our token: no transaction,
    no 100 Trying; one 407, as for any out-of-dialog request."""
    svc, clock = service
    flow = RecordingFlow()
    data = request(method, extra=f"Route: {route}\r\n").replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=b1")
    svc.core.message_received(parse_message(data), flow)
    assert flow.statuses() == [407]
    assert svc.transactions.counts()["server"] == 0 and svc.core.counters["stateless_replies"] == 1


def test_in_dialog_request_on_our_signed_route_is_admitted(service) -> None:
    svc, clock = service
    token = svc.core.signer.token("adm-BYE", "a1", endpoints(ATTACKER[0], "example.com"))
    flow = RecordingFlow()
    data = request("BYE", extra=f"Route: <sip:127.0.0.1:5060;lr;ss={token}>\r\n").replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=b1")
    svc.core.message_received(parse_message(data), flow)
    assert svc.core.counters["stateless_replies"] == 0
    assert 407 not in flow.statuses()


def compact(method: str, ruri: str = "tel:1", to_tag: str = "") -> bytes:
    """The smallest request of its kind the parser takes: compact names, no
    Max-Forwards, a one-letter sent-by (the attacker's best factor)."""
    return f"{method} {ruri} SIP/2.0\r\nv:SIP/2.0/UDP a\r\nf:sip:a\r\nt:sip:c{to_tag}\r\ni:1\r\nCSeq:1 {method}\r\n\r\n".encode()


@pytest.mark.parametrize(
    "data",
    [
        compact("INVITE"),
        compact("REGISTER", "sip:a"),
        compact("OPTIONS", "sip:a"),
        compact("OPTIONS", "sip:127.0.0.1"),
        compact("MESSAGE"),
        compact("SUBSCRIBE"),
        compact("BYE", to_tag=";tag=2"),
    ],
    ids=["invite", "register", "options-to-user", "options-to-proxy", "message", "subscribe", "bye-in-dialog"],
)
def test_minimal_compact_request_gets_at_most_four_times_its_size(service, data: bytes) -> None:
    """docs/security.md: at most one datagram, at most 4x the request's
    size, whatever the request's kind; a reply that cannot shrink under that
    is dropped and counted."""
    svc, clock = service
    flow = RecordingFlow()
    svc.core.message_received(parse_message(data), flow)
    assert svc.transactions.counts()["server"] == 0
    clock.advance(64 * 0.5 + 1)
    assert len(flow.sent) <= 1
    assert sum(len(d) for d, _ in flow.sent) <= 4 * len(data)
    counters = svc.core.counters
    assert counters["stateless_replies"] + counters["amplification_drops"] == 1
    assert counters["stateless_replies"] == len(flow.sent)
    assert svc.transactions.counts() == {"server": 0, "client": 0, "rfc2543_ack": 0, "sources": 0}


def test_challenge_too_large_for_the_request_offers_only_the_preferred_algorithm(service) -> None:
    """Two challenges (SHA-256, SHA-512-256: the configured order) would pass 4x; the first fits."""
    svc, clock = service
    data = compact("REGISTER", "sip:a")
    flow = RecordingFlow()
    svc.core.message_received(parse_message(data), flow)
    [(answer, _)] = flow.sent
    assert len(answer) <= 4 * len(data)
    challenges = parse_message(answer).headers.get_all("WWW-Authenticate")
    assert len(challenges) == 1 and "algorithm=SHA-256," in challenges[0]


def test_ordinary_request_gets_every_challenge(service) -> None:
    svc, clock = service
    flow = RecordingFlow()
    svc.core.message_received(parse_message(request("INVITE")), flow)
    [(answer, _)] = flow.sent
    assert len(parse_message(answer).headers.get_all("Proxy-Authenticate")) == 2


def test_minimal_request_over_tcp_is_not_weighed(service) -> None:
    """A TCP source proved its address in the handshake: no reflection, so
    the full challenge goes back however small the request."""
    svc, clock = service
    flow = _Flow(remote=ATTACKER, local=PROXY, transport="TCP")
    svc.core.message_received(parse_message(compact("INVITE")), flow)
    [(answer, _)] = flow.sent
    assert len(parse_message(answer).headers.get_all("Proxy-Authenticate")) == 2
    assert svc.core.counters["amplification_drops"] == 0


def test_options_to_the_proxy_is_answered_statelessly(service) -> None:
    """One 200 with the capabilities, no transaction (Timer J would keep
    one 32 s for any forged source); a retransmission gets the 200 again."""
    svc, clock = service
    data = request("OPTIONS", ruri="sip:127.0.0.1:5060")
    flow = RecordingFlow()
    svc.core.message_received(parse_message(data), flow)
    assert svc.transactions.counts()["server"] == 0 and not clock.getDelayedCalls()
    [response] = flow.messages()
    assert response.status == 200 and "INVITE" in response.headers.get("Allow")
    assert len(flow.sent[0][0]) <= 4 * len(data)
    svc.core.message_received(parse_message(data), flow)
    assert flow.statuses() == [200, 200] and svc.core.counters["stateless_replies"] == 2


@pytest.mark.parametrize("algorithms", [["MD5", "SHA-256"], ["SHA-256", "MD5"], ["SHA-512-256", "SHA-256", "MD5"], ["SHA-256", "SHA-512-256"]])
def test_challenges_list_the_algorithms_in_the_configured_order(tmp_path: Path, algorithms: list[str]) -> None:
    # RFC 8760 2.3: in the operator's preference order (linphone answers only the first one).
    svc = build_service(tmp_path, {"auth": {"algorithms": algorithms}})
    try:
        for method, header in (("REGISTER", "WWW-Authenticate"), ("INVITE", "Proxy-Authenticate")):
            flow = _Flow(remote=ATTACKER, local=PROXY, transport="TCP")
            svc.core.message_received(parse_message(request(method, ruri="sip:example.com" if method == "REGISTER" else "sip:bob@example.com")), flow)
            [(answer, _)] = flow.sent
            offered = [value.split("algorithm=")[1].split(",")[0] for value in parse_message(answer).headers.get_all(header)]
            assert offered == algorithms
    finally:
        svc.transactions.stop()
