"""Connection-level DoS on real loopback TCP connections (issue 7).

Slowloris: bytes that trickle in without completing a message do not keep
the connection open past ``idle_timeout`` from the message's first byte (the
socket is real; time is a task.Clock, so the test never waits for it).
A nearly full connection table closes the oldest idle connection that has
carried no authenticated request, never one whose request passed the real
service's auth stage."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from pipeline_support import RecordingHandler, options
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import globalLogPublisher

from sipshield.config import LimitsConfig, ListenerConfig, parse_config
from sipshield.service import makeService
from sipshield.transport import SIPListener


class _ClockedReactor:
    """The real reactor for sockets, a Clock for time."""

    def __init__(self, clock: task.Clock) -> None:
        self._clock = clock

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self._clock.callLater(*args, **kwargs)

    def seconds(self) -> float:
        return self._clock.seconds()

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


class _Client(Protocol):
    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class _ClientFactory(ClientFactory):
    """Connects one _Client.  A server that aborts a refused connection at
    once can reset it before connect() completes (on loopback the RST often
    wins): Twisted then reports clientConnectionFailed and never builds the
    protocol, so that ends the client as well, or a wait on ``lost`` would
    time out although the server did refuse the connection."""

    def __init__(self, client: _Client) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> _Client:
        self.client.factory = self
        return self.client

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.client.lost.called:
            self.client.lost.callback(None)


@defer.inlineCallbacks
def _until(condition: Any) -> Any:
    """Let the real reactor run until *condition()* holds (bytes crossed the socket)."""
    for _ in range(500):
        if condition():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not reached within 5 s")


@pytest_twisted.inlineCallbacks
def test_trickling_tcp_client_is_closed_idle_timeout_after_its_first_byte():
    clock = task.Clock()
    listener = SIPListener(ListenerConfig("tcp", 0, "127.0.0.1"), RecordingHandler(), LimitsConfig(idle_timeout=30), _ClockedReactor(clock))
    listener.startService()
    client = _Client()
    try:
        host, port = listener.address
        reactor.connectTCP(host, port, ClientFactory.forProtocol(lambda: client))
        yield _until(lambda: client.transport is not None and bool(listener.factory.connections))
        (server,) = listener.factory.connections.values()
        data = options()
        for n in range(5):
            client.transport.write(data[n : n + 1])
            yield _until(lambda n=n: server.framer.buffered == n + 1)
            clock.advance(5.9)  # 29.5 s after the first byte
        assert not client.lost.called
        clock.advance(0.6)
        yield client.lost.addTimeout(5, reactor)
        assert listener.factory.connections == {}
    finally:
        if client.transport is not None:
            client.transport.loseConnection()
        yield listener.stopService()


def _trusted_tcp_service(tmp_path: Any, max_connections: int) -> Any:
    config = parse_config({
        "server": {"data_dir": str(tmp_path / "data"), "listen": ["tcp:0:interface=127.0.0.1"], "domains": ["example.com"]},
        "auth": {"trusted_sources": ["127.0.0.2/32"]},  # passes the auth stage (over TCP)
        "limits": {"max_connections": max_connections},
    })
    service = makeService(config, reactor)
    service.privilegedStartService()
    service.startService()
    return service


def _opener(service: Any, clients: list[_Client]) -> Any:
    host, port = service.addresses()["tcp"]

    def open_from(source: str) -> _Client:
        client = _Client()
        clients.append(client)
        reactor.connectTCP(host, port, _ClientFactory(client), bindAddress=(source, 0))
        return client

    return open_from


@defer.inlineCallbacks
def _close_all(service: Any, clients: list[_Client]) -> Any:
    for client in clients:
        if client.transport is not None:
            client.transport.loseConnection()
    yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_full_table_closes_the_oldest_idle_unauthenticated_connection_not_the_authenticated_one(tmp_path):
    service = _trusted_tcp_service(tmp_path, 3)
    clients: list[_Client] = []
    try:
        factory = service.listeners[0].factory
        open_from = _opener(service, clients)
        trusted = open_from("127.0.0.2")  # the oldest connection, and authenticated
        yield _until(lambda: trusted.transport is not None and len(factory.connections) == 1)
        trusted.transport.write(options("auth-1"))
        yield _until(lambda: b"SIP/2.0 200" in trusted.received)
        idle = [open_from("127.0.0.1") for _ in range(2)]
        yield _until(lambda: len(factory.connections) == 3)
        newcomer = open_from("127.0.0.1")
        yield idle[0].lost.addTimeout(5, reactor)  # the oldest unauthenticated one made room
        yield _until(lambda: newcomer.transport is not None and len(factory.connections) == 3)
        assert not trusted.lost.called and not idle[1].lost.called and not newcomer.lost.called
        trusted.received = b""
        trusted.transport.write(options("auth-2"))
        yield _until(lambda: b"SIP/2.0 200" in trusted.received)
    finally:
        yield _close_all(service, clients)


@pytest_twisted.inlineCallbacks
def test_global_cap_refuses_a_new_connection_when_every_one_is_authenticated(tmp_path):
    """``max_connections`` holds when nothing can be evicted: with the table
    full of connections whose requests passed the real auth stage, a new
    connection is closed at once and the others stay."""
    service = _trusted_tcp_service(tmp_path, 3)
    clients: list[_Client] = []
    try:
        factory = service.listeners[0].factory
        open_from = _opener(service, clients)
        for n in range(3):
            client = open_from("127.0.0.2")
            yield _until(lambda c=client, n=n: c.transport is not None and len(factory.connections) == n + 1)
            client.transport.write(options(f"cap-{n}"))
            yield _until(lambda c=client: b"SIP/2.0 200" in c.received)
        refusals: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_kind") == "connection refused":
                refusals.append(event["reason"])

        globalLogPublisher.addObserver(observe)
        try:
            newcomer = open_from("127.0.0.2")
            yield newcomer.lost.addTimeout(5, reactor)
            # The server refused it, for the global cap (it reached the server: not a failure of our own)...
            yield _until(lambda: bool(refusals))
        finally:
            globalLogPublisher.removeObserver(observe)
        assert refusals == ["too many connections (3)"]
        assert newcomer.received == b""
        # ...and kept the three it had.
        assert len(factory.connections) == 3 and not any(c.lost.called for c in clients[:3])
    finally:
        yield _close_all(service, clients)
