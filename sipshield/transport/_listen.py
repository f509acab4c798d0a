"""Listening sockets as services, one per configured listener."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from sipshield.transport._stream import SIPStreamFactory
from sipshield.transport._udp import ReceiveDelay, ReceiveQueue, SIPDatagramProtocol

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
        self.inherited: tuple[int, int | None] | None = None
        """In a worker process (``[server] workers`` > 1, sipshield/workers.py): the
        file descriptors of the SO_REUSEPORT socket its supervisor bound for it and,
        for UDP, of the worker's own port; adopted instead of listening."""
        self._queues: list[ReceiveQueue] = []
        self._delays: list[ReceiveDelay] = []
        self.own_port: Any = None
        """A worker's own UDP port (None otherwise): what it sends from and puts in
        its Via and Record-Route, so that what answers them comes back to it."""
        self.setName(config.description)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was configured."""
        host = self.port.getHost()
        return host.host, host.port

    def receive_queue(self) -> float | None:
        """A UDP listener's fullest receive buffer (a worker has two sockets), 0 to 1 (see ReceiveQueue); None when unknown or not UDP."""
        return max((share for share in (queue.share() for queue in self._queues) if share is not None), default=None)

    def receive_delay(self) -> float | None:
        """How long the datagram read first since the last call waited in the kernel's
        buffer, the longer of a worker's two sockets (see ReceiveDelay); None when none was read or not UDP."""
        return max((delay for delay in (probe.take() for probe in self._delays) if delay is not None), default=None)

    @property
    def own_address(self) -> tuple[str, int]:
        """The (host, port) for Via and Record-Route: a worker's own UDP port, else :attr:`address`."""
        if self.own_port is None:
            return self.address
        host = self.own_port.getHost()
        return host.host, host.port

    @property
    def sending_port(self) -> Any:
        """The UDP port requests are sent from (the worker's own one when it has one)."""
        return self.own_port if self.own_port is not None else self.port

    def listen(self) -> None:
        if self.inherited is not None:
            self._adopt(*self.inherited)
            return
        cfg = self.config
        try:
            if cfg.kind == "udp":
                self.port = self.reactor.listenUDP(cfg.port, self._datagram_protocol(), interface=cfg.interface, maxPacketSize=65535)
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

    def _adopt(self, fd: int, own: int | None) -> None:
        """A worker's listener: the sockets its supervisor bound (SO_REUSEPORT,
        so the kernel spreads datagrams by their 4-tuple and connections as
        they come between the workers) are adopted, not opened."""
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.interface else socket.AF_INET
        for inherited in (fd, own):
            if inherited is not None:
                os.set_blocking(inherited, False)
        if cfg.kind == "udp":
            self.port = self.reactor.adoptDatagramPort(fd, family, self._datagram_protocol(), maxPacketSize=65535)
            self._size_udp_buffers()
            if own is not None:
                proto = self._datagram_protocol()
                self.own_port = self.reactor.adoptDatagramPort(own, family, proto, maxPacketSize=65535)
                # An alias of the listener: what arrives there is seen as arriving at the
                # listener (ACL rules by port, Warning headers), only Via and Record-Route differ.
                proto.local = self.address
                self._size_udp_buffers(self.own_port)
        else:
            factory = self.factory = SIPStreamFactory(self.handler, self.limits, self.reactor, cfg.kind.upper(), self.events)
            if cfg.kind == "tls":
                if self.tls_context is None:
                    raise ListenerError(f"cannot listen on {cfg.description}: no TLS certificate loaded")
                self.port = self.reactor.adoptStreamPort(fd, family, RefusingTLSFactory(self.tls_context, False, factory))
            else:
                self.port = self.reactor.adoptStreamPort(fd, family, factory)
        for inherited in (fd, own):
            if inherited is not None:
                os.close(inherited)  # the ports hold their own duplicates
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        self.log.info("sipshield listening on {kind} {where}", kind=cfg.kind, where=f"{shown}:{port}", listener=cfg.kind, host=host, port=port)
        if self.own_port is not None:
            own_host, own_port = self.own_address
            self.log.info("worker's own UDP port {where} (its Via and Record-Route)", where=f"{shown}:{own_port}", host=own_host, port=own_port)

    def _datagram_protocol(self) -> SIPDatagramProtocol:
        return SIPDatagramProtocol(self.handler, self.limits.max_message_bytes, self.limits.max_headers)

    def _size_udp_buffers(self, port: Any = None) -> None:
        """A burst of datagrams must not overflow the default ~200 KB socket
        buffer while the reactor is busy; the kernel caps the size at
        net.core.rmem_max / wmem_max."""
        port = port or self.port
        sock = getattr(port, "socket", None)
        if sock is None:
            return
        protocol = getattr(port, "protocol", None)
        if isinstance(protocol, SIPDatagramProtocol):
            protocol.delay = ReceiveDelay(sock)
            self._delays.append(protocol.delay)
        wanted = self.limits.udp_buffer_bytes
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, wanted)
        except OSError as e:
            self.log.warn("cannot size UDP buffers on {listener}: {why}", listener=self.config.description, why=e.strerror)
            return
        self._queues.append(ReceiveQueue(sock))
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
        own, self.own_port = self.own_port, None
        self._queues, self._delays = [], []
        if own is not None:
            own.stopListening()
        if self.factory is not None:
            for proto in list(self.factory.connections.values()):
                if proto.transport is not None:
                    proto.transport.abortConnection()  # type: ignore[attr-defined]
        if port is not None:
            return port.stopListening()
        return None
