"""The proxy core's front door: validation (RFC 3261 16.3) and local answers.

The transports hand every parsed message to :class:`ProxyCore`; it decides
whether to answer, and for now answers everything itself: OPTIONS addressed
to the proxy gets 200 (RFC 3261 11.2), malformed requests get the status the
parser attached (400/413/505), and the 16.3 checks give 416, 420 and 483.
Transactions, forwarding and the routing pipeline build on this class.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from twisted.logger import Logger

from sipshield.message import ParseError, Request, Response

if TYPE_CHECKING:
    from sipshield.transport import Flow

__all__ = ["ProxyCore", "response_address", "ALLOW", "SUPPORTED"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE"
SUPPORTED = "path, outbound"
ACCEPT = "application/sdp"
KNOWN_EXTENSIONS: frozenset[str] = frozenset()
ROUTABLE_SCHEMES = frozenset(("sip", "sips", "tel"))
_LOOPBACK_NAMES = frozenset(("localhost", "localhost.localdomain"))


def response_address(request: Request, flow: Flow) -> tuple[str, int]:
    """Where to send a response over UDP (RFC 3261 18.2.2, RFC 3581 4).

    maddr wins; with rport the response goes back to the source port;
    otherwise to the source address and the Via's sent-by port.
    """
    try:
        via = request.top_via
    except ParseError:
        return flow.remote
    if via.maddr:
        return via.maddr.strip("[]"), via.port or 5060
    if via.rport is not None:
        return flow.remote
    return flow.remote[0], via.port or 5060


class ProxyCore:
    """The controller behind every listener (see MessageHandler)."""

    log = Logger()

    def __init__(self, domains: Iterable[str] = ()) -> None:
        self.domains = frozenset(d.lower() for d in domains)
        self.local_hosts: set[str] = set()
        self.local_ports: set[int] = set()
        self.counters = {"requests": 0, "responses": 0, "malformed": 0}

    def add_local_address(self, host: str, port: int) -> None:
        """Teach the core one address it listens on (called as listeners bind)."""
        host = host.lower()
        self.local_hosts.add(host)
        self.local_hosts.add(f"[{host}]")
        self.local_ports.add(port)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return
        if ip.is_loopback or ip.is_unspecified:
            self.local_hosts.update(_LOOPBACK_NAMES)
            self.local_hosts.update(("127.0.0.1", "::1", "[::1]"))

    def is_local(self, host: str, port: int | None) -> bool:
        """Is sip:host:port this proxy (RFC 3261 16.4 'the proxy's own')?"""
        host = host.lower()
        if host in self.domains:
            return port is None or port in self.local_ports
        return host in self.local_hosts and (port is None or port in self.local_ports)

    # MessageHandler -----------------------------------------------------
    def refuse_source(self, host: str) -> bool:
        return False

    def message_received(self, message: Request | Response, flow: Flow) -> None:
        if isinstance(message, Response):
            self.counters["responses"] += 1
            # Stateless for now: a response matches no transaction here.
            return
        self.counters["requests"] += 1
        self.request_received(message, flow)

    def bad_message(self, error: ParseError, flow: Flow) -> None:
        self.counters["malformed"] += 1
        message = error.message
        self.log.warn(
            "malformed message from {transport} {host}:{port}: {reason}",
            transport=flow.transport_name, host=flow.remote[0], port=flow.remote[1], reason=error.reason,
        )
        if isinstance(message, Request) and message.method != "ACK":
            try:
                response = message.make_response(error.status, error.reason, to_tag=secrets.token_hex(6))
            except ParseError:
                return  # not even Via/CSeq to answer with
            # The Via of a malformed request cannot be trusted: answer the
            # address the bytes came from (as RFC 3581 would).
            flow.send(response.serialise())

    # Requests -----------------------------------------------------------
    def request_received(self, request: Request, flow: Flow) -> None:
        if request.method == "ACK":
            return  # ACK is never answered (RFC 3261 17.2.1)
        uri = request.uri
        if uri.scheme not in ROUTABLE_SCHEMES:
            self.reply(request, flow, 416, "Unsupported URI Scheme")
            return
        host = uri.host if uri.scheme != "tel" else None
        to_self = host is not None and not uri.user and self.is_local(host, uri.port)
        if request.method == "OPTIONS" and to_self:
            # Answered as a UAS (RFC 3261 11.2); Proxy-Require does not apply.
            self.reply(request, flow, 200, "OK", [("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", SUPPORTED)])
            return
        # RFC 3261 16.3 step 3: a request we would forward needs Max-Forwards > 0.
        if request.max_forwards == 0:
            self.reply(request, flow, 483, "Too Many Hops")
            return
        # RFC 3261 16.3 step 5: Proxy-Require options we do not support.
        unsupported = self._unsupported(request)
        if unsupported:
            self.reply(request, flow, 420, "Bad Extension", [("Unsupported", ", ".join(unsupported))])
            return
        if host is not None and self.is_local(host, uri.port):
            self.reply(request, flow, 404, "Not Found")
        else:
            self.reply(request, flow, 403, "Relaying Denied")

    def _unsupported(self, request: Request) -> list[str]:
        options: list[str] = []
        for value in request.headers.get_all("Proxy-Require"):
            options.extend(o.strip() for o in value.split(",") if o.strip())
        return [o for o in options if o.lower() not in KNOWN_EXTENSIONS]

    def reply(self, request: Request, flow: Flow, status: int, reason: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer a request from the proxy itself (RFC 3261 8.2.6)."""
        response = request.make_response(status, reason, to_tag=None if status == 100 else secrets.token_hex(6))
        for name, value in headers:
            response.headers.add(name, value)
        response.headers.add("Server", "sipshield")
        self.send_response(request, response, flow)

    def send_response(self, request: Request, response: Response, flow: Flow) -> None:
        data = response.serialise()
        if flow.reliable:
            flow.send(data)
        else:
            flow.send_to(data, response_address(request, flow))
