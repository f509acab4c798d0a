"""Client certificates as admin API credentials, over real TLS on loopback:
a service with ``[admin.tls]`` (a test CA, a server certificate for
127.0.0.1, ``client_ca``) and ``[[admin.clients]]``; the client is the CLI's
own AdminClient (blocking, run in a thread) and ``sipshield status``.  Each
way in that must fail does, closed: no certificate and no token, a
certificate of another CA, a certificate naming no configured client, a
client whose roles lack ``manage``; and the plain-HTTP listener never takes
a certificate for a credential."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cert_support import Issued, make_ca, make_leaf, write_pem
from cryptography import x509
from twisted.internet import threads
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from sipshield import cli
from sipshield.config import ConfigError, parse_config
from sipshield.ops._client import AdminClient, AdminError, AdminUnavailable
from sipshield.service import makeService


def _pair(directory: Path, name: str, issued: Issued) -> tuple[str, str]:
    cert, key = issued
    return str(write_pem(directory / f"{name}.pem", cert)), str(write_pem(directory / f"{name}.key", key=key))


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = make_ca("admin test CA")
    rogue = make_ca("another CA")
    return {
        "ca": str(write_pem(directory / "ca.pem", ca[0])),
        "server": _pair(directory, "server", make_leaf("127.0.0.1", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], ca)),
        "ops": _pair(directory, "ops", make_leaf("ops.example.net", [x509.DNSName("ops.example.net")], ca)),
        "viewer": _pair(directory, "viewer", make_leaf("viewer.example.net", [x509.DNSName("viewer.example.net")], ca)),
        "stranger": _pair(directory, "stranger", make_leaf("stranger.example.net", [x509.DNSName("stranger.example.net")], ca)),
        "rogue": _pair(directory, "rogue", make_leaf("ops.example.net", [x509.DNSName("ops.example.net")], rogue)),
        # no subjectAltName: the CN names it (RFC 5922 7.1 step 3, as for trunks)
        "cn": _pair(directory, "cn", make_leaf("alice", None, ca)),
    }


@pytest.fixture
def service(tmp_path: Path, pki: dict[str, Any]) -> Any:
    certificate, key = pki["server"]
    config = parse_config({
        "server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"]},
        "roles": {"admin": ["register", "call", "manage"], "viewer": ["register"]},
        "admin": {
            "port": 0, "tls_port": 0, "tls": {"certificate": certificate, "private_key": key, "client_ca": pki["ca"]},
            "clients": [{"identity": "ops.example.net", "roles": ["admin"]}, {"identity": "viewer.example.net", "roles": ["viewer"]},
                        {"identity": "alice"}],
        },
    })  # fmt: skip
    service = makeService(config)
    service.startService()
    yield service
    pytest_twisted.blockon(service.stopService())


def _https(service: Any) -> str:
    return f"https://127.0.0.1:{service.admin.tls_listening.getHost().port}"


def _token(service: Any) -> str:
    return (service.config.server.data_dir / "admin.token").read_text().strip()


def _status(service: Any, pki: dict[str, Any], who: str | None, token: str = "", url: str | None = None) -> Any:
    certificate, key = pki[who] if who is not None else (None, None)
    client = AdminClient(url or _https(service), token, timeout=10, certificate=certificate, key=key, cacert=pki["ca"])
    return threads.deferToThread(client.status)


@pytest_twisted.inlineCallbacks
def test_a_configured_client_certificate_with_manage_reaches_the_api(service: Any, pki: dict[str, Any]) -> Any:
    status = yield _status(service, pki, "ops")
    assert status["version"] and status["listeners"]
    status = yield _status(service, pki, "cn")  # identified by its CN, default role admin
    assert status["version"]


@pytest_twisted.inlineCallbacks
def test_a_bearer_token_still_works_over_the_tls_listener(service: Any, pki: dict[str, Any]) -> Any:
    status = yield _status(service, pki, None, token=_token(service))
    assert status["version"]
    # a verified certificate naming no configured client leaves the decision to the token
    status = yield _status(service, pki, "stranger", token=_token(service))
    assert status["version"]


@pytest_twisted.inlineCallbacks
def test_no_certificate_and_no_token_is_401(service: Any, pki: dict[str, Any]) -> Any:
    with pytest.raises(AdminError) as refused:
        yield _status(service, pki, None)
    assert refused.value.status == 401


@pytest_twisted.inlineCallbacks
def test_a_verified_certificate_naming_no_configured_client_is_401(service: Any, pki: dict[str, Any]) -> Any:
    for token in ("", "not-the-token"):
        with pytest.raises(AdminError) as refused:
            yield _status(service, pki, "stranger", token=token)
        assert refused.value.status == 401, token


@pytest_twisted.inlineCallbacks
def test_a_certificate_of_another_ca_is_refused_in_the_handshake(service: Any, pki: dict[str, Any]) -> Any:
    # the same identity as a configured client, but no chain to [admin.tls] client_ca: no HTTP answer at all
    with pytest.raises(AdminUnavailable):
        yield _status(service, pki, "rogue")
    with pytest.raises(AdminUnavailable):
        yield _status(service, pki, "rogue", token=_token(service))


@pytest_twisted.inlineCallbacks
def test_a_client_whose_roles_lack_manage_is_403_even_with_a_valid_token(service: Any, pki: dict[str, Any]) -> Any:
    for token in ("", _token(service)):
        with pytest.raises(AdminError) as refused:
            yield _status(service, pki, "viewer", token=token)
        assert refused.value.status == 403 and "manage" in refused.value.message


@implementer(ISSLTransport)
class _TLSLikeTransport(StringTransport):
    """What a TLS connection looks like to twisted.web: a transport with a peer certificate."""

    def __init__(self, certificate: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.certificate = certificate

    def getPeerCertificate(self) -> Any:
        return self.certificate

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def test_the_plain_listener_never_takes_a_certificate_for_a_credential(service: Any, pki: dict[str, Any]) -> None:
    from OpenSSL import crypto

    with open(pki["ops"][0], "rb") as f:
        certificate = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
    for site, answer in ((service.admin.site(), b"HTTP/1.1 401 "), (service.admin.tls_listening.factory.wrappedFactory, b"HTTP/1.1 200 ")):
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.9", 40000))
        transport = _TLSLikeTransport(certificate, peerAddress=IPv4Address("TCP", "127.0.0.9", 40000))
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert transport.value().startswith(answer), transport.value()[:80]
        channel.connectionLost(None)


@pytest_twisted.inlineCallbacks
def test_the_cli_uses_a_client_certificate(service: Any, pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    certificate, key = pki["ops"]
    monkeypatch.setattr(sys, "stdin", None)
    monkeypatch.delenv("SIPSHIELD_ADMIN_TOKEN", raising=False)
    argv = ["status", "--url", _https(service), "--cert", certificate, "--key", key, "--cacert", pki["ca"]]
    code = yield threads.deferToThread(cli.main, argv)
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("sipshield "), (out, err)
    monkeypatch.setenv("SIPSHIELD_ADMIN_CERT", pki["viewer"][0])
    monkeypatch.setenv("SIPSHIELD_ADMIN_KEY", pki["viewer"][1])
    monkeypatch.setenv("SIPSHIELD_ADMIN_CACERT", pki["ca"])
    code = yield threads.deferToThread(cli.main, ["status", "--url", _https(service)])
    out, err = capsys.readouterr()
    assert code == 1 and "403" in err


def test_admin_clients_need_a_client_ca_and_known_roles(tmp_path: Path, pki: dict[str, Any]) -> None:
    certificate, key = pki["server"]
    base = {"server": {"data_dir": str(tmp_path)}}
    cases = (
        ({"clients": [{"identity": "ops.example.net"}]}, "admin.clients"),
        ({"tls": {"certificate": certificate, "private_key": key}, "clients": [{"identity": "ops.example.net"}]}, "admin.clients"),
        (
            {"tls": {"certificate": certificate, "private_key": key, "client_ca": pki["ca"]}, "clients": [{"identity": "a.example", "roles": ["nope"]}]},
            "admin.clients[0].roles",
        ),
        ({"tls": {"client_ca": pki["ca"]}}, "admin.tls.certificate"),
        ({"tls": {"certificate": certificate, "private_key": key, "bogus": 1}}, "admin.tls"),
    )
    for admin, key_name in cases:
        with pytest.raises(ConfigError) as refused:
            parse_config({**base, "admin": admin})
        assert refused.value.key == key_name, (admin, refused.value)
    # the identities are named as trunks' are, checked when the service is built: no wildcards, none twice
    tls = {"certificate": certificate, "private_key": key, "client_ca": pki["ca"]}
    for clients, key_name in (([{"identity": "*.example.net"}], "admin.clients[0].identity"),
                              ([{"identity": "ops.example.net"}, {"identity": "OPS.example.net"}], "admin.clients[1].identity")):  # fmt: skip
        with pytest.raises(ConfigError) as refused:
            makeService(parse_config({**base, "admin": {"tls": tls, "clients": clients}}))
        assert refused.value.key == key_name, (clients, refused.value)


def test_admin_tls_files_that_do_not_load_stop_the_start_naming_the_key(tmp_path: Path, pki: dict[str, Any]) -> None:
    certificate, _ = pki["server"]
    _, other_key = pki["ops"]  # a key, but not the certificate's
    config = parse_config({
        "server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"]},
        "admin": {"port": 0, "tls_port": 0, "tls": {"certificate": certificate, "private_key": other_key, "client_ca": pki["ca"]}},
    })  # fmt: skip
    service = makeService(config)
    with pytest.raises(ConfigError) as refused:
        service.privilegedStartService()
    assert refused.value.key == "admin.tls.private_key" and service.admin.listening is None


@pytest_twisted.inlineCallbacks
def test_tls_reload_rotates_the_admin_api_certificate_too(service: Any, pki: dict[str, Any], tmp_path: Path) -> Any:
    from cert_support import served_subject

    port = service.admin.tls_listening.getHost().port
    assert "CN=127.0.0.1" in (yield threads.deferToThread(served_subject, port))
    certificate, key = service.config.admin.tls.certificate, service.config.admin.tls.private_key
    ca = make_ca("the CA of the rotated certificate")
    new_cert, new_key = make_leaf("admin-2.example.net", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], ca)
    write_pem(certificate, new_cert)
    write_pem(key, key=new_key)
    ops_certificate, ops_key = pki["ops"]
    client = AdminClient(_https(service), "", certificate=ops_certificate, key=ops_key, cacert=pki["ca"])
    served = yield threads.deferToThread(client.reload_tls)  # over the connection's old certificate, checked against the old CA
    assert "admin-2.example.net" in served["subject"]
    assert "CN=admin-2.example.net" in (yield threads.deferToThread(served_subject, port))
    # a key that does not match: 409, the certificate in use kept
    Path(key).write_bytes(Path(pki["ops"][1]).read_bytes())
    rotated = AdminClient(_https(service), _token(service), cacert=str(write_pem(tmp_path / "ca-new.pem", ca[0])))
    with pytest.raises(AdminError) as refused:
        yield threads.deferToThread(rotated.reload_tls)
    assert refused.value.status == 409 and "admin.tls.private_key" in refused.value.message
    assert "CN=admin-2.example.net" in (yield threads.deferToThread(served_subject, port))
