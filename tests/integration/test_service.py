"""The service embeds in any Twisted application; two run side by side in
one process (no global state), on real loopback sockets; what a real start
logs and creates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest_twisted
from sqlalchemy import create_engine, inspect
from startup_log import startup_log, startup_warnings
from twisted.application.service import IService, MultiService
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from sipshield.config import parse_config
from sipshield.service import makeService

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "embedded.py"


def loopback_config(tmp_path: Path, name: str):
    return parse_config(
        {"server": {"data_dir": str(tmp_path / name), "listen": ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1", "tls:0:interface=127.0.0.1"]}}
    )


class _Catcher(DatagramProtocol):
    def __init__(self) -> None:
        self.received: defer.Deferred[bytes] = defer.Deferred()

    def datagramReceived(self, data: bytes, addr) -> None:  # type: ignore[override]
        if not self.received.called:
            self.received.callback(data)


def options(port: int, call_id: str) -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_make_service_builds_without_side_effects(tmp_path: Path) -> None:
    service = makeService(loopback_config(tmp_path, "a"), reactor)
    assert verifyObject(IService, service)
    assert isinstance(service, MultiService)
    assert [s.name for s in service] == [
        "log-outputs", "reactor-lag", "udp:127.0.0.1:0", "tcp:127.0.0.1:0", "tls:127.0.0.1:0", "admin-api", "alerts", "location-expiry", "metrics", "activity"]
    assert not (tmp_path / "a").exists()


@pytest_twisted.inlineCallbacks
def test_two_services_in_one_application_answer_options(tmp_path: Path):
    app = MultiService()
    services = [makeService(loopback_config(tmp_path, n), reactor) for n in ("one", "two")]
    for i, service in enumerate(services):
        service.setName(f"sip{i}")
        service.setServiceParent(app)
    app.privilegedStartService()
    app.startService()
    catcher = _Catcher()
    port = reactor.listenUDP(0, catcher, interface="127.0.0.1")
    try:
        udp = [s.addresses()["udp"] for s in services]
        assert udp[0] != udp[1]
        answers = []
        for i, address in enumerate(udp):
            catcher.received = defer.Deferred()
            port.write(options(port.getHost().port, f"embed{i}"), address)
            answers.append((yield catcher.received.addTimeout(5, reactor)))
        assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"SIP/2.0 200 OK"] * 2
        assert (tmp_path / "one" / "tls-selfsigned.key").exists()
    finally:
        yield port.stopListening()
        yield app.stopService()


@pytest_twisted.inlineCallbacks
def test_embedded_example_runs_and_answers(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("embedded_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = tmp_path / "c.toml"
    config.write_text("[server]\ndata_dir = 'd'\nlisten = ['udp:0:interface=127.0.0.1']\n")
    app = module.build_application(str(config), reactor)
    sip = app.getServiceNamed("sipshield")
    app.privilegedStartService()
    app.startService()
    catcher = _Catcher()
    port = reactor.listenUDP(0, catcher, interface="127.0.0.1")
    try:
        port.write(options(port.getHost().port, "example"), sip.addresses()["udp"])
        answer = yield catcher.received.addTimeout(5, reactor)
        assert answer.startswith(b"SIP/2.0 200 OK")
        assert b"Call-ID: example" in answer
    finally:
        yield port.stopListening()
        yield app.stopService()


def _with_headers(request: bytes, count: int) -> bytes:
    head, _, rest = request.partition(b"Content-Length:")
    return head + b"".join(b"X-Filler-%d: x\r\n" % i for i in range(count)) + b"Content-Length:" + rest


@pytest_twisted.inlineCallbacks
def test_max_headers_holds_on_udp(tmp_path: Path):
    """``[limits] max_headers`` on a real UDP socket: a request over it gets
    400 Too many header lines, one under it is served, a response over it is
    dropped (counted as malformed, never forwarded)."""
    config = parse_config(
        {"server": {"data_dir": str(tmp_path / "d"), "listen": ["udp:0:interface=127.0.0.1"]}, "limits": {"max_headers": 20}}
    )
    service = makeService(config, reactor)
    service.privilegedStartService()
    service.startService()
    catcher = _Catcher()
    port = reactor.listenUDP(0, catcher, interface="127.0.0.1")
    me, proxy = port.getHost().port, service.addresses()["udp"]

    def exchange(datagram: bytes):
        catcher.received = defer.Deferred()
        port.write(datagram, proxy)
        return catcher.received.addTimeout(5, reactor)

    try:
        answer = yield exchange(_with_headers(options(me, "many"), 20))  # 7 + 20 header fields
        assert answer.split(b"\r\n", 1)[0] == b"SIP/2.0 400 Too many header lines"
        assert b"Call-ID: many" in answer
        answer = yield exchange(_with_headers(options(me, "few"), 10))
        assert answer.split(b"\r\n", 1)[0] == b"SIP/2.0 200 OK"
        response = _with_headers(options(me, "resp").replace(b"OPTIONS sip:127.0.0.1 SIP/2.0", b"SIP/2.0 200 OK"), 30)
        port.write(response, proxy)
        answer = yield exchange(options(me, "after"))
        assert b"Call-ID: after" in answer
        assert service.core.counters["malformed"] == 2
    finally:
        yield port.stopListening()
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_request_over_the_default_max_headers_gets_400_on_udp_and_tcp(tmp_path: Path):
    """306 header lines against the default 256: a 400 Too many header lines
    on real UDP and TCP sockets (then the TCP connection closes), not a
    silent drop."""
    from test_stream_connections import _Client, _until
    from twisted.internet.protocol import ClientFactory

    config = parse_config({"server": {"data_dir": str(tmp_path / "d"), "listen": ["udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"]}})
    service = makeService(config, reactor)
    service.privilegedStartService()
    service.startService()
    catcher = _Catcher()
    port = reactor.listenUDP(0, catcher, interface="127.0.0.1")
    client = _Client()
    try:
        me, addresses = port.getHost().port, service.addresses()
        catcher.received = defer.Deferred()
        port.write(_with_headers(options(me, "udp-many"), 300), addresses["udp"])  # 6 + 300 header lines
        answer = yield catcher.received.addTimeout(5, reactor)
        assert answer.split(b"\r\n", 1)[0] == b"SIP/2.0 400 Too many header lines" and b"Call-ID: udp-many" in answer
        reactor.connectTCP(*addresses["tcp"], ClientFactory.forProtocol(lambda: client))
        yield _until(lambda: client.transport is not None and client.transport.connected)
        client.transport.write(_with_headers(options(me, "tcp-many").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"), 300))
        yield client.lost.addTimeout(5, reactor)
        assert client.received.split(b"\r\n", 1)[0] == b"SIP/2.0 400 Too many header lines" and b"Call-ID: tcp-many" in client.received
    finally:
        if client.transport is not None:
            client.transport.loseConnection()
        yield port.stopListening()
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_trusting_udp_is_logged_as_a_warning_at_start_up(tmp_path: Path):
    """[auth] trusted_sources with udp = true (tests/unit/test_trusted_sources.py): warned when the service starts."""
    config = parse_config({"server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"]},
                           "auth": {"trusted_sources": [{"network": "127.0.0.2/32", "udp": True}]}})
    warnings = yield startup_warnings(config)
    assert any("auth.trusted_sources: 127.0.0.2/32 is trusted over UDP (udp = true)" in w for w in warnings), warnings


@pytest_twisted.inlineCallbacks
def test_every_start_warns_when_unauthenticated_service_is_allowed(tmp_path: Path):
    """[security] allow_unauthenticated (tests/unit/test_safe_config.py): each finding is a warning at every start."""
    config = parse_config({"server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"]},
                           "security": {"allow_unauthenticated": True},
                           "pipeline": {"stages": ["sanity", "options", "dialog", "registrar", "location", "routes", "final"]}})
    warnings = yield startup_warnings(config)
    assert any('no "auth" stage' in w for w in warnings), warnings


@pytest_twisted.inlineCallbacks
def test_the_start_up_log_says_the_posture_and_the_users(tmp_path: Path):
    """The posture and the user counts (tests/unit/test_posture.py), in the start-up log."""
    from sipshield.auth import UserStore
    from sipshield.auth._keys import KeyFile

    (tmp_path / "data").mkdir()
    store = UserStore(f"sqlite:///{tmp_path / 'data' / 'sipshield.db'}", algorithms=["SHA-256"], keys=KeyFile(tmp_path / "data" / "credential.keys"))  # before MD5 was enabled
    store.create_schema()
    store.add("alice", "example.com", "alice-long-secret", ["staff"])
    store.close()
    config = parse_config({"server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"], "domains": ["example.com"]},
                           "auth": {"algorithms": ["SHA-256", "MD5"]}})
    lines = yield startup_log(config)
    infos = [text for level, text in lines if level == "info"]
    warnings = [text for level, text in lines if level == "warn"]
    assert "digest algorithms: SHA-256, MD5 (challenged in this order)" in infos
    assert "domains: example.com" in infos
    assert "users: 1 user(s) in sql" in infos
    assert any("1 without MD5 credentials" in w and "sipshield user passwd" in w for w in warnings), warnings


@pytest_twisted.inlineCallbacks
def test_the_first_start_on_a_database_from_before_encryption_encrypts_its_values(tmp_path: Path):
    """Rows written by the previous version (plain-text HA1s, no key file) are
    encrypted when the service first starts on them; the users' HA1s are the
    same, read through the key file; the start-up log says so and has no
    plain-text warning left (tests/unit/test_cli_keys.py: the same by hand)."""
    from sqlalchemy import create_engine, text
    from user_store_contract import older_database

    from sipshield.auth import KeyFile, UserStore
    from sipshield.auth._digest import compute_ha1

    (tmp_path / "data").mkdir()
    url = f"sqlite:///{tmp_path / 'data' / 'sipshield.db'}"
    store = UserStore(url, keys=KeyFile(tmp_path / "data" / "credential.keys"))
    store.create_schema()
    older_database(store, {"alice": "alice-long-secret"})
    store.close()
    config = parse_config({"server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"], "domains": ["example.com"]}})
    lines = yield startup_log(config)
    infos = [text for level, text in lines if level == "info"]
    warnings = [text for level, text in lines if level == "warn"]
    assert any(t.startswith("credentials encrypted at rest: 2 value(s) written under key ") for t in infos), infos
    assert not any("plain text" in w for w in warnings), warnings
    engine = create_engine(url)
    with engine.connect() as conn:
        values = [row[0] for row in conn.execute(text("SELECT ha1 FROM sipshield_credentials"))]
    engine.dispose()
    assert len(values) == 2 and all(v.startswith("enc1:") for v in values)
    again = UserStore(url, keys=KeyFile(tmp_path / "data" / "credential.keys"))
    try:
        assert again.ha1("alice", "example.com", "SHA-256") == compute_ha1("SHA-256", "alice", "example.com", "alice-long-secret")
        assert again.keys.require().accept_plaintext is False  # a plain-text value planted later is refused
    finally:
        again.close()


@pytest_twisted.inlineCallbacks
def test_service_creates_both_schemas_in_one_new_file(tmp_path: Path):
    """The SQLite start-up race (tests/unit/test_sqlite_schema.py) through a real start."""
    config = parse_config(
        {"server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"]}, "registrar": {"store": "sql"}, "auth": {"backends": ["sql"]}}
    )
    errors: list[dict] = []

    def observe(event_: dict) -> None:
        if event_.get("log_level") is not None and event_["log_level"].name in ("error", "critical"):
            errors.append(event_)

    globalLogPublisher.addObserver(observe)
    service = makeService(config, reactor)
    try:
        service.privilegedStartService()
        service.startService()
        yield service.schema_ready.addTimeout(30, reactor)
    finally:
        globalLogPublisher.removeObserver(observe)
        yield service.stopService()
    assert errors == []
    tables = set(inspect(create_engine(config.database)).get_table_names())
    assert {"sipshield_location", "sipshield_users", "sipshield_credentials"} <= tables
