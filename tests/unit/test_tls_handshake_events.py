"""A failed TLS handshake is a ``tls-handshake-failure`` security event: the
stream protocol behind the listener's TLS wrapper (in memory, no socket)
reports it on the sink its factory was given, with OpenSSL's reason, the
source address and port and the SNI; the default sink writes it as one
rate-limited line, syslog as structured data; with ``[bans]
max_handshake_failures`` set (default off) a few of them ban the source."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from cert_support import Issued, make_ca, make_leaf, write_pem
from cryptography import x509
from OpenSSL import SSL
from pipeline_support import EventRecorder, RecordingHandler
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipshield.config import ConfigError, LimitsConfig, TLSConfig, parse_config
from sipshield.events import KINDS, TLS_HANDSHAKE_FAILURE, LogSecurityEvents, SecurityEvent
from sipshield.ops._syslog import format_rfc5424
from sipshield.security import BanPolicy
from sipshield.transport import ServerTLSContext, SIPStreamFactory, SIPStreamProtocol, generate_self_signed, load_tls_material
from sipshield.transport._listen import RefusingTLSFactory
from sipshield.transport._stream import handshake_failure_reason

SOURCE = ("192.0.2.44", 51234)


class Connection:
    """One inbound TLS connection to a listener: the listener's own wrapper
    (RefusingTLSFactory) over a SIPStreamFactory reporting to *events*."""

    def __init__(self, context: ServerTLSContext, events: EventRecorder | None, source: tuple[str, int] = SOURCE) -> None:
        self.factory = SIPStreamFactory(RecordingHandler(), LimitsConfig(), MemoryReactorClock(), "TLS", events)
        tls = RefusingTLSFactory(context, False, self.factory)
        tls.doStart()
        self.tls = tls.buildProtocol(IPv4Address("TCP", *source))
        self.wire = StringTransport(peerAddress=IPv4Address("TCP", *source), hostAddress=IPv4Address("TCP", "127.0.0.1", 5061))
        self.tls.makeConnection(self.wire)
        self.sip: SIPStreamProtocol = self.tls.wrappedProtocol

    def handshake(self, client: SSL.Context, sni: bytes | None = None) -> None:
        """Run a TLS client against it through memory until either side stops."""
        peer = SSL.Connection(client, None)
        if sni is not None:
            peer.set_tlsext_host_name(sni)
        peer.set_connect_state()
        for _ in range(20):
            try:
                peer.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error:
                pass  # the client's side of a refusal (the server's alert)
            try:
                out = peer.bio_read(65536)
            except SSL.WantReadError:
                out = b""
            if out and not self.wire.disconnecting:
                self.tls.dataReceived(out)
            back, _ = self.wire.value(), self.wire.clear()
            if back:
                peer.bio_write(back)
            if self.wire.disconnecting or (self.sip._handshaken and not out and not back):
                break

    def close(self) -> None:
        """The TCP connection goes (as the reactor tells the TLS wrapper once it closed it)."""
        self.tls.connectionLost(Failure(ConnectionDone()))


@pytest.fixture(scope="module")
def client_ca() -> Issued:
    return make_ca("sipshield client CA")


def _context(tmp_path: Path, **tls: Any) -> ServerTLSContext:
    generate_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", ["sip.example.com"])
    material = load_tls_material(TLSConfig(certificate=tmp_path / "c.pem", private_key=tmp_path / "k.pem", **tls), tmp_path)
    assert material is not None
    return ServerTLSContext(material)


def _client(cert: Issued | None = None) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if cert is not None:
        context.use_certificate(cert[0])
        context.use_privatekey(cert[1])
    return context


def _fields(event: SecurityEvent) -> tuple[Any, ...]:
    return event.kind, event.source, event.port, event.transport, event.user, event.reason, event.sni


def test_bytes_that_are_not_tls_are_one_event_with_the_source_and_the_reason(tmp_path: Path) -> None:
    events = EventRecorder()
    connection = Connection(_context(tmp_path), events)
    connection.tls.dataReceived(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.44:51234\r\n\r\n")
    assert connection.wire.disconnecting  # the TLS layer gave up on it
    connection.close()
    assert [_fields(e) for e in events.events] == [(TLS_HANDSHAKE_FAILURE, "192.0.2.44", 51234, "TLS", None, "http request", None)]
    assert connection.factory.tls_handshake_failures == 1 and connection.factory.tls_handshakes == 0  # the metrics count it as before
    assert connection.factory.connections == {}


def test_a_client_with_no_shared_cipher_is_an_event_naming_the_sni_it_sent(tmp_path: Path) -> None:
    events = EventRecorder()
    connection = Connection(_context(tmp_path), events)
    client = _client()
    client.set_max_proto_version(SSL.TLS1_2_VERSION)
    client.set_cipher_list(b"AES128-SHA")  # RSA key exchange: the listener's key is ECDSA
    connection.handshake(client, sni=b"sip.example.com")
    connection.close()
    assert [_fields(e) for e in events.events] == [(TLS_HANDSHAKE_FAILURE, "192.0.2.44", 51234, "TLS", None, "no shared cipher", "sip.example.com")]


def test_a_client_certificate_from_another_ca_on_an_mtls_listener_is_certificate_verify_failed(tmp_path: Path, client_ca: Issued) -> None:
    events = EventRecorder()
    connection = Connection(_context(tmp_path, client_ca=write_pem(tmp_path / "ca.pem", client_ca[0])), events)
    rogue = make_leaf("trunk.example.net", [x509.UniformResourceIdentifier("sip:trunk.example.net")])
    connection.handshake(_client(cert=rogue))
    connection.close()
    assert [(e.kind, e.source, e.port, e.reason) for e in events.events] == [(TLS_HANDSHAKE_FAILURE, "192.0.2.44", 51234, "certificate verify failed")]


def test_a_handshake_that_succeeds_and_a_connection_closed_before_any_byte_are_no_event(tmp_path: Path, client_ca: Issued) -> None:
    context = _context(tmp_path, client_ca=write_pem(tmp_path / "ca.pem", client_ca[0]))
    events = EventRecorder()
    good = Connection(context, events)
    good.handshake(_client(cert=make_leaf("trunk.example.net", None, client_ca)))
    assert good.sip._handshaken
    good.close()
    silent = Connection(context, events, ("192.0.2.45", 40000))
    silent.close()  # a port scanner: TCP only
    assert events.events == []
    assert good.factory.tls_handshakes == 1 and silent.factory.tls_handshake_failures == 0


def test_without_a_sink_a_failure_is_still_counted(tmp_path: Path) -> None:
    connection = Connection(_context(tmp_path), None)
    connection.tls.dataReceived(b"\x16\x03\x01\x00\x05hello")  # a record header, then nonsense
    connection.close()
    assert connection.factory.tls_handshake_failures == 1


def test_the_reason_is_openssls_short_text_once_each_or_the_errors_own() -> None:
    assert handshake_failure_reason(SSL.Error([("SSL routines", "", "wrong version number")])) == "wrong version number"
    assert handshake_failure_reason(SSL.Error([("SSL routines", "", "a"), ("x509", "", "a"), ("SSL routines", "", "b")])) == "a, b"
    assert handshake_failure_reason(SSL.Error("odd")) == "odd"
    assert handshake_failure_reason(SSL.Error([("SSL routines", "", "evil\r\nsecurity event auth-failure")])) == "evil\\r\\nsecurity event auth-failure"


def test_the_line_names_port_and_sni_escaped_and_is_rate_limited_per_source() -> None:
    lines: list[dict[str, Any]] = []
    clock = Clock()
    sink = LogSecurityEvents(clock, Logger(observer=lines.append))
    for source, sni in (("192.0.2.44", "sip.example.com"), ("192.0.2.44", "again"), ("192.0.2.45", "x\x1b[2Jy")):
        sink.emit(SecurityEvent(TLS_HANDSHAKE_FAILURE, source, "TLS", None, "no shared cipher", port=51234, sni=sni))
    from twisted.logger import formatEvent

    assert [formatEvent(e) for e in lines] == [
        "security event tls-handshake-failure from 192.0.2.44 over TLS (user None): no shared cipher (port 51234, SNI sip.example.com)",
        "security event tls-handshake-failure from 192.0.2.45 over TLS (user None): no shared cipher (port 51234, SNI x\\x1b[2Jy)"
        " (1 similar lines held back in the last 60 s)",
    ]
    assert (lines[0]["security_event"], lines[0]["host"], lines[0]["port"], lines[0]["sni"], lines[0]["reason"]) == (
        TLS_HANDSHAKE_FAILURE,
        "192.0.2.44",
        51234,
        "sip.example.com",
        "no shared cipher",
    )
    sink.emit(SecurityEvent(TLS_HANDSHAKE_FAILURE, "192.0.2.46", "TLS", None, "http request", port=1))
    assert formatEvent(lines[-1]).endswith("http request (port 1, SNI None)") and lines[-1]["sni"] is None
    sink.emit(SecurityEvent("acl-deny", "192.0.2.47", "UDP", None, "denied"))
    assert "port" not in lines[-1] and "sni" not in lines[-1]  # the other kinds as they were


def test_syslog_carries_port_and_sni_as_structured_data() -> None:
    event = {
        "security_event": TLS_HANDSHAKE_FAILURE,
        "host": "192.0.2.44",
        "transport": "TLS",
        "user": None,
        "reason": "no shared cipher",
        "port": 51234,
        "sni": None,
        "log_format": "x",
        "log_time": 0.0,
    }
    message = format_rfc5424(event, facility=16, hostname="edge", app_name="sipshield", procid="1").decode()
    assert (
        ' tls-handshake-failure [sipshield@32473 kind="tls-handshake-failure" src="192.0.2.44" transport="TLS" user="-" reason="no shared cipher" '
        'port="51234" sni="-"] ' in message
    )
    del event["port"], event["sni"]
    assert re.search(r'reason="no shared cipher"\] ', format_rfc5424(event, facility=16, hostname="e", app_name="s", procid="1").decode())


def test_an_alert_rule_may_name_the_kind() -> None:
    assert TLS_HANDSHAKE_FAILURE in KINDS
    rule = {"name": "tls", "kind": "event_rate", "event": TLS_HANDSHAKE_FAILURE, "more_than": 100, "window": 60}
    assert parse_config({"alerts": {"rules": [rule]}}).alerts.rules[0].event == TLS_HANDSHAKE_FAILURE


def _failure(source: str = "192.0.2.44") -> SecurityEvent:
    return SecurityEvent(TLS_HANDSHAKE_FAILURE, source, "TLS", None, "certificate verify failed", port=40000)


def test_handshake_failures_ban_nobody_by_default() -> None:
    clock = Clock()
    policy = BanPolicy(clock)
    for _ in range(50):
        policy.emit(_failure())
    assert policy.bans() == [] and not policy.refuse_source("192.0.2.44")
    assert parse_config({}).bans.max_handshake_failures == 0


def test_with_max_handshake_failures_that_many_within_find_time_ban_the_source() -> None:
    clock = Clock()
    recorder = EventRecorder()
    policy = BanPolicy(clock, events=recorder, max_handshake_failures=3, find_time=60, allowlist=["198.51.100.0/24"])
    policy.emit(_failure())
    policy.emit(_failure())
    clock.advance(61)  # the first two are out of the window
    policy.emit(_failure())
    policy.emit(_failure())
    assert not policy.refuse_source("192.0.2.44")
    policy.emit(_failure())
    assert policy.refuse_source("192.0.2.44")
    (ban,) = policy.bans()
    assert ban.reason == "3 failed TLS handshakes in 60 s (last: certificate verify failed)"
    assert [(e.kind, e.source, e.transport) for e in recorder.events] == [("ban", "192.0.2.44", "TLS")]
    for _ in range(5):
        policy.emit(_failure("198.51.100.7"))
    assert not policy.refuse_source("198.51.100.7")  # the allowlist holds
    policy.emit(SecurityEvent("auth-failure", "192.0.2.50", "TLS", "alice", "credentials refused"))
    policy.emit(_failure("192.0.2.50"))
    policy.emit(SecurityEvent("auth-failure", "192.0.2.50", "TLS", "alice", "credentials refused"))
    assert not policy.refuse_source("192.0.2.50")  # two logins and one handshake: separate counts, neither at 3


def test_the_config_key_is_checked_and_shown_in_the_posture() -> None:
    config = parse_config({"bans": {"max_handshake_failures": 10}})
    assert config.bans.max_handshake_failures == 10
    assert "and so do 10 failed TLS handshakes" in dict(config.posture())["bans"]
    assert "TLS handshakes" not in dict(parse_config({}).posture())["bans"]
    with pytest.raises(ConfigError, match="bans.max_handshake_failures"):
        parse_config({"bans": {"max_handshake_failures": -1}})


def test_the_service_hands_its_event_bus_to_the_listeners(tmp_path: Path) -> None:
    from sipshield.service import makeService

    service = makeService(parse_config({"server": {"data_dir": str(tmp_path), "listen": ["tls:0:interface=127.0.0.1"]}}), reactor=MemoryReactorClock())
    assert [listener.events for listener in service.listeners] == [service.events]
