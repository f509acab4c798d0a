"""The proxy core's local answers: RFC 3261 16.3 checks, OPTIONS to itself,
malformed requests, and where responses go (RFC 3261 18.2.2, RFC 3581)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipshield.message import ParseError, Response, parse_message
from sipshield.proxy import ProxyCore

CORPUS = Path(__file__).parent.parent / "data" / "rfc4475"


class RecordingFlow:
    transport_name = "UDP"
    reliable = False
    secure = False

    def __init__(self, remote: tuple[str, int] = ("192.0.2.9", 40000), reliable: bool = False) -> None:
        self.remote = remote
        self.local = ("127.0.0.1", 5060)
        self.reliable = reliable
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def send(self, data: bytes) -> None:
        self.sent.append((data, self.remote))

    def send_to(self, data: bytes, address: tuple[str, int]) -> None:
        self.sent.append((data, address))

    def peer_certificate(self) -> None:
        return None

    def responses(self) -> list[Response]:
        parsed = [parse_message(data) for data, _ in self.sent]
        assert all(isinstance(r, Response) for r in parsed)
        return parsed  # type: ignore[return-value]


def make_core() -> ProxyCore:
    core = ProxyCore(["example.com"])
    core.add_local_address("127.0.0.1", 5060)
    return core


def feed(core: ProxyCore, data: bytes, flow: RecordingFlow | None = None) -> RecordingFlow:
    flow = flow or RecordingFlow()
    try:
        message = parse_message(data)
    except ParseError as e:
        core.bad_message(e, flow)
    else:
        core.message_received(message, flow)
    return flow


def request(uri: str = "sip:127.0.0.1", method: str = "OPTIONS", via: str = "SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKx", extra: str = "") -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=f1\r\n"
        f"To: <{uri}>\r\nCall-ID: c1@example.com\r\nCSeq: 7 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("uri", ["sip:127.0.0.1", "sip:127.0.0.1:5060", "sip:example.com", "sip:localhost", "sips:example.com"])
def test_options_to_itself_gets_200_with_capabilities(uri: str) -> None:
    (response,) = feed(make_core(), request(uri)).responses()
    assert (response.status, response.reason) == (200, "OK")
    assert "INVITE" in response.headers.get("Allow")
    assert response.headers.get("Accept") == "application/sdp"
    assert response.headers.get("Supported") is not None
    assert response.to.tag  # RFC 3261 8.2.6.2: a final response carries a To tag
    assert response.call_id == "c1@example.com" and response.cseq.seq == 7


def test_options_to_another_port_is_not_to_itself() -> None:
    # Not this proxy, so it would be relayed, and relaying is not allowed.
    (response,) = feed(make_core(), request("sip:127.0.0.1:5999")).responses()
    assert response.status == 403


@pytest.mark.parametrize(
    "name, status, reason",
    [
        ("unkscm.dat", 416, "Unsupported URI Scheme"),
        ("novelsc.dat", 416, "Unsupported URI Scheme"),
        ("zeromf.dat", 483, "Too Many Hops"),
        ("bext01.dat", 420, "Bad Extension"),
        ("insuf.dat", 400, None),
        ("multi01.dat", 400, None),
        ("mcl01.dat", 400, None),
    ],
)
def test_rfc4475_semantic_rows_get_the_expected_status(name: str, status: int, reason: str | None) -> None:
    flow = feed(make_core(), (CORPUS / name).read_bytes())
    ((data, _),) = flow.sent  # raw: insuf's answer lacks the To it never had
    version, code, phrase = data.split(b"\r\n", 1)[0].decode().split(" ", 2)
    assert (version, int(code)) == ("SIP/2.0", status)
    if reason:
        assert phrase == reason


def test_bad_extension_lists_unsupported_options() -> None:
    (response,) = feed(make_core(), (CORPUS / "bext01.dat").read_bytes()).responses()
    assert response.headers.get("Unsupported") == "noProxiesSupportThis, norDoAnyProxiesSupportThis"


def test_malformed_request_answered_at_source_with_parser_reason() -> None:
    flow = feed(make_core(), (CORPUS / "mismatch01.dat").read_bytes())
    ((data, address),) = flow.sent
    assert address == flow.remote
    response = parse_message(data)
    assert isinstance(response, Response) and response.status == 400
    assert "CSeq" in response.reason


def test_bad_version_gets_505() -> None:
    (response,) = feed(make_core(), (CORPUS / "badvers.dat").read_bytes()).responses()
    assert response.status == 505


@pytest.mark.parametrize("name", ["scalarlg.dat", "bigcode.dat"])
def test_malformed_responses_are_dropped(name: str) -> None:
    assert feed(make_core(), (CORPUS / name).read_bytes()).sent == []


def test_ack_is_never_answered() -> None:
    assert feed(make_core(), request("sip:bob@example.com", "ACK")).sent == []


@pytest.mark.parametrize(
    "via, expected",
    [
        ("SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKa", ("192.0.2.9", 5070)),  # source IP, Via port
        ("SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKa", ("192.0.2.9", 5060)),  # default port
        ("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;rport", ("192.0.2.9", 40000)),  # RFC 3581: source port
        ("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;maddr=192.0.2.77", ("192.0.2.77", 5070)),  # maddr
        ("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa;received=255.255.255.255", ("192.0.2.9", 5060)),  # never a broadcast
    ],
)
def test_udp_responses_go_where_rfc3261_18_2_2_says(via: str, expected: tuple[str, int]) -> None:
    flow = feed(make_core(), request(via=via))
    ((_, address),) = flow.sent
    assert address == expected


def test_stream_responses_use_the_same_connection() -> None:
    flow = feed(make_core(), request(via="SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bKa"), RecordingFlow(reliable=True))
    ((_, address),) = flow.sent
    assert address == flow.remote


def test_request_for_foreign_domain_is_not_relayed() -> None:
    (response,) = feed(make_core(), request("sip:bob@elsewhere.example.net", "INVITE")).responses()
    assert response.status == 403
