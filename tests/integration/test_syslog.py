"""[logging.syslog] of a real service to real receivers on loopback: a
Twisted UDP server, a Twisted TCP server (RFC 6587 octet counting) and a
unix datagram socket; each message must parse as RFC 5424, and a security
event the service emits must arrive with its fields."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from syslog_support import parse_syslog
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from sipshield.config import parse_config
from sipshield.events import AUTH_FAILURE, SecurityEvent
from sipshield.service import makeService


class _Messages:
    """Received messages, and a Deferred fired once one contains a marker."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.received: list[bytes] = []
        self.arrived: defer.Deferred[bytes] = defer.Deferred()

    def add(self, message: bytes) -> None:
        self.received.append(message)
        if self.marker in message and not self.arrived.called:
            self.arrived.callback(message)


class _UDPReceiver(DatagramProtocol):
    def __init__(self, messages: _Messages) -> None:
        self.messages = messages

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.messages.add(data)


class _OctetCounted(Protocol):
    """RFC 6587 3.4.1: MSG-LEN SP SYSLOG-MSG, repeated."""

    def __init__(self, messages: _Messages) -> None:
        self.messages = messages
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b" " in self.buffer:
            length, _, rest = self.buffer.partition(b" ")
            assert length.isdigit(), self.buffer[:40]
            if len(rest) < int(length):
                return
            self.messages.add(rest[: int(length)])
            self.buffer = rest[int(length):]


def _service(tmp_path: Path, address: str) -> Any:
    config = parse_config({
        "server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"]},
        "logging": {"syslog": {"address": address, "facility": "local3", "app_name": "edge-test"}},
    })  # fmt: skip
    return makeService(config)


def _check(message: bytes) -> None:
    parsed = parse_syslog(message)
    assert int(parsed["pri"]) == 19 * 8 + 4  # local3, warning
    assert parsed["app"] == "edge-test" and parsed["msgid"] == AUTH_FAILURE
    assert parsed["params"] == {"kind": AUTH_FAILURE, "src": "198.51.100.9", "transport": "TCP", "user": "carol", "reason": "wrong password"}


@pytest.mark.parametrize("transport", ["udp", "tcp", "unix"])
@pytest_twisted.inlineCallbacks
def test_security_events_reach_a_collector_as_rfc5424(tmp_path: Path, transport: str) -> Any:
    """unix is like /dev/log: a datagram socket whose queue holds 10
    datagrams (net.unix.max_dgram_qlen) until it is read; the start-up
    lines overflow it, and the sender keeps the rest and sends them as the
    reader catches up."""
    messages = _Messages(b"198.51.100.9")
    if transport == "udp":
        port = reactor.listenUDP(0, _UDPReceiver(messages), interface="127.0.0.1")
        address = f"udp:127.0.0.1:{port.getHost().port}"
    elif transport == "tcp":
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: _OctetCounted(messages)), interface="127.0.0.1")
        address = f"tcp:127.0.0.1:{port.getHost().port}"
    else:
        port = reactor.listenUNIXDatagram(str(tmp_path / "log.sock"), _UDPReceiver(messages))
        address = f"unix:{tmp_path / 'log.sock'}"
    service = _service(tmp_path, address)
    service.startService()
    try:
        service.events.emit(SecurityEvent(AUTH_FAILURE, "198.51.100.9", "TCP", "carol", "wrong password"))
        message = yield messages.arrived.addTimeout(10, reactor)
        _check(message)
        # the start-up lines went out first, each one RFC 5424
        assert len(messages.received) > 10
        for each in messages.received:
            parse_syslog(each)
    finally:
        yield service.stopService()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_collector_that_is_down_at_start_gets_the_messages_queued_meanwhile(tmp_path: Path) -> Any:
    """TCP: the sender reconnects (backing off) and delivers what waited."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free = probe.getsockname()[1]
    probe.close()
    service = _service(tmp_path, f"tcp:127.0.0.1:{free}")
    service.startService()
    messages = _Messages(b"198.51.100.9")
    try:
        service.events.emit(SecurityEvent(AUTH_FAILURE, "198.51.100.9", "TCP", "carol", "wrong password"))
        port = reactor.listenTCP(free, Factory.forProtocol(lambda: _OctetCounted(messages)), interface="127.0.0.1")
        try:
            message = yield messages.arrived.addTimeout(20, reactor)
            _check(message)
        finally:
            yield port.stopListening()
    finally:
        yield service.stopService()
