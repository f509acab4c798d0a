"""Slowloris on a real loopback TCP connection: bytes that trickle in
without completing a message do not keep the connection open past
``idle_timeout`` from the message's first byte (issue 7).  The socket is
real; time is a task.Clock, so the test never waits for the timeout."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from test_transport import RecordingHandler, options
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ClientFactory, Protocol

from sipshield.config import LimitsConfig, ListenerConfig
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

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


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
