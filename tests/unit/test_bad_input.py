"""No tracebacks, no 500 for bad input (issue 7): the minimal inputs of the
crash classes the fuzzer (tests/sipfuzz.py) found, each through the real
service (default pipeline, auth stage included) and its real UDP protocol.

A request gets 400 with a reason phrase, a response is dropped; nothing
raises out of the protocol (the reactor would log a traceback) and nothing
is logged with a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sipfuzz import ATTACKER, DOMAIN, TRUSTED, FuzzTarget, status_of

from sipshield.message import ParseError, parse_message
from sipshield.proxy import endpoints
from sipshield.routing import Decision, Pipeline, RequestContext
from sipshield.state import Binding

UA = (ATTACKER, 5062)
EDGE = (TRUSTED, 5062)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[FuzzTarget]:
    t = FuzzTarget(tmp_path / "data")
    yield t
    t.close()


def proxy(t: FuzzTarget) -> str:
    return f"127.0.0.1:{t.proxy['UDP']}"


def request(method: str = "OPTIONS", ruri: str = "sip:bob@example.com", via: str = "SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bKbad1",
            extra: str = "", to_tag: str = "", call_id: str = "bad-input@127.0.0.2", cseq: int = 1) -> bytes:
    return (
        f"{method} {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\n"
        f"To: <sip:bob@example.com>{to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def answers(t: FuzzTarget) -> list[tuple[int, str, tuple[str, int]]]:
    found = []
    for _kind, data, where in t.sent:
        status = status_of(data)
        if status is not None:
            found.append((*status, where))
    return found


def no_findings(t: FuzzTarget) -> None:
    t.finish()
    assert t.report.findings == {}, t.report.summary()


# -- Via received / rport / maddr / ttl ----------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "reason"),
    [
        ("rport=65536", "Via: rport out of range"),
        ("rport=99999999999", "Via: rport out of range"),
        ("rport=40p000", "Via: rport out of range"),
        ("rport=0", "Via: rport out of range"),
        ("received=999.1.1.1", "Via: received is not an IP address"),
        ("received=1.2.3", "Via: received is not an IP address"),
        ("received=example.com", "Via: received is not an IP address"),
        ("received", "Via: received is not an IP address"),
        ("maddr=[::1", "Via: maddr is not a host"),
        ("maddr=[fe80::zz]", "Via: maddr is not a host"),
        ("ttl=256", "Via: ttl out of range"),
    ],
)
def test_request_with_a_bad_via_address_or_port_gets_400_with_the_reason(target: FuzzTarget, param: str, reason: str) -> None:
    target.send_udp(request(via=f"SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bKbad1;{param}"), UA)
    assert [(s, r) for s, r, _ in answers(target)] == [(400, reason)]
    no_findings(target)


@pytest.mark.parametrize("param", ["rport=40p000", "rport=65536", "rport=-1", "received=999.1.1.1", "maddr=[::1"])
def test_forged_response_with_a_bad_second_via_is_dropped(target: FuzzTarget, param: str) -> None:
    """Was: ValueError/OverflowError from int(rport) and the UDP write in
    stray_response, a traceback per datagram (stray responses are now dropped
    and counted before their second Via is read; the Via check holds as well)."""
    response = (
        f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {proxy(target)};branch=z9hG4bKours\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.6:5060;branch=z9hG4bKtheirs;received=127.0.0.4;{param}\r\n"
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>;tag=2\r\nCall-ID: forged\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    core = target.service.core
    before = core.counters["malformed"] + core.counters["stray_responses"]
    target.send_udp(response, UA)
    assert target.sent == []
    assert core.counters["malformed"] + core.counters["stray_responses"] == before + 1
    no_findings(target)


@pytest.mark.parametrize("maddr", ["gw.example.net", "[::1]"])
def test_response_is_sent_to_the_source_when_maddr_cannot_be_written_to(target: FuzzTarget, maddr: str) -> None:
    """Was: InvalidAddressError from the UDP write (a traceback, and a 500
    when the reply came out of the pipeline).  Every UDP response now goes to
    the datagram's source."""
    target.send_udp(request(ruri=f"sip:{proxy(target)}", via=f"SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bKm1;maddr={maddr}"), UA)
    assert answers(target) == [(200, "OK", (ATTACKER, 5062))]
    no_findings(target)


