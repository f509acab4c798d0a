"""Unusable next hops (issue 7): a clear answer, and nothing ever sent there.

A next hop reached through a Route, a Contact (the remote target of a
dialog), a static route or a registration's Path can name an address no
socket should be given: port 0, the unspecified address, the limited
broadcast address, a multicast group, an IPv6 address with no IPv6
listener, or a transport the proxy does not speak (``transport=sctp``).
The branch ends with ``502 Bad Gateway: <why>`` (as a transport error it
counted as 503, which RFC 3261 16.7 step 6 turns into 500), and no datagram
or connection attempt goes to such an address, whatever the path (a
branch, a stateless ACK for 2xx, a response to a forged source).

The whole service built by makeService with its default pipeline (auth
included), real listeners, UDP protocol, TransportDispatcher and
DatagramFlow; only the sockets are replaced: the UDP port records every
``write(data, address)`` and a MemoryReactorClock records every
``connectTCP``/``connectSSL``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory

from sipshield.config import parse_config
from sipshield.message import Request, Response, parse_message
from sipshield.service import makeService
from sipshield.state import Binding

CALLER = ("127.0.0.2", 40000)  # trusted over UDP (admin): routed as asked, not challenged
CALLEE = ("127.0.0.5", 5070)
PROXY = ("127.0.0.1", 5060)
PROXY_TLS_PORT = 5061
LISTEN = ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]


class RecordingPort:
    """A listening port: records what a UDP socket would have put on the wire."""

    def __init__(self, kind: str, interface: str, port: int) -> None:
        self.host = IPv4Address(kind, interface, port)
        self.writes: list[tuple[bytes, tuple[str, int]]] = []

    def getHost(self) -> IPv4Address:
        return self.host

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.writes.append((data, addr))


class SocketlessReactor(MemoryReactorClock):
    """Clock time and no sockets: the UDP port records its writes, every
    connection attempt stays in ``tcpClients``/``sslClients``; ``answers`` is the DNS."""

    def __init__(self) -> None:
        super().__init__()
        self.udp = RecordingPort("UDP", *PROXY)
        self.udp_protocol: Any = None
        self.answers: dict[str, str] = {}
        self.tls_factory: Any = None

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> RecordingPort:
        self.udp_protocol = protocol
        protocol.makeConnection(self.udp)
        return self.udp

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> RecordingPort:
        super().listenTCP(port, factory, backlog, interface)
        if isinstance(factory, TLSMemoryBIOFactory):
            self.tls_factory = factory.wrappedFactory  # the SIP stream factory under the TLS wrapper
            return RecordingPort("TCP", PROXY[0], PROXY_TLS_PORT)
        return RecordingPort("TCP", *PROXY)

    def resolve(self, name: str, timeout: object = None) -> Any:
        if name in self.answers:
            return succeed(self.answers[name])
        return fail(DNSLookupError(name))


class Proxy:
    def __init__(self, path: Path, routes: list[dict[str, Any]] | None = None, listen: list[str] = LISTEN) -> None:
        raw: dict[str, Any] = {
            "server": {"data_dir": str(path), "listen": listen, "domains": ["example.com"]},
            "auth": {"trusted_sources": [{"network": f"{CALLER[0]}/32", "udp": True}], "trusted_role": "admin"},
            "routes": routes or [],
        }
        self.reactor = SocketlessReactor()
        self.reactor.advance(1_000_000)
        svc = self.service = makeService(parse_config(raw), self.reactor)
        svc._prepare_data_dir()
        svc._prepare_auth()
        svc._prepare_tls()
        for listener in svc.listeners:
            listener.listen()
            svc.core.add_local_address(*listener.address)

    def datagram(self, data: bytes, source: tuple[str, int] = CALLER) -> None:
        """*data* arrives on the UDP listener from *source*."""
        self.reactor.udp_protocol.datagramReceived(data, source)

    def sent_to(self, address: tuple[str, int]) -> list[Request | Response]:
        return [parse_message(data) for data, to in self.reactor.udp.writes if to == address]

    def finals(self, to: tuple[str, int] = CALLER) -> list[tuple[int, str]]:
        return [(m.status, m.reason) for m in self.sent_to(to) if isinstance(m, Response) and m.status >= 200]

    def destinations(self) -> set[tuple[str, int]]:
        """Every address a datagram was written to, and every connection attempted."""
        udp = {to for _, to in self.reactor.udp.writes}
        return udp | {(host, port) for host, port, *_ in self.reactor.tcpClients + self.reactor.sslClients}

    def stop(self) -> None:
        self.service.transactions.stop()


@pytest.fixture
def make(tmp_path: Path):
    built: list[Proxy] = []

    def build(routes: list[dict[str, Any]] | None = None) -> Proxy:
        built.append(Proxy(tmp_path / f"data{len(built)}", routes))
        return built[-1]

    yield build
    for proxy in built:
        proxy.stop()


def request(method: str = "INVITE", ruri: str = "sip:bob@example.com", *, extra: str = "", to_tag: str = "", call_id: str = "",
            source: tuple[str, int] = CALLER, branch: str = "") -> bytes:
    return (
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {source[0]}:{source[1]};branch={branch or 'z9hG4bK' + secrets.token_hex(6)};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>{';tag=' + to_tag if to_tag else ''}\r\n"
        f"Call-ID: {call_id or secrets.token_hex(6)}\r\nCSeq: 1 {method}\r\nContact: <sip:alice@{source[0]}:{source[1]}>\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def reached_only_the_caller(proxy: Proxy) -> bool:
    return proxy.destinations() <= {CALLER}


UNUSABLE = [
    # (Route URI, the reason phrase's tail)
    ("sip:127.0.0.5:0;lr", "port 0"),
    ("sip:127.0.0.5:0;transport=tcp;lr", "port 0"),
    ("sip:0.0.0.0;lr", "an unspecified address"),
    ("sip:0.0.0.0:5070;transport=tcp;lr", "an unspecified address"),
    ("sip:0.1.2.3;lr", "an unspecified address"),
    ("sip:255.255.255.255;lr", "a broadcast address"),
    ("sip:255.255.255.255;transport=tcp;lr", "a broadcast address"),
    ("sip:240.0.0.1;lr", "a reserved address"),
    ("sip:224.0.0.1;lr", "a multicast address"),
    ("sip:239.255.255.250:1900;lr", "a multicast address"),
    ("sip:[ff02::1];transport=tcp;lr", "a multicast address"),
    ("sip:[::];transport=tcp;lr", "an unspecified address"),
    ("sip:[::ffff:255.255.255.255];transport=tcp;lr", "a broadcast address"),
    ("sip:[::1]:5070;lr", "no UDP listener for IPv6"),
    ("sip:127.0.0.5:5070;transport=sctp;lr", "unsupported transport"),
    ("sip:127.0.0.5:5070;transport=ws;lr", "unsupported transport"),
]


@pytest.mark.parametrize(("route", "why"), UNUSABLE)
def test_a_route_to_an_unusable_next_hop_gets_502_with_the_reason_and_nothing_is_sent(make, route: str, why: str) -> None:
    proxy = make()
    proxy.datagram(request("MESSAGE", extra=f"Route: <{route}>\r\n"))
    assert proxy.finals() == [(502, f"Bad Gateway: {why}")]
    assert reached_only_the_caller(proxy)
    proxy.reactor.pump([1] * 64)  # every timer out: still nothing sent elsewhere, nothing left
    assert reached_only_the_caller(proxy)
    assert proxy.service.core.contexts == {}


def test_an_invite_to_an_unusable_next_hop_gets_100_then_one_502(make) -> None:
    proxy = make()
    proxy.datagram(request("INVITE", extra="Route: <sip:224.0.0.1;lr>\r\n"))
    assert [m.status for m in proxy.sent_to(CALLER)] == [100, 502]
    proxy.reactor.pump([1] * 64)
    assert set(proxy.finals()) == {(502, "Bad Gateway: a multicast address")}  # retransmitted until the ACK, nothing else
    assert reached_only_the_caller(proxy)


@pytest.mark.parametrize(("address", "why"), [("255.255.255.255", "a broadcast address"), ("0.0.0.0", "an unspecified address"),
                                              ("224.0.0.251", "a multicast address")])
def test_a_static_route_whose_name_resolves_to_an_unusable_address_gets_502(make, address: str, why: str) -> None:
    proxy = make(routes=[{"match_domain": "pstn.example.com", "target": "sip:gw.example.net;transport=tcp"}])
    proxy.reactor.answers["gw.example.net"] = address
    proxy.datagram(request("INVITE", "sip:+15551234@pstn.example.com"))
    assert proxy.finals() == [(502, f"Bad Gateway: {why}")]
    assert reached_only_the_caller(proxy)


def test_a_registered_path_to_a_broadcast_address_gets_502(make) -> None:
    proxy = make()
    proxy.service.location.put(Binding("sip:bob@example.com", "sip:bob@127.0.0.5:5070", proxy.reactor.seconds() + 3600,
                                       path=("<sip:255.255.255.255;lr>",), source=("UDP", *CALLEE)))
    proxy.datagram(request("INVITE"))
    assert proxy.finals() == [(502, "Bad Gateway: a broadcast address")]
    assert reached_only_the_caller(proxy)


def test_one_unusable_branch_of_a_fork_does_not_hide_the_others_answer(make) -> None:
    proxy = make()
    expires = proxy.reactor.seconds() + 3600
    proxy.service.location.put(Binding("sip:bob@example.com", "sip:bob@127.0.0.5:5070", expires, path=("<sip:224.0.0.1;lr>",), q=1.0))
    proxy.service.location.put(Binding("sip:bob@example.com", "sip:bob@127.0.0.6:5070", expires, source=("UDP", "127.0.0.6", 5070), q=0.5))
    proxy.datagram(request("MESSAGE"))
    (forwarded,) = proxy.sent_to(("127.0.0.6", 5070))
    assert isinstance(forwarded, Request)
    proxy.datagram(forwarded.make_response(404, "Not Found", to_tag="b1").serialise(), ("127.0.0.6", 5070))
    assert proxy.finals() == [(404, "Not Found")]  # 4xx ranks above the unusable branch's 502 (16.7 step 6)
    assert proxy.destinations() <= {CALLER, ("127.0.0.6", 5070)}


# -- in dialog: the remote target (a Contact) and the route set ------------------------------------


def dialog_bye(proxy: Proxy, contact: str) -> bytes:
    """A call from the caller to a gateway on CALLEE (a static route),
    record-routed with our token for that pair of hosts; the callee's 200
    names *contact* as its remote target, and the caller's BYE follows it."""
    call_id = secrets.token_hex(6)
    proxy.datagram(request("INVITE", "sip:+15551234@pstn.example.com", call_id=call_id))
    (invite,) = proxy.sent_to(CALLEE)
    assert isinstance(invite, Request)
    ok = invite.make_response(200, "OK", to_tag="g1")
    for value in invite.headers.get_values("Record-Route"):
        ok.headers.add("Record-Route", value)
    ok.headers.add("Contact", f"<{contact}>")
    proxy.datagram(ok.serialise(), CALLEE)
    (answer,) = [m for m in proxy.sent_to(CALLER) if isinstance(m, Response) and m.status == 200]
    routes = "".join(f"Route: {value}\r\n" for value in answer.headers.get_values("Record-Route"))
    return request("BYE", contact, extra=routes, to_tag="g1", call_id=call_id)


