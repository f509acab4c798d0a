"""HTTP listeners of the operations services (the admin API, the metrics), and the admin API's HTTPS one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import IResource
from twisted.web.server import Site

__all__ = ["listen_http"]

_log = Logger(namespace="sipshield.ops")


class _TLSSiteFactory(TLSMemoryBIOFactory):
    """TLS over a Site whose ``buildProtocol`` may refuse (None: a connection
    cap): refused before any handshake, rather than a handshake wrapped
    around nothing (TLSMemoryBIOFactory would wrap the None)."""

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        return None if wrapped is None else self.protocol(self, wrapped)


def listen_http(reactor: Any, host: str, port: int, serve: Callable[[], Site | IResource], what: str, path: str, *, tls: Any = None) -> IListeningPort | None:
    """Serve what *serve* makes (a Site, or a resource to make one of; made
    only when there is a socket to serve it on) on ``host:port``; over TLS
    (HTTPS) with *tls*, an IOpenSSLServerConnectionCreator (a ServerTLSContext).

    A port that cannot be bound is logged and None returned: these services
    are for the operator, and a busy port must not stop the proxy.  A reactor
    without TCP (a task.Clock in tests) gets no socket.  The address bound is
    logged as ``WHAT listening on http://HOST:PORTPATH``.
    """
    if not IReactorTCP.providedBy(reactor):
        return None
    site = serve()
    if not isinstance(site, Site):
        site = Site(site)
    site.displayTracebacks = False
    site.noisy = False
    factory: Any = site if tls is None else _TLSSiteFactory(tls, False, site)
    try:
        listening: IListeningPort = reactor.listenTCP(port, factory, interface=host)
    except CannotListenError as e:
        _log.error("{what}: cannot listen on {host}:{port}: {why}; running without it", what=what, host=host, port=port, why=e.socketError)
        return None
    address = listening.getHost()
    shown = f"[{address.host}]" if ":" in address.host else address.host  # type: ignore[attr-defined]
    scheme = "http" if tls is None else "https"
    _log.info("{what} listening on {scheme}://{host}:{port}{path}", what=what, scheme=scheme, host=shown, port=address.port, path=path)  # type: ignore[attr-defined]
    return listening