def signed_route(t: FuzzTarget, call_id: str, destination: str) -> str:
    """Our Record-Route for a dialog between the UA and *destination*."""
    token = t.service.core.signer.token(call_id, "a1", endpoints(ATTACKER, destination))
    return f"Route: <sip:{proxy(t)};transport=udp;lr;ss={token}>\r\n"


def test_unwritable_datagram_destination_is_a_transport_error_not_a_traceback(target: FuzzTarget) -> None:
    """An in-dialog MESSAGE to a subnet's broadcast address (which cannot be
    told from a host without the subnet): sendto(2) refuses it (EACCES).
    Was: a traceback; now the branch fails like any unreachable target (RFC
    3261 16.9: a 503, which 16.7 step 6 makes the caller's 500)."""
    call_id = "bcast@127.0.0.2"
    target.send_udp(request("MESSAGE", ruri="sip:bob@127.255.255.255", to_tag=";tag=b1", call_id=call_id, extra=signed_route(target, call_id, "127.255.255.255")), UA)
    assert [s for s, _, _ in answers(target)] == [500]
    assert target.reactor.unreachable == 1
    no_findings(target)


def test_limited_broadcast_destination_gets_502_and_is_never_written(target: FuzzTarget) -> None:
    """255.255.255.255 is no next hop at all: the proxy's own 502 says so,
    and the socket is not even asked (tests/unit/test_unusable_next_hop.py)."""
    call_id = "bcast2@127.0.0.2"
    target.send_udp(request("MESSAGE", ruri="sip:bob@255.255.255.255", to_tag=";tag=b1", call_id=call_id, extra=signed_route(target, call_id, "255.255.255.255")), UA)
    assert [(s, r) for s, r, _ in answers(target)] == [(502, "Bad Gateway: a broadcast address")]
    assert target.reactor.unreachable == 0
    no_findings(target)


def test_answer_for_a_target_that_does_not_resolve_carries_the_callers_via(target: FuzzTarget) -> None:
    """Was: the made-up final was built from the forwarded request minus its top
    Via, and a branch that failed before it was sent had no Via of ours: the
    caller got a 500 with no Via at all (which it cannot match)."""
    call_id = "nxdomain@127.0.0.2"
    target.send_udp(request("BYE", ruri="sip:bob@nowhere.invalid", to_tag=";tag=b1", call_id=call_id, extra=signed_route(target, call_id, "nowhere.invalid")), UA)
    [(kind, data, where)] = target.sent
    answer = parse_message(data)
    assert where == UA and answer.status == 500  # 16.9 + 16.7 step 6, for a target out of reach
    assert answer.headers.get_values("Via") == ["SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bKbad1"]
    no_findings(target)


# -- the ACK for a 2xx, forwarded statelessly ----------------------------------------------------


def test_ack_for_2xx_towards_a_name_is_resolved_before_it_is_sent(target: FuzzTarget) -> None:
    """Was: InvalidAddressError (a UDP socket writes to addresses only)."""
    target.reactor.names["phone.example.net"] = "127.0.0.9"
    call_id = "ack-name@127.0.0.2"
    target.send_udp(request("ACK", ruri="sip:bob@phone.example.net:5070", to_tag=";tag=b1", call_id=call_id, extra=signed_route(target, call_id, "phone.example.net")), UA)
    [(kind, data, where)] = target.sent
    assert where == ("127.0.0.9", 5070)
    assert parse_message(data).method == "ACK"
    no_findings(target)


