"""sips: requests travel over TLS on every hop, or not at all (issue 9, RFC 5630).

A sips: Request-URI that reached the proxy over UDP or TCP gets a stateless
``480`` with Warning 381 "SIPS Required"; a branch of a sips: request (or to
a sips: target) whose next hop is UDP or TCP is never sent and ends with
``480`` and Warning 380 "SIPS Not Allowed" (RFC 5630 5.3); the Record-Route
of a sips: request is a sips: URI.  Each refusal is a ``sips-refused``
security event.

The whole service built by makeService (default pipeline, auth included) on
the socketless reactor of test_unusable_next_hop: its real UDP, TCP and TLS
listeners and dispatcher; a TLS connection is the real SIP stream protocol
of the TLS listener over a StringTransport (the handshake is not what is
tested here: tests/e2e/test_sips_tls.py does it with real TLS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_unusable_next_hop import CALLEE, CALLER, PROXY, PROXY_TLS_PORT, Proxy, request
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from sipshield.events import SIPS_REFUSED, SecurityEvent
from sipshield.message import Request, Response, parse_message
from sipshield.state import Binding

LISTEN = ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1", "tls:0:interface=127.0.0.1"]


class Connection:
    """One accepted connection on a listener of the service: the real
    SIP stream protocol, bytes in with ``send``, bytes out in ``messages``."""

    def __init__(self, factory: Any, peer: tuple[str, int], local_port: int) -> None:
        self.proto = factory.buildProtocol(IPv4Address("TCP", *peer))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", *peer), hostAddress=IPv4Address("TCP", PROXY[0], local_port))
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def messages(self) -> list[Request | Response]:
        out, data = [], self.transport.value()
        while data:
            head, _, rest = data.partition(b"\r\n\r\n")
            message = parse_message(head + b"\r\n\r\n")
            out.append(message)
            data = rest[message.content_length or 0:]
        return out

    def finals(self) -> list[tuple[int, str]]:
        return [(m.status, m.reason) for m in self.messages() if isinstance(m, Response) and m.status >= 200]


class SipsProxy(Proxy):
    def __init__(self, path: Path, routes: list[dict[str, Any]] | None = None) -> None:
        super().__init__(path, routes, LISTEN)
        self.events: list[SecurityEvent] = []
        self.service.events.subscribe(_Recorder(self.events))

    def tls(self, peer: tuple[str, int] = CALLER) -> Connection:
        return Connection(self.reactor.tls_factory, peer, PROXY_TLS_PORT)

    def tcp(self, peer: tuple[str, int] = CALLER) -> Connection:
        tcp = next(listener for listener in self.service.listeners if listener.config.kind == "tcp")
        return Connection(tcp.factory, peer, PROXY[1])

    def refusals(self) -> list[SecurityEvent]:
        return [e for e in self.events if e.kind == SIPS_REFUSED]


class _Recorder:
    def __init__(self, events: list[SecurityEvent]) -> None:
        self.events = events

    def emit(self, event: SecurityEvent) -> None:
        self.events.append(event)


@pytest.fixture
def make(tmp_path: Path):
    built: list[SipsProxy] = []

    def build(routes: list[dict[str, Any]] | None = None) -> SipsProxy:
        built.append(SipsProxy(tmp_path / f"data{len(built)}", routes))
        return built[-1]

    yield build
    for proxy in built:
        proxy.stop()


def over(transport: str, data: bytes) -> bytes:
    return data.replace(b"SIP/2.0/UDP", f"SIP/2.0/{transport}".encode(), 1)


def warnings(message: Request | Response) -> list[str]:
    return message.headers.get_values("Warning")


# -- a sips: request that came in clear ------------------------------------------------------------


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE", "OPTIONS", "REGISTER"])
def test_a_sips_request_over_udp_gets_480_sips_required_statelessly_and_goes_nowhere(make, method: str) -> None:
    proxy = make()
    proxy.service.location.put(Binding("sip:bob@example.com", "sips:bob@127.0.0.5:5071", proxy.reactor.seconds() + 3600, source=("UDP", *CALLEE)))
    proxy.datagram(request(method, "sips:bob@example.com"))
    (answer,) = proxy.sent_to(CALLER)  # no 100 Trying: refused before any transaction
    assert isinstance(answer, Response)
    assert (answer.status, answer.reason) == (480, "Temporarily Unavailable: sips over a non-TLS hop")
    assert warnings(answer) == [f'381 {PROXY[0]}:{PROXY[1]} "SIPS Required"']
    assert proxy.destinations() == {CALLER}
    (event,) = proxy.refusals()
    assert (event.source, event.transport, event.user) == (CALLER[0], "UDP", None)
    assert "sips:" in event.reason and "UDP" in event.reason


def test_a_sips_request_over_tcp_gets_480_too(make) -> None:
    proxy = make()
    caller = proxy.tcp()
    caller.send(over("TCP", request("INVITE", "sips:bob@example.com")))
    assert caller.finals() == [(480, "Temporarily Unavailable: sips over a non-TLS hop")]
    assert [e.transport for e in proxy.refusals()] == ["TCP"]


def test_a_sip_request_over_udp_is_not_refused(make) -> None:
    """The control: the same request to a sip: URI is routed (here: 404, nobody registered)."""
    proxy = make()
    proxy.datagram(request("MESSAGE", "sip:bob@example.com"))
    assert proxy.finals() == [(404, "Not Found")]
    assert proxy.refusals() == []


# -- a sips: request that would go out in clear ----------------------------------------------------


def test_a_sips_invite_over_tls_to_a_phone_registered_over_tls_is_relayed_with_a_sips_record_route(make) -> None:
    proxy = make()
    callee = proxy.tls(CALLEE)
    proxy.service.location.put(Binding("sip:bob@example.com", "sips:bob@127.0.0.5:5070", proxy.reactor.seconds() + 3600, source=("TLS", *CALLEE)))
    caller = proxy.tls()
    caller.send(over("TLS", request("INVITE", "sips:bob@example.com")))
    (invite,) = [m for m in callee.messages() if isinstance(m, Request)]
    assert str(invite.uri) == "sips:bob@127.0.0.5:5070"
    (record_route,) = invite.headers.get_values("Record-Route")
    assert record_route.startswith(f"<sips:{PROXY[0]}:{PROXY_TLS_PORT};lr;ss=")  # RFC 3261 16.6 step 4, no transport=tls (RFC 5630)
    assert invite.top_via.transport == "TLS"
    assert proxy.refusals() == []
    assert proxy.destinations() == set()  # no datagram, no new connection: the phone's own TLS connection


def assert_sips_not_allowed(proxy: SipsProxy) -> None:
    """A sips: INVITE from a TLS caller gets 480 with Warning 380, and nothing goes anywhere."""
    caller = proxy.tls()
    caller.send(over("TLS", request("INVITE", "sips:bob@example.com")))
    (final,) = [m for m in caller.messages() if isinstance(m, Response) and m.status >= 200]
    assert (final.status, final.reason) == (480, "Temporarily Unavailable: sips target not reachable over TLS")
    assert warnings(final) == [f'380 {PROXY[0]}:{PROXY_TLS_PORT} "SIPS Not Allowed"']
    assert proxy.destinations() == set()


def test_a_sips_invite_to_an_aor_with_only_sip_contacts_gets_480_sips_not_allowed(make) -> None:
    """RFC 5630 5.3: a sips: request is relayed to sips: contacts only."""
    proxy = make()
    proxy.service.location.put(Binding("sip:bob@example.com", "sip:bob@127.0.0.5:5070", proxy.reactor.seconds() + 3600, source=("TLS", *CALLEE)))
    assert_sips_not_allowed(proxy)
    (event,) = proxy.refusals()
    assert (event.source, event.transport) == (CALLER[0], "TLS")
    assert "none of them sips:" in event.reason


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_a_sips_invite_to_a_sips_contact_registered_over_udp_or_tcp_gets_480_and_nothing_is_sent(make, transport: str) -> None:
    proxy = make()
    if transport == "TCP":
        callee = proxy.tcp(CALLEE)
    proxy.service.location.put(Binding("sip:bob@example.com", "sips:bob@127.0.0.5:5070", proxy.reactor.seconds() + 3600, source=(transport, *CALLEE)))
    assert_sips_not_allowed(proxy)
    if transport == "TCP":
        assert callee.messages() == []
    (event,) = proxy.refusals()
    assert (event.source, event.transport) == (CALLER[0], "TLS")
    assert f"{transport} 127.0.0.5:5070" in event.reason
    assert proxy.service.core.contexts == {}


def test_one_branch_in_clear_does_not_hide_the_tls_branch_of_a_fork(make) -> None:
    proxy = make()
    expires = proxy.reactor.seconds() + 3600
    callee = proxy.tls(CALLEE)
    proxy.service.location.put(Binding("sip:bob@example.com", "sip:bob@127.0.0.6:5070", expires, source=("UDP", "127.0.0.6", 5070), q=1.0))
    proxy.service.location.put(Binding("sip:bob@example.com", "sips:bob@127.0.0.5:5070", expires, source=("TLS", *CALLEE), q=0.5))
    caller = proxy.tls()
    caller.send(over("TLS", request("MESSAGE", "sips:bob@example.com")))
    (message,) = [m for m in callee.messages() if isinstance(m, Request)]
    callee.send(message.make_response(200, "OK", to_tag="b1").serialise())
    assert caller.finals() == [(200, "OK")]
    assert proxy.destinations() == set()  # nothing to 127.0.0.6 over UDP


@pytest.mark.parametrize(("target", "sent"), [
    ("sip:127.0.0.5:5070", False),                   # a gateway over UDP
    ("sip:127.0.0.5:5070;transport=tcp", False),
    ("sip:127.0.0.5:5071;transport=tls", True),      # TLS: connected to
    ("sips:127.0.0.5:5071", True),
])
def test_a_sips_request_follows_a_static_route_only_over_tls(make, target: str, sent: bool) -> None:
    proxy = make(routes=[{"match_domain": "pstn.example.com", "target": target}])
    caller = proxy.tls()
    caller.send(over("TLS", request("INVITE", "sips:+15551234@pstn.example.com")))
    if sent:
        assert [(host, port) for host, port, *_ in proxy.reactor.sslClients] == [("127.0.0.5", 5071)]
        assert proxy.refusals() == []
    else:
        assert caller.finals() == [(480, "Temporarily Unavailable: sips target not reachable over TLS")]
        assert proxy.destinations() == set()
        assert len(proxy.refusals()) == 1


def test_a_sip_request_over_udp_to_a_sips_contact_goes_over_tls(make) -> None:
    """A sips: target makes its own hop TLS; the caller's side stays sip: over UDP."""
    proxy = make()
    callee = proxy.tls(CALLEE)
    proxy.service.location.put(Binding("sip:bob@example.com", "sips:bob@127.0.0.5:5070", proxy.reactor.seconds() + 3600, source=("TLS", *CALLEE)))
    proxy.datagram(request("INVITE", "sip:bob@example.com"))
    (invite,) = [m for m in callee.messages() if isinstance(m, Request)]
    outbound, inbound = invite.headers.get_values("Record-Route")
    assert outbound.startswith(f"<sips:{PROXY[0]}:{PROXY_TLS_PORT};lr;r2=on;")
    assert inbound.startswith(f"<sip:{PROXY[0]}:{PROXY[1]};transport=udp;lr;r2=on;")