GATEWAY = [{"match_domain": "pstn.example.com", "target": f"sip:{CALLEE[0]}:{CALLEE[1]}"}]


@pytest.mark.parametrize(("contact", "why"), [
    ("sip:gw@127.0.0.5:0", "port 0"),
    ("sip:gw@127.0.0.5:0;transport=tcp", "port 0"),
    ("sip:gw@127.0.0.5:5070;transport=sctp", "unsupported transport"),
])
def test_an_in_dialog_request_to_an_unusable_remote_target_gets_502_and_nothing_is_sent(make, contact: str, why: str) -> None:
    proxy = make(routes=GATEWAY)
    bye = dialog_bye(proxy, contact)
    before = len(proxy.sent_to(CALLEE))
    proxy.datagram(bye)
    assert proxy.finals()[-1] == (502, f"Bad Gateway: {why}")
    assert len(proxy.sent_to(CALLEE)) == before  # the BYE went nowhere
    assert proxy.destinations() <= {CALLER, CALLEE}


def test_an_in_dialog_request_to_a_usable_remote_target_is_relayed(make) -> None:
    """The control: the same dialog with a usable Contact is followed."""
    proxy = make(routes=GATEWAY)
    proxy.datagram(dialog_bye(proxy, "sip:gw@127.0.0.5:5071"))
    assert [m.method for m in proxy.sent_to(("127.0.0.5", 5071)) if isinstance(m, Request)] == ["BYE"]