def test_ack_for_2xx_towards_a_name_that_does_not_resolve_is_dropped(target: FuzzTarget) -> None:
    call_id = "ack-nxdomain@127.0.0.2"
    target.send_udp(request("ACK", ruri="sip:bob@nowhere.invalid", to_tag=";tag=b1", call_id=call_id, extra=signed_route(target, call_id, "nowhere.invalid")), UA)
    assert target.sent == []
    no_findings(target)


def test_in_dialog_request_with_a_malformed_route_gets_400_and_its_transaction_ends(target: FuzzTarget) -> None:
    """Was: a stateless 400 from the ParseError, and the server transaction
    (admitted for its Route) left in Trying for ever."""
    target.send_udp(request("MESSAGE", to_tag=";tag=b1", extra="Route: <sip:>\r\n"), EDGE)
    assert [(s, r) for s, r, _ in answers(target)] == [(400, "URI: invalid host")]
    no_findings(target)  # finish() reports transactions that never ended


def test_in_dialog_request_with_a_malformed_route_from_the_unauthenticated_is_challenged_statelessly(target: FuzzTarget) -> None:
    """A Route that cannot be parsed proves no dialog of ours: admission
    challenges it like any out-of-dialog request, before any state."""
    target.send_udp(request("MESSAGE", to_tag=";tag=b1", extra="Route: <sip:>\r\n"), UA)
    assert [s for s, _, _ in answers(target)] == [407]
    no_findings(target)


# -- CR, LF and NUL inside header lines ------------------------------------------------------------


@pytest.mark.parametrize("junk", ["\r", "\n", "\x00"])
def test_contact_with_a_bare_cr_lf_or_nul_gets_400(target: FuzzTarget, junk: str) -> None:
    """Was: the registrar stored the Contact and its 200 could not be built
    (ValueError "header values must not contain CR, LF or NUL": a traceback and 500)."""
    extra = f"Contact: <sip:alice@127.0.0.3:5062;tran{junk}sport=udp>\r\n"
    target.send_udp(request("REGISTER", ruri=f"sip:{DOMAIN}", via="SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bKr1", extra=extra), EDGE)
    assert [(s, r) for s, r, _ in answers(target)] == [(400, "NUL, CR or LF inside a header line")]
    assert target.service.location.bindings_now("sip:bob@example.com") == []
    no_findings(target)


def test_bare_lf_in_an_echoed_header_is_dropped_not_echoed(target: FuzzTarget) -> None:
    """A 400 would copy the Call-ID, forging a header line in our own answer."""
    target.send_udp(request(call_id="x\nX-Injected: 1"), UA)
    assert target.sent == []
    no_findings(target)


# -- the registrar -------------------------------------------------------------------------------------


def register(cseq: int, branch: str, extra: str = "") -> bytes:
    return request("REGISTER", ruri=f"sip:{DOMAIN}", via=f"SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bK{branch}", cseq=cseq,
                   extra=f"Contact: <sip:bob@127.0.0.3:5062>\r\n{extra}", call_id="reg@127.0.0.3")


def test_replayed_register_gets_400_not_500(target: FuzzTarget) -> None:
    target.send_udp(register(8, "one"), EDGE)
    assert [s for s, _, _ in answers(target)] == [200]
    target.send_udp(register(8, "two"), EDGE)
    assert [(s, r) for s, r, _ in answers(target)] == [(400, "CSeq out of order")]
    no_findings(target)


def test_malformed_path_from_a_trusted_edge_gets_400_and_is_not_stored(target: FuzzTarget) -> None:
    """Was: stored, it became the Route of every call to the AOR, and each call
    ended in a ParseError traceback and 500 ("routing failed")."""
    target.send_udp(register(1, "p1", extra="Path: <sip:edge.example.com;lr\r\n"), EDGE)
    assert [(s, r) for s, r, _ in answers(target)] == [(400, "Path: malformed value")]
    assert target.service.location.bindings_now("sip:bob@example.com") == []
    no_findings(target)