# -- in dialog: a sips: remote target behind a hop in clear ----------------------------------------

GATEWAY = [{"match_domain": "pstn.example.com", "target": f"sip:{CALLEE[0]}:{CALLEE[1]}"}]


def sips_dialog(proxy: SipsProxy) -> tuple[Connection, str]:
    """A call from a TLS caller to a UDP gateway on CALLEE (a static route)
    that record-routes itself and answers with a sips: Contact; returns the
    caller's connection and the in-dialog request's head (Request-URI
    sips:, Route: our two values then the gateway's, in the caller's order)."""
    caller = proxy.tls()
    caller.send(over("TLS", request("INVITE", "sip:+15551234@pstn.example.com", call_id="sipsdialog")))
    (invite,) = proxy.sent_to(CALLEE)
    assert isinstance(invite, Request)
    ok = invite.make_response(200, "OK", to_tag="g1")
    ok.headers.add("Record-Route", f"<sip:{CALLEE[0]}:{CALLEE[1]};lr>")
    for value in invite.headers.get_values("Record-Route"):
        ok.headers.add("Record-Route", value)
    ok.headers.add("Contact", "<sips:gw@127.0.0.8:5071>")
    proxy.datagram(ok.serialise(), CALLEE)
    (answer,) = [m for m in caller.messages() if isinstance(m, Response) and m.status == 200]
    routes = "".join(f"Route: {value}\r\n" for value in reversed(answer.headers.get_values("Record-Route")))
    return caller, routes


