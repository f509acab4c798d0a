"""The ``[metrics]`` endpoint over real HTTP on loopback, before and after
real traffic through the service: OPTIONS and REGISTERs over UDP (a
challenge, a wrong password, a right one), a TLS handshake and a failed
one; the counters move by what was sent and the text parses as Prometheus'
exposition format."""

from __future__ import annotations

import secrets
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest_twisted
from digest_client import authorization, challenges
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.defer import DeferredQueue
from twisted.web.client import Agent, readBody

from sipshield.config import parse_config
from sipshield.service import makeService

PASSWORD = "tulip-Orbit-7-canal"


class _Phone(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: DeferredQueue[bytes] = DeferredQueue()

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        self.answers.put(data)


class _Quiet(protocol.Protocol):
    """A TLS client that says nothing: the handshake is all it does."""

    def __init__(self, done: defer.Deferred[None]) -> None:
        self.done = done

    def handshakeCompleted(self) -> None:
        pass

    def connectionMade(self) -> None:
        self.transport.write(b"\r\n\r\n")  # type: ignore[union-attr]  # a keep-alive: needs the handshake

    def dataReceived(self, data: bytes) -> None:
        if not self.done.called:
            self.done.callback(None)
            self.transport.loseConnection()  # type: ignore[union-attr]


class _Garbage(protocol.Protocol):
    def __init__(self, done: defer.Deferred[None]) -> None:
        self.done = done

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.0\r\n\r\n" * 4)  # type: ignore[union-attr]  # not a TLS ClientHello

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(None)


def _request(method: str, port: int, extra: str = "") -> bytes:
    uri = "sip:example.com" if method == "REGISTER" else "sip:127.0.0.1"
    return (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag={secrets.token_hex(4)}\r\nTo: <sip:alice@example.com>\r\n"
        f"Call-ID: {secrets.token_hex(8)}@metrics\r\nCSeq: 1 {method}\r\nContact: <sip:alice@127.0.0.1:{port}>\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@defer.inlineCallbacks
def _get(url: str) -> Generator[Any, Any, tuple[int, str]]:
    response = yield Agent(reactor).request(b"GET", url.encode())
    body = yield readBody(response)
    return response.code, body.decode()


@pytest_twisted.inlineCallbacks
def test_counters_move_with_real_traffic_and_the_text_parses(tmp_path: Path) -> None:
    config = parse_config({
        "server": {"data_dir": str(tmp_path / "d"), "domains": ["example.com"],
                   "listen": ["udp:0:interface=127.0.0.1", "tls:0:interface=127.0.0.1"]},
        "metrics": {"listen": "tcp:0:interface=127.0.0.1"},
    })  # fmt: skip
    service = makeService(config, reactor)
    service.privilegedStartService()
    service.startService()
    phone = _Phone()
    port = reactor.listenUDP(0, phone, interface="127.0.0.1")
    try:
        yield service.schema_ready
        service.user_stores[0].add("alice", "example.com", PASSWORD, ("staff",))
        host, http_port = service.metrics.address
        url = f"http://{host}:{http_port}/metrics"
        code, text = yield _get(url)
        assert code == 200
        before = _samples(text)

        sip = service.addresses()["udp"]
        me = port.getHost().port

        def ask(data: bytes) -> Any:
            port.write(data, sip)
            return phone.answers.get().addTimeout(5, reactor)

        answer = yield ask(_request("OPTIONS", me))
        assert answer.startswith(b"SIP/2.0 200")
        challenge = yield ask(_request("REGISTER", me))
        assert challenge.startswith(b"SIP/2.0 401")
        (sha256,) = [c for c in challenges(challenge, "WWW-Authenticate") if c.get("algorithm") == "SHA-256"]
        wrong = authorization(sha256, "SHA-256", "alice", "not-the-password", "REGISTER", "sip:example.com")
        answer = yield ask(_request("REGISTER", me, f"Authorization: {wrong}\r\n"))
        assert answer.startswith(b"SIP/2.0 401")
        (sha256,) = [c for c in challenges(answer, "WWW-Authenticate") if c.get("algorithm") == "SHA-256"]
        right = authorization(sha256, "SHA-256", "alice", PASSWORD, "REGISTER", "sip:example.com")
        answer = yield ask(_request("REGISTER", me, f"Authorization: {right}\r\n"))
        assert answer.startswith(b"SIP/2.0 200")

        tls_host, tls_port = service.addresses()["tls"]
        handshaken: defer.Deferred[None] = defer.Deferred()
        reactor.connectSSL(tls_host, tls_port, protocol.ClientFactory.forProtocol(lambda: _Quiet(handshaken)), ssl.ClientContextFactory())
        yield handshaken.addTimeout(5, reactor)
        refused: defer.Deferred[None] = defer.Deferred()
        reactor.connectTCP(tls_host, tls_port, protocol.ClientFactory.forProtocol(lambda: _Garbage(refused)))
        yield refused.addTimeout(5, reactor)

        service.metrics.refresh()  # what the LoopingCall does every [metrics] refresh seconds
        code, text = yield _get(url)
        assert code == 200
        after = _samples(text)

        def moved(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert moved("sipshield_requests_total", method="OPTIONS", transport="UDP") == 1
        assert moved("sipshield_requests_total", method="REGISTER", transport="UDP") == 3
        assert moved("sipshield_responses_sent_total", code="401") == 2
        assert moved("sipshield_responses_sent_total", code="200") == 2
        assert moved("sipshield_auth_failures_total", reason="credentials") == 1
        assert moved("sipshield_security_events_total", kind="auth-failure") == 1
        assert moved("sipshield_auth_successes_total") == 1
        assert after[("sipshield_registered_contacts", ())] == 1
        assert moved("sipshield_tls_handshakes_total") == 1
        assert moved("sipshield_tls_handshake_failures_total") == 1
        assert moved("sipshield_message_processing_seconds_count") >= 4
        assert after[("sipshield_message_processing_seconds_bucket", (("le", "+Inf"),))] == after[("sipshield_message_processing_seconds_count", ())]
        (expiry,) = [v for (name, _), v in after.items() if name == "sipshield_tls_certificate_expiry_seconds"]
        assert 800 * 86400 < expiry <= 825 * 86400  # the self-signed certificate, made at start for 825 days
        assert after[("process_resident_memory_bytes", ())] > 0

        code, _ = yield _get(f"http://{host}:{http_port}/")
        assert code == 404
        code, _ = yield _get(f"http://{host}:{http_port}/metrics/extra")
        assert code == 404
    finally:
        yield port.stopListening()
        yield service.stopService()
    assert service.metrics.port is None
