"""SIP over TCP and TLS (RFC 3261 18.3): framing, keep-alives and limits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from sipshield._ratelog import ThrottledLog
from sipshield.message import KEEPALIVE, FramingError, ParseError, StreamFramer, parse_message

if TYPE_CHECKING:
    from sipshield.config import LimitsConfig
    from sipshield.transport._listen import MessageHandler

_CRLF = b"\r\n"


class SIPStreamProtocol(Protocol, TimeoutMixin):
    """One TCP or TLS connection; it is also the connection's flow."""

    log = Logger()
    reliable = True
    factory: SIPStreamFactory

    def __init__(self, factory: SIPStreamFactory, remote: tuple[str, int]) -> None:
        self.factory = factory
        self.transport_name = factory.transport_name
        self.secure = factory.transport_name == "TLS"
        self.remote = remote
        self.local: tuple[str, int] = ("", 0)
        self.framer = StreamFramer(factory.limits.max_message_bytes, factory.limits.max_headers)
        self.callLater = factory.reactor.callLater  # type: ignore[method-assign,assignment]  # TimeoutMixin's clock
        self._closing = False
        self._pending: list[bytes] | None = None

    # Flow ---------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self._closing:
            return
        if self.transport is not None:
            self.transport.write(data)
        else:
            # An outbound connection still being set up: queue until connectionMade.
            if self._pending is None:
                self._pending = []
            self._pending.append(data)

    def peer_certificate(self) -> Any:
        if not self.secure or self.transport is None:
            return None
        get = getattr(self.transport, "getPeerCertificate", None)
        return get() if get is not None else None

    # Protocol -----------------------------------------------------------
    def connectionMade(self) -> None:
        host = self.transport.getHost()  # type: ignore[union-attr]
        self.local = (host.host, host.port)  # type: ignore[union-attr]
        refusal = self.factory.connection_opened(self)
        if refusal is not None:
            self.factory.remote_log.warn("connection refused", self.remote[0], "closing {transport} connection from {host}:{port}: {reason}",
                                         transport=self.transport_name, host=self.remote[0], port=self.remote[1], reason=refusal)
            self._closing = True
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.setTimeout(self.factory.limits.idle_timeout)
        if self._pending:
            pending, self._pending = self._pending, None
            self.transport.writeSequence(pending)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self._closing = True
        self.setTimeout(None)
        self.factory.connection_closed(self)

    def timeoutConnection(self) -> None:
        self.log.info("closing idle {transport} connection from {host}:{port}", transport=self.transport_name, host=self.remote[0], port=self.remote[1])
        self.close()

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        framer = self.framer
        handler = self.factory.handler
        framer.feed(data)
        while not self._closing:
            try:
                event = framer.next_event()
            except FramingError as e:
                handler.bad_message(e, self)
                self.factory.remote_log.warn("framing error", self.remote[0], "closing {transport} connection from {host}:{port}: {reason}",
                                             transport=self.transport_name, host=self.remote[0], port=self.remote[1], reason=e.reason)
                self.close()
                return
            if event is None:
                return
            if event is KEEPALIVE:
                # RFC 5626 3.5.1: a double-CRLF ping is answered with a single CRLF pong.
                self.transport.write(_CRLF)  # type: ignore[union-attr]
                continue
            try:
                message = parse_message(event, datagram=False)  # type: ignore[arg-type]
            except ParseError as e:
                handler.bad_message(e, self)
                continue
            handler.message_received(message, self)

    def __repr__(self) -> str:
        return f"<{self.transport_name} connection {self.remote[0]}:{self.remote[1]}>"


class SIPStreamFactory(Factory):
    """Accepts TCP or TLS connections and keeps the connection table.

    Limits: connections per source address and in all; beyond either the new
    connection is closed at once and the reason logged.
    """

    log = Logger()
    noisy = False

    def __init__(self, handler: MessageHandler, limits: LimitsConfig, reactor: IReactorTime, transport_name: str) -> None:
        self.handler = handler
        self.limits = limits
        self.reactor = reactor
        self.transport_name = transport_name
        self.connections: dict[tuple[str, int], SIPStreamProtocol] = {}
        self.remote_log = ThrottledLog(self.log, reactor)
        self._per_source: dict[str, int] = {}

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol | None:  # type: ignore[override]
        if self.handler.refuse_source(addr.host):
            return None
        return SIPStreamProtocol(self, (addr.host, addr.port))

    def connection_opened(self, proto: SIPStreamProtocol) -> str | None:
        """Register a connection; return a reason to refuse it, or None."""
        host = proto.remote[0]
        if len(self.connections) >= self.limits.max_connections:
            return f"too many connections ({self.limits.max_connections})"
        count = self._per_source.get(host, 0)
        if count >= self.limits.max_connections_per_source:
            return f"too many connections from {host} ({self.limits.max_connections_per_source})"
        self._per_source[host] = count + 1
        self.connections[proto.remote] = proto
        return None

    def connection_closed(self, proto: SIPStreamProtocol) -> None:
        if self.connections.get(proto.remote) is not proto:
            return
        del self.connections[proto.remote]
        host = proto.remote[0]
        left = self._per_source.get(host, 1) - 1
        if left > 0:
            self._per_source[host] = left
        else:
            self._per_source.pop(host, None)
