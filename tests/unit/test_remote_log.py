"""Log lines whose cause a remote sender picks (a host name to resolve, a
host to connect to) go through ThrottledLog: N failures for one host give one
line per interval, then a count of what was held back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from inline_pool import ImmediateReactor
from pipeline_support import PHONE as ATTACKER
from pipeline_support import RecordingFlow, RecordingHandler, build_service
from test_transport import make_factory
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from sipshield.message import parse_message
from sipshield.proxy import endpoints
from sipshield.transport._dispatch import TransportDispatcher

FAILURES = 50


@pytest.fixture
def lines() -> Iterator[list[dict]]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def matching(events: list[dict], text: str) -> list[dict]:
    return [e for e in events if text in e.get("log_format", "")]


def test_failed_outbound_connections_to_one_host_log_once_per_interval(lines: list[dict]) -> None:
    factory, reactor = make_factory(RecordingHandler())
    dispatcher = TransportDispatcher(reactor)
    for _ in range(FAILURES):
        dispatcher._connect(factory, "TCP", "192.0.2.50", 5060, b"INVITE")
        reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert len(matching(lines, "cannot connect")) == 1
    reactor.advance(dispatcher.remote_log.interval)
    dispatcher._connect(factory, "TCP", "192.0.2.50", 5060, b"INVITE")
    reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    logged = matching(lines, "cannot connect")
    assert len(logged) == 2 and logged[-1]["suppressed"] == FAILURES - 1


def test_unresolvable_stateless_next_hop_logs_once_per_interval(tmp_path: Path, lines: list[dict]) -> None:
    """A stray ACK on our signed route to a name that does not resolve
    (the core's stateless send resolves it first)."""
    clock = ImmediateReactor()
    clock.resolve = lambda name: defer.fail(DNSLookupError(name))  # type: ignore[attr-defined]
    svc = build_service(tmp_path, clock=clock)
    target = "gone.invalid"
    token = svc.core.signer.token("ack-1", "a1", endpoints(ATTACKER[0], target))
    ack = (
        f"ACK sip:bob@{target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:40000;branch=z9hG4bKack\r\nMax-Forwards: 70\r\n"
        f"Route: <sip:127.0.0.1:5060;lr;ss={token}>\r\nFrom: <sip:alice@example.com>;tag=a1\r\n"
        "To: <sip:bob@example.com>;tag=b1\r\nCall-ID: ack-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    try:
        for _ in range(FAILURES):
            svc.core.message_received(parse_message(ack), RecordingFlow(ATTACKER))
        assert len(matching(lines, "cannot resolve")) == 1
        clock.advance(svc.core.remote_log.interval)
        svc.core.message_received(parse_message(ack), RecordingFlow(ATTACKER))
        logged = matching(lines, "cannot resolve")
        assert len(logged) == 2 and logged[-1]["suppressed"] == FAILURES - 1
    finally:
        svc.transactions.stop()
