"""Sending requests out: pick the listener, reuse or open the connection
(RFC 3261 18.1.1, RFC 5923-style connection reuse)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import ssl
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger

from sipshield._ratelog import ThrottledLog
from sipshield.message import ip_version
from sipshield.transport._flow import DatagramFlow, unusable_destination
from sipshield.transport._stream import SIPStreamProtocol

if TYPE_CHECKING:
    from sipshield.transport._flow import Flow
    from sipshield.transport._listen import SIPListener
    from sipshield.transport._stream import SIPStreamFactory

__all__ = ["TransportDispatcher"]

Destination = tuple[str, str, int]


def _family(host: str) -> int:
    return ip_version(host.strip("[]")) or 4


class _Outbound(ClientFactory):
    """Builds the SIPStreamProtocol of an outbound connection; the protocol
    exists (and queues writes) before the connection is made."""

    noisy = False

    def __init__(self, proto: SIPStreamProtocol, remote_log: ThrottledLog) -> None:
        self.proto = proto
        self.remote_log = remote_log

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol:  # type: ignore[override]
        return self.proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        # The host comes from remote input (a Contact, a Route): within the
        # remote-input budgets, one line per host and interval.
        host, port = self.proto.remote
        self.remote_log.warn("connect-failed", host, "cannot connect to {transport} {host}:{port}: {why}",
                             transport=self.proto.transport_name, host=host, port=port, why=reason.getErrorMessage())
        self.proto._closing = True


class TransportDispatcher:
    """The Sender the transaction layer uses: ``send(data, destination, flow)``."""

    log = Logger()

    def __init__(self, reactor: Any, advertise: str | None = None) -> None:
        self.reactor = reactor
        self.advertise = advertise
        self.remote_log = ThrottledLog(self.log, reactor)
        """Lines caused by remote input (a failed outbound connection) go through this."""
        self.listeners: list[SIPListener] = []
        self._client_tls: ssl.CertificateOptions | None = None

    def add_listener(self, listener: SIPListener) -> None:
        self.listeners.append(listener)

    def listener_for(self, transport: str, host: str) -> SIPListener | None:
        """The bound listener of that transport and address family.

        A TCP/TLS connection is a new socket, so a listener of the other
        family can stand in; a UDP socket sends only to its own family, so
        an IPv6 next hop on an IPv4-only proxy has no UDP listener (the
        branch then fails as a transport error, RFC 3261 16.9)."""
        kind = transport.lower()
        family = _family(host)
        fallback = None
        for listener in self.listeners:
            if listener.config.kind != kind or listener.port is None:
                continue
            if _family(listener.config.interface) == family:
                return listener
            fallback = fallback or listener
        return fallback if kind != "udp" else None

    def local_address(self, transport: str, host: str) -> tuple[str, int] | None:
        """The (host, port) to put in Via and Record-Route for that transport."""
        listener = self.listener_for(transport, host)
        if listener is None:
            return None
        bound, port = listener.own_address
        return self.advertised(bound), port

    def reached_at(self, flow: Flow) -> tuple[str, int]:
        """The (host, port) for the Record-Route value of the side *flow*
        arrived on: its local address, or for UDP in a worker process that
        worker's own port (``[server] workers``), so that the dialog's next
        requests come back to the worker that record-routed it."""
        host, port = flow.local
        if flow.transport_name == "UDP":
            for listener in self.listeners:
                if listener.own_port is not None and listener.port is not None and listener.address == (host, port):
                    host, port = listener.own_address
                    break
        return self.advertised(host), port

    def advertised(self, host: str) -> str:
        """A wildcard-bound address cannot go in a Via or Record-Route: use
        the configured public name instead."""
        if host in ("0.0.0.0", "::") and self.advertise:
            return self.advertise
        return host

    def send(self, data: bytes, destination: Destination, flow: Flow | None = None) -> Flow | None:
        """Send ``data``; returns the flow used, or None when nothing can carry it."""
        if flow is not None and not getattr(flow, "_closing", False):
            flow.send(data)
            return flow
        transport, host, port = destination
        host = host.strip("[]")
        listener = self.listener_for(transport, host)
        if listener is None or unusable_destination(host, port) is not None:
            # Not even a connection attempt to port 0, a broadcast or multicast address.
            return None
        if transport == "UDP":
            udp = DatagramFlow(listener.sending_port, listener.address, (host, port))
            return udp if udp.write(data, udp.remote) else None
        factory = listener.factory
        if factory is None:
            return None
        existing = factory.connections.get((host, port))
        if existing is not None and not existing._closing:
            existing.send(data)
            return existing
        return self._connect(factory, transport, host, port, data)

    def _connect(self, factory: SIPStreamFactory, transport: str, host: str, port: int, data: bytes) -> Flow:
        proto = SIPStreamProtocol(factory, (host, port))
        proto.send(data)
        outbound = _Outbound(proto, self.remote_log)
        if transport == "TLS":
            self.reactor.connectSSL(host, port, outbound, self._tls_options(host), timeout=10)
        else:
            self.reactor.connectTCP(host, port, outbound, timeout=10)
        return proto

    def _tls_options(self, host: str) -> Any:
        # Outbound TLS verifies the peer against the platform's trust roots
        # and the peer's name (RFC 5922); a failure closes the connection.
        return ssl.optionsForClientTLS(host)
