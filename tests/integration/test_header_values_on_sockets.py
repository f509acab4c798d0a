"""max_header_values through the real service on loopback sockets: one UDP
datagram or TCP message with thousands of Route or Via values gets
``400 Too Many <Name> Values`` at once (the check itself:
tests/unit/test_header_values.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytest_twisted
from pipeline_support import invite_with as message
from test_service import _Catcher
from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientFactory, Protocol

from sipshield.config import parse_config
from sipshield.service import makeService

ROUTES = 2000  # ~50 KB: about 18 s of CPU before the cap, one datagram


def _flood(port: int, transport: str, kind: str) -> bytes:
    if kind == "Route":
        return message("Route: " + ", ".join([f"<sip:127.0.0.1:{port};lr>"] * ROUTES) + "\r\n", to_tag=";tag=t").replace(
            b"SIP/2.0/UDP 192.0.2.9:5070", f"SIP/2.0/{transport} 127.0.0.1:5070".encode())
    vias = ", ".join([f"SIP/2.0/{transport} 192.0.2.{i % 250}:5060;branch=z9hG4bK{i}" for i in range(1100)])  # ~55 KB
    return message("").replace(b"Via: SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKx", f"Via: SIP/2.0/{transport} 127.0.0.1:5070;branch=z9hG4bKv, {vias}".encode())


class _StreamClient(Protocol):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.buffer = b""
        self.first: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.first.called:
            self.first.callback(self.buffer)


@pytest.fixture
def service(tmp_path: Path):
    config = parse_config({"server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"],
                                      "domains": ["example.com"]}})
    svc = makeService(config, reactor)
    svc.privilegedStartService()
    svc.startService()
    yield svc
    pytest_twisted.blockon(svc.stopService())


@pytest.mark.parametrize("kind", ["Route", "Via"])
@pytest_twisted.inlineCallbacks
def test_udp_datagram_with_thousands_of_values_gets_400_at_once(service, kind: str):
    catcher = _Catcher()
    port = reactor.listenUDP(0, catcher, interface="127.0.0.1")
    try:
        proxy = service.addresses()["udp"]
        started = time.monotonic()
        port.write(_flood(proxy[1], "UDP", kind), proxy)
        first = yield catcher.received.addTimeout(10, reactor)
        elapsed = time.monotonic() - started
    finally:
        yield port.stopListening()
    # The first datagram back is the refusal: no 100 Trying, no challenge first.
    assert first.split(b"\r\n", 1)[0] == f"SIP/2.0 400 Too Many {kind} Values".encode()
    assert elapsed < 2.0, f"the 400 took {elapsed:.2f} s"


@pytest.mark.parametrize("kind", ["Route", "Via"])
@pytest_twisted.inlineCallbacks
def test_tcp_message_with_thousands_of_values_gets_400_at_once(service, kind: str):
    proxy = service.addresses()["tcp"]
    client = _StreamClient(_flood(proxy[1], "TCP", kind))
    factory = ClientFactory.forProtocol(lambda: client)
    started = time.monotonic()
    connector = reactor.connectTCP(proxy[0], proxy[1], factory)
    try:
        first = yield client.first.addTimeout(10, reactor)
        elapsed = time.monotonic() - started
    finally:
        connector.disconnect()
    assert first.split(b"\r\n", 1)[0] == f"SIP/2.0 400 Too Many {kind} Values".encode()
    assert elapsed < 2.0, f"the 400 took {elapsed:.2f} s"