def test_a_stateless_ack_for_2xx_to_an_unusable_remote_target_is_not_sent(make) -> None:
    proxy = make(routes=GATEWAY)
    bye = parse_message(dialog_bye(proxy, "sip:gw@127.0.0.5:0"))
    assert isinstance(bye, Request)
    ack = Request("ACK", bye.uri, bye.headers.copy(), b"")
    ack.headers.set("CSeq", "1 ACK")
    proxy.datagram(ack.serialise())
    assert proxy.destinations() <= {CALLER, CALLEE}
    assert ("127.0.0.5", 0) not in proxy.destinations()


# -- responses: a forged source ------------------------------------------------------------------


@pytest.mark.parametrize("source", [("127.0.0.9", 0), ("0.0.0.0", 5060), ("255.255.255.255", 5060), ("224.0.0.1", 5060)])
def test_no_answer_is_written_to_an_unusable_source(make, source: tuple[str, int]) -> None:
    """An OPTIONS to the proxy gets its stateless 200 from any source; a
    datagram claiming port 0 or a broadcast/multicast/unspecified source
    gets nothing (a kernel may drop such a martian, a raw socket forges one)."""
    proxy = make()
    proxy.datagram(request("OPTIONS", "sip:example.com", source=("127.0.0.9", 5060)), ("127.0.0.9", 5060))
    assert [m.status for m in proxy.sent_to(("127.0.0.9", 5060))] == [200]  # the control
    proxy.datagram(request("OPTIONS", "sip:example.com", source=source), source)
    assert proxy.destinations() == {("127.0.0.9", 5060)}
