"""Listening sockets as services, one per configured listener."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from sipshield.transport._stream import SIPStreamFactory
from sipshield.transport._udp import SIPDatagramProtocol

if TYPE_CHECKING:
    from sipshield.config import LimitsConfig, ListenerConfig
    from sipshield.events import SecurityEvents
    from sipshield.message import ParseError, Request, Response
    from sipshield.transport._flow import Flow
    from sipshield.transport._tls import ServerTLSContext


class MessageHandler(Protocol):
    """What the transports hand their messages to (the server's controller).

    Like twisted.names' ``DNSServerFactory``, one controller sits behind every
    protocol instance; the transports only frame and parse.
    """

    def refuse_source(self, host: str) -> bool:
        """True when bytes from ``host`` must be dropped before parsing (bans)."""

    def message_received(self, message: Request | Response, flow: Flow) -> None:
        """A well-formed message arrived on ``flow``."""

    def bad_message(self, error: ParseError, flow: Flow) -> None:
        """A message could not be parsed or framed; answer it if it can be."""


class RefusingTLSFactory(TLSMemoryBIOFactory):
    """TLS over a SIPStreamFactory that refuses a source (a ban) at accept,
    before any handshake: the connection is closed as a refused TCP one is."""

    def buildProtocol(self, addr: Any) -> Any:
        wrapped: SIPStreamFactory = self.wrappedFactory
        if wrapped.handler.refuse_source(addr.host):
            return None
        return super().buildProtocol(addr)


class ListenerError(Exception):
    """A listener could not be opened (port in use, address not local...)."""


class SIPListener(Service):
    """Opens one UDP, TCP or TLS listening port and logs where it listens."""

    log = Logger()

    def __init__(
        self, config: ListenerConfig, handler: MessageHandler, limits: LimitsConfig, reactor: Any, tls_context: ServerTLSContext | None = None,
        events: SecurityEvents | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.limits = limits
        self.reactor = reactor
        self.tls_context = tls_context
        self.events = events
        """The security event sink its stream factory reports to (failed TLS handshakes)."""
        self.port: Any = None
        self.factory: SIPStreamFactory | None = None
        self.setName(config.description)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was configured."""
        host = self.port.getHost()
        return host.host, host.port

    def listen(self) -> None:
        cfg = self.config
        try:
            if cfg.kind == "udp":
                proto = SIPDatagramProtocol(self.handler, self.limits.max_message_bytes, self.limits.max_headers)
                self.port = self.reactor.listenUDP(cfg.port, proto, interface=cfg.interface, maxPacketSize=65535)
                self._size_udp_buffers()
            else:
                self.factory = SIPStreamFactory(self.handler, self.limits, self.reactor, cfg.kind.upper(), self.events)
                if cfg.kind == "tcp":
                    self.port = self.reactor.listenTCP(cfg.port, self.factory, interface=cfg.interface, backlog=128)
                else:
                    if self.tls_context is None:
                        raise ListenerError(f"cannot listen on {cfg.description}: no TLS certificate loaded")
                    # listenSSL's own TLS wrapper would wrap the None of a refused
                    # source and handshake with it: refuse before the handshake.
                    tls = RefusingTLSFactory(self.tls_context, False, self.factory)
                    self.port = self.reactor.listenTCP(cfg.port, tls, interface=cfg.interface, backlog=128)
        except CannotListenError as e:
            raise ListenerError(f"cannot listen on {cfg.description}: {e.socketError}") from None
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        self.log.info("sipshield listening on {kind} {where}", kind=cfg.kind, where=f"{shown}:{port}", listener=cfg.kind, host=host, port=port)

    def _size_udp_buffers(self) -> None:
        """A burst of datagrams must not overflow the default ~200 KB socket
        buffer while the reactor is busy; the kernel caps the size at
        net.core.rmem_max / wmem_max."""
        sock = getattr(self.port, "socket", None)
        if sock is None:
            return
        wanted = self.limits.udp_buffer_bytes
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wanted)
        except OSError as e:
            self.log.warn("cannot size UDP buffers on {listener}: {why}", listener=self.config.description, why=e.strerror)
            return
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if got < wanted:
            self.log.info("UDP receive buffer on {listener} is {got} bytes (kernel limit net.core.rmem_max)", listener=self.config.description, got=got)

    def privilegedStartService(self) -> None:
        # Bind early so a port below 1024 can be opened before twistd drops privileges.
        self.listen()
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self.listen()
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if self.factory is not None:
            for proto in list(self.factory.connections.values()):
                if proto.transport is not None:
                    proto.transport.abortConnection()  # type: ignore[attr-defined]
        if port is not None:
            return port.stopListening()
        return None
