"""SIP over TCP and TLS (RFC 3261 18.3): framing, keep-alives and limits."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from sipshield._ratelog import ThrottledLog
from sipshield.events import TLS_HANDSHAKE_FAILURE, SecurityEvent, printable
from sipshield.message import KEEPALIVE, FramingError, ParseError, StreamFramer, parse_message

if TYPE_CHECKING:
    from sipshield.config import LimitsConfig
    from sipshield.events import SecurityEvents
    from sipshield.transport._listen import MessageHandler

_CRLF = b"\r\n"


def handshake_failure_reason(error: BaseException) -> str:
    """OpenSSL's reason for a failed handshake, short (``no shared cipher``,
    ``certificate verify failed``, ``http request``...): the reason of each
    entry of pyOpenSSL's error queue, once each; the error's text when the
    queue is empty."""
    args = getattr(error, "args", ())
    queue = args[0] if args and isinstance(args[0], list) else []
    reasons = [str(entry[2]) for entry in queue if isinstance(entry, tuple) and len(entry) == 3 and entry[2]]
    return printable(", ".join(dict.fromkeys(reasons)) or str(error) or type(error).__name__, 128)


def _sni(transport: Any) -> str | None:
    """The server name the client sent in its ClientHello, if OpenSSL read one."""
    get = getattr(transport, "getHandle", None)
    connection = get() if get is not None else None
    if not isinstance(connection, SSL.Connection):
        return None
    name = connection.get_servername()
    return None if not name else printable(name.decode("ascii", "replace"), 253)


@implementer(IHandshakeListener)
class SIPStreamProtocol(Protocol, TimeoutMixin):
    """One TCP or TLS connection; it is also the connection's flow."""

    log = Logger()
    reliable = True
    factory: SIPStreamFactory

    def __init__(self, factory: SIPStreamFactory, remote: tuple[str, int], inbound: bool = False) -> None:
        self.factory = factory
        self.inbound = inbound
        """Accepted from a peer (not opened by the dispatcher): only these are
        evicted when the connection table is nearly full."""
        self.authenticated = False
        """Set by the auth stage once a request on this connection passed
        authentication (see Flow.authenticated); read by the factory."""
        self.transport_name = factory.transport_name
        self.secure = factory.transport_name == "TLS"
        self.remote = remote
        self.local: tuple[str, int] = ("", 0)
        self.framer = StreamFramer(factory.limits.max_message_bytes, factory.limits.max_headers)
        self.callLater = factory.reactor.callLater  # type: ignore[method-assign,assignment]  # TimeoutMixin's clock
        self._closing = False
        self._pending: list[bytes] | None = None
        self._handshaken = False
        self._deadline: Any = None
        """Message-completion deadline (slowloris): set at the first byte of
        a message, not moved by more partial bytes, cancelled once no partial
        message is left; while it runs the idle timer is off."""

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

    def handshakeCompleted(self) -> None:
        """The TLS handshake succeeded (IHandshakeListener); counted for the metrics."""
        self._handshaken = True
        self.factory.tls_handshakes += 1

    def connectionLost(self, reason: Any = None) -> None:
        if self.secure and not self._handshaken and reason is not None and reason.check(SSL.Error):
            self._handshake_failed(reason.value)
        self._closing = True
        self.setTimeout(None)
        self._cancel_deadline()
        self.factory.connection_closed(self)

    def _handshake_failed(self, error: BaseException) -> None:
        """Counted for the metrics; on an inbound connection, a
        ``tls-handshake-failure`` event too (an outbound one is this proxy's
        own connection to a next hop, not something a source did)."""
        factory = self.factory
        factory.tls_handshake_failures += 1
        if self.inbound and factory.events is not None:
            factory.events.emit(SecurityEvent(TLS_HANDSHAKE_FAILURE, self.remote[0], self.transport_name, None, handshake_failure_reason(error),
                                              port=self.remote[1], sni=_sni(self.transport)))

    def timeoutConnection(self) -> None:
        self.log.info("closing idle {transport} connection from {host}:{port}", transport=self.transport_name, host=self.remote[0], port=self.remote[1])
        self.close()

    def _message_incomplete(self) -> None:
        self._deadline = None
        self.factory.remote_log.warn("incomplete message", self.remote[0],
                                     "closing {transport} connection from {host}:{port}: no complete message within {timeout} s",
                                     transport=self.transport_name, host=self.remote[0], port=self.remote[1], timeout=self.factory.limits.idle_timeout)
        self.close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _track_progress(self, completed: bool) -> None:
        """Idle timer while no message is under way; otherwise the message
        deadline, which only a completed message moves (to the next one,
        whose first bytes came with it)."""
        if self._closing:
            return
        timeout = self.factory.limits.idle_timeout
        if not self.framer.buffered:
            self._cancel_deadline()
            self.setTimeout(timeout)
        elif self._deadline is None:
            self.setTimeout(None)
            self._deadline = self.callLater(timeout, self._message_incomplete)
        elif completed:
            self._deadline.reset(timeout)
        if completed:
            self.factory.connection_active(self)

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        framer = self.framer
        handler = self.factory.handler
        framer.feed(data)
        completed = False
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
                self._track_progress(completed)
                return
            completed = True
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
    connection is closed at once and the reason logged.  Once the table is
    within 10% of ``max_connections``, each new connection first closes the
    inbound connection that has carried no authenticated request and has
    been quiet longest (no complete message since), so a flood of idle or
    trickling connections cannot lock new clients out.
    """

    log = Logger()
    noisy = False

    def __init__(
        self, handler: MessageHandler, limits: LimitsConfig, reactor: IReactorTime, transport_name: str, events: SecurityEvents | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.reactor = reactor
        self.transport_name = transport_name
        self.events = events
        """Where a failed TLS handshake on an inbound connection is reported (the service's event bus), or nowhere."""
        self.connections: dict[tuple[str, int], SIPStreamProtocol] = {}
        self.remote_log = ThrottledLog(self.log, reactor)
        self.tls_handshakes = 0
        self.tls_handshake_failures = 0
        """TLS handshakes completed and failed on this factory's connections (read by the metrics)."""
        self._per_source: dict[str, int] = {}
        # Inbound connections not (yet) authenticated, least recently active
        # first: the eviction candidates, found in O(1).
        self._unauthenticated: OrderedDict[SIPStreamProtocol, None] = OrderedDict()

    def buildProtocol(self, addr: Any) -> SIPStreamProtocol | None:  # type: ignore[override]
        if self.handler.refuse_source(addr.host):
            return None
        return SIPStreamProtocol(self, (addr.host, addr.port), inbound=True)

    def connection_opened(self, proto: SIPStreamProtocol) -> str | None:
        """Register a connection; return a reason to refuse it, or None."""
        host = proto.remote[0]
        count = self._per_source.get(host, 0)
        if count >= self.limits.max_connections_per_source:
            return f"too many connections from {host} ({self.limits.max_connections_per_source})"
        cap = self.limits.max_connections
        if len(self.connections) >= cap - cap // 10:
            victim = self._oldest_unauthenticated()
            if victim is not None:
                self._evict(victim)
            elif len(self.connections) >= cap:
                return f"too many connections ({cap})"
        self._per_source[host] = count + 1
        self.connections[proto.remote] = proto
        if proto.inbound:
            self._unauthenticated[proto] = None
        return None

    def connection_active(self, proto: SIPStreamProtocol) -> None:
        """A message (or keep-alive) completed on *proto*: it is the most
        recently active now, or no candidate at all once authenticated."""
        if proto not in self._unauthenticated:
            return
        if proto.authenticated:
            del self._unauthenticated[proto]
        else:
            self._unauthenticated.move_to_end(proto)

    def _oldest_unauthenticated(self) -> SIPStreamProtocol | None:
        candidates = self._unauthenticated
        while candidates:
            proto = next(iter(candidates))
            if not proto.authenticated:
                return proto
            del candidates[proto]  # authenticated since its last message
        return None

    def _evict(self, proto: SIPStreamProtocol) -> None:
        self.remote_log.warn("connection evicted", proto.remote[0],
                             "closing {transport} connection from {host}:{port}: connection table nearly full, oldest idle unauthenticated",
                             transport=self.transport_name, host=proto.remote[0], port=proto.remote[1])
        self._abort(proto)

    def _abort(self, proto: SIPStreamProtocol) -> None:
        # Out of the table now, so a new connection can take its place;
        # its connectionLost then finds nothing to remove.
        self.connection_closed(proto)
        proto._closing = True
        if proto.transport is not None:
            proto.transport.abortConnection()  # type: ignore[attr-defined]

    def close_refused(self) -> int:
        """Close every inbound connection whose source the handler now
        refuses (a ban just made), as a new one from it would be; how many."""
        refused = [p for p in self.connections.values() if p.inbound and self.handler.refuse_source(p.remote[0])]
        for proto in refused:
            self._abort(proto)
        return len(refused)

    def connection_closed(self, proto: SIPStreamProtocol) -> None:
        self._unauthenticated.pop(proto, None)
        if self.connections.get(proto.remote) is not proto:
            return
        del self.connections[proto.remote]
        host = proto.remote[0]
        left = self._per_source.get(host, 1) - 1
        if left > 0:
            self._per_source[host] = left
        else:
            self._per_source.pop(host, None)