def test_an_in_dialog_sips_request_whose_route_goes_on_in_clear_gets_480_and_is_not_sent(make) -> None:
    proxy = make(routes=GATEWAY)
    caller, routes = sips_dialog(proxy)
    before = len(proxy.sent_to(CALLEE))
    caller.send(over("TLS", request("BYE", "sips:gw@127.0.0.8:5071", extra=routes, to_tag="g1", call_id="sipsdialog")))
    assert caller.finals()[-1] == (480, "Temporarily Unavailable: sips target not reachable over TLS")
    assert len(proxy.sent_to(CALLEE)) == before
    assert len(proxy.refusals()) == 1


def test_an_in_dialog_sip_request_on_the_same_route_is_relayed(make) -> None:
    """The control: the route set is ours and valid; only the sips: Request-URI stops the BYE."""
    proxy = make(routes=GATEWAY)
    caller, routes = sips_dialog(proxy)
    caller.send(over("TLS", request("BYE", "sip:gw@127.0.0.8:5071", extra=routes, to_tag="g1", call_id="sipsdialog")))
    assert [m.method for m in proxy.sent_to(CALLEE) if isinstance(m, Request)] == ["INVITE", "BYE"]


@pytest.mark.parametrize(("ruri", "forwarded"), [("sip:gw@127.0.0.8:5071", True), ("sips:gw@127.0.0.8:5071", False)])
def test_a_stateless_ack_for_2xx_to_a_sips_target_is_not_forwarded_in_clear(make, ruri: str, forwarded: bool) -> None:
    proxy = make(routes=GATEWAY)
    caller, routes = sips_dialog(proxy)
    caller.send(over("TLS", request("ACK", ruri, extra=routes, to_tag="g1", call_id="sipsdialog")))
    acks = [m for m in proxy.sent_to(CALLEE) if isinstance(m, Request) and m.method == "ACK"]
    assert len(acks) == (1 if forwarded else 0)