def test_call_to_a_binding_whose_path_cannot_be_parsed_gets_400_and_leaves_no_context(target: FuzzTarget) -> None:
    """A binding stored before Path was checked (or edited in the SQL store)."""
    now = target.reactor.seconds()
    target.service.location.put(Binding("sip:bob@example.com", "sip:bob@127.0.0.9:5062", now + 3600, path=("<sip:edge;lr",)))
    target.send_udp(request("INVITE", via="SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bKi1"), EDGE)
    assert [s for s, _, _ in answers(target)] == [100, 400]
    assert target.service.core.contexts == {}
    no_findings(target)
    assert target.service.transactions.counts() == {"server": 0, "client": 0, "rfc2543_ack": 0, "sources": 0}


# -- a stage that meets a malformed header late ----------------------------------------------------------


class _RouteReadingStage:
    name = "reads-routes"

    def process(self, context: RequestContext) -> Decision:
        context.request.routes  # noqa: B018 - parsed on access
        return Decision.reply(200, "OK")


def test_stage_meeting_a_malformed_header_answers_400_not_500() -> None:
    data = request(extra="Route: <sip:a;lr>, <sip:b\r\n")
    decision = Pipeline([_RouteReadingStage()]).run(RequestContext(parse_message(data), None))  # type: ignore[arg-type]
    assert isinstance(decision, Decision) and (decision.status, decision.reason) == (400, "Address: malformed name-addr or addr-spec")
    with pytest.raises(ParseError):
        parse_message(data).routes  # noqa: B018


# -- by hand: ports over 65535 and unparseable hosts in every header a proxy reads ------------------

_OVER = {
    "Via": {"via": "SIP/2.0/UDP 127.0.0.2:65536;branch=z9hG4bKp"},
    "Request-URI": {"ruri": "sip:bob@example.com:65536"},
    "Route in dialog": {"extra": "Route: <sip:127.0.0.9:99999999999;lr>\r\n", "to_tag": ";tag=x"},
    "Contact": {"extra": "Contact: <sip:a@127.0.0.2:65536>\r\n"},
    "Route": {"extra": "Route: <sip:127.0.0.9:65536;lr>\r\n"},
    "Record-Route": {"extra": "Record-Route: <sip:127.0.0.9:65536;lr>\r\n"},
    "Path": {"extra": "Path: <sip:127.0.0.9:65536;lr>\r\n"},
    "Request-URI host": {"ruri": "sip:bob@[::1::2]"},
    "Contact host": {"extra": "Contact: <sip:a@[fe80::zz]>\r\n"},
    "Via host": {"via": "SIP/2.0/UDP [::1::2]:5060;branch=z9hG4bKp"},
}


@pytest.mark.parametrize("method", ["INVITE", "REGISTER", "MESSAGE"])
@pytest.mark.parametrize("source", [UA, EDGE], ids=["unauthenticated", "trusted"])
@pytest.mark.parametrize("where", list(_OVER))
def test_port_over_65535_or_bad_host_anywhere_never_gets_5xx(target: FuzzTarget, method: str, source: tuple[str, int], where: str) -> None:
    kw = dict(_OVER[where])
    if method == "REGISTER":
        kw.setdefault("ruri", f"sip:{DOMAIN}")
    target.send_udp(request(method, **kw), source)  # type: ignore[arg-type]
    target.advance(5)
    got = [(s, r) for s, r, _ in answers(target)]
    assert got and all(s < 500 for s, _ in got), got
    assert all(r != "Bad Request" for s, r in got if s == 400), got  # the reason says what is wrong
    no_findings(target)


@pytest.mark.parametrize("header", ["From", "To"])
def test_port_over_65535_in_from_or_to_gets_400(target: FuzzTarget, header: str) -> None:
    name = "alice" if header == "From" else "bob"
    data = request().replace(f"{header}: <sip:{name}@example.com>".encode(), f"{header}: <sip:{name}@example.com:65536>".encode())
    target.send_udp(data, UA)
    assert [(s, r) for s, r, _ in answers(target)] == [(400, "URI: invalid port")]
    no_findings(target)