def test_a_sips_ack_that_came_in_clear_is_not_forwarded(make) -> None:
    """An ACK for 2xx over UDP on a route set we made, to a sips: target reachable over TLS: dropped."""
    proxy = make()
    callee = proxy.tls(CALLEE)
    proxy.service.location.put(Binding("sip:bob@example.com", "sips:bob@127.0.0.5:5070", proxy.reactor.seconds() + 3600, source=("TLS", *CALLEE)))
    caller = proxy.tls()
    caller.send(over("TLS", request("INVITE", "sips:bob@example.com", call_id="sipsack")))
    (invite,) = [m for m in callee.messages() if isinstance(m, Request)]
    routes = "".join(f"Route: {value}\r\n" for value in reversed(invite.headers.get_values("Record-Route")))
    proxy.datagram(request("ACK", "sips:bob@127.0.0.5:5070", extra=routes, to_tag="b1", call_id="sipsack"))
    assert [m.method for m in callee.messages() if isinstance(m, Request)] == ["INVITE"]
    caller.send(over("TLS", request("ACK", "sips:bob@127.0.0.5:5070", extra=routes, to_tag="b1", call_id="sipsack")))
    assert [m.method for m in callee.messages() if isinstance(m, Request)] == ["INVITE", "ACK"]  # the control, over TLS


def test_a_strict_routed_request_that_becomes_sips_after_admission_is_refused_when_it_came_in_clear(make) -> None:
    """A strict router sends our own (sip:, UDP side) Record-Route as the
    Request-URI and the real target last in Route: the rewrite (RFC 3261
    16.4) gives it a sips: Request-URI after admission, over UDP."""
    proxy = make()
    callee = proxy.tls(CALLEE)
    proxy.service.location.put(Binding("sip:bob@example.com", "sips:bob@127.0.0.5:5070", proxy.reactor.seconds() + 3600, source=("TLS", *CALLEE)))
    proxy.datagram(request("INVITE", "sip:bob@example.com", call_id="strict"))
    (invite,) = [m for m in callee.messages() if isinstance(m, Request)]
    outbound, inbound = (value.strip("<>") for value in invite.headers.get_values("Record-Route"))
    for target, sent in (("sip:bob@127.0.0.5:5070;transport=tls", True), ("sips:bob@127.0.0.5:5070", False)):
        before = len(callee.messages())
        proxy.datagram(request("BYE", inbound, extra=f"Route: <{outbound}>\r\nRoute: <{target}>\r\n", to_tag="b1", call_id="strict"))
        if sent:
            assert [m.method for m in callee.messages()[before:] if isinstance(m, Request)] == ["BYE"]  # the control
        else:
            assert callee.messages()[before:] == []
            assert proxy.finals()[-1] == (480, "Temporarily Unavailable: sips over a non-TLS hop")


def test_a_reload_keeps_the_sips_refusal(make) -> None:
    """``Service.reload`` rebuilds the admission steps: the sips: one stays among them."""
    from dataclasses import replace

    proxy = make()
    service = proxy.service
    assert service.reload(replace(service.config, acl=replace(service.config.acl, action="drop"))) == ["acl"]
    proxy.datagram(request("MESSAGE", "sips:bob@example.com"))
    assert proxy.finals() == [(480, "Temporarily Unavailable: sips over a non-TLS hop")]
    assert len(proxy.refusals()) == 1
