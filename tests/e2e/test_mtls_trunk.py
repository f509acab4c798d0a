"""End to end: SIP over mutual TLS (RFC 5922) against the real twistd service.

The server keeps its generated self-signed certificate and is given
``[tls] client_ca`` = a test CA written into the workdir.  A client
certificate that chains to that CA completes the handshake and gets answers;
a self-signed (untrusted) one is refused by the TLS layer, before any SIP.
"""

from __future__ import annotations

import datetime
import re
import socket
import ssl
from pathlib import Path

import pytest
from conftest import ephemeral_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sipshield.auth._mtls import TrunkAccount, TrunkMap

pytestmark = pytest.mark.e2e
CLIENT_CA = '[tls]\nclient_ca = "ca.pem"'
TRUNK = "trunk.example.net"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"sip:{TRUNK}"), x509.DNSName(TRUNK)]), critical=False,
        ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write_pair(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """ca.pem in the server's workdir, a trunk certificate it signed, and a
    self-signed impostor with the same names."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("sipshield e2e CA", ca_key, _name("sipshield e2e CA"), ca_key, ca=True)
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    clients = tmp_path / "clients"
    clients.mkdir()
    trunk_key = ec.generate_private_key(ec.SECP256R1())
    trunk = _certificate(TRUNK, trunk_key, ca_cert.subject, ca_key, ca=False)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = _certificate(TRUNK, rogue_key, _name(TRUNK), rogue_key, ca=False)
    return {"trunk": _write_pair(clients, "trunk", trunk, trunk_key), "rogue": _write_pair(clients, "rogue", rogue, rogue_key)}


def _context(server_ca: Path, client: tuple[Path, Path] | None, maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server_ca))
    context.maximum_version = maximum
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    return context


def _options(tls: ssl.SSLSocket, port: int) -> bytes:
    local = tls.getsockname()
    tls.sendall(
        (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TLS {local[0]}:{local[1]};branch=z9hG4bKmtls1\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@{TRUNK}>;tag=1\r\nTo: <sip:example.com>\r\n"
            "Call-ID: mtls-probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    return tls.recv(65535)


def test_client_certificate_from_the_configured_ca_is_accepted(start_server, tmp_path: Path, pki) -> None:
    server = start_server(ephemeral_config(extra=CLIENT_CA, trusted=False))
    host, port = server.addresses["tls"]
    context = _context(tmp_path / "data" / "tls-selfsigned.pem", pki["trunk"])
    with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        answer = _options(tls, port)
    assert answer.startswith(b"SIP/2.0 200 OK\r\n"), answer.decode(errors="replace") + server.log
    assert b"\r\nCall-ID: mtls-probe\r\n" in answer


def test_client_certificate_stays_optional(start_server, tmp_path: Path) -> None:
    """requireCertificate=False: UAs without a certificate still reach
    digest authentication (OPTIONS to the proxy needs none)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("only CA", ca_key, _name("only CA"), ca_key, ca=True)
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server = start_server(ephemeral_config(extra=CLIENT_CA, trusted=False))
    host, port = server.addresses["tls"]
    context = _context(tmp_path / "data" / "tls-selfsigned.pem", None)
    with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert _options(tls, port).startswith(b"SIP/2.0 200 OK\r\n")


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_untrusted_client_certificate_is_refused_by_the_tls_layer(start_server, tmp_path: Path, pki, maximum: ssl.TLSVersion) -> None:
    """TLS 1.2 fails the handshake itself; in TLS 1.3 the client finishes
    first and learns of the server's alert on its first read."""
    server = start_server(ephemeral_config(extra=CLIENT_CA, trusted=False))
    host, port = server.addresses["tls"]
    context = _context(tmp_path / "data" / "tls-selfsigned.pem", pki["rogue"], maximum)
    with pytest.raises((ssl.SSLError, ConnectionError)) as refused, socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            answer = _options(tls, port)
            assert not answer.startswith(b"SIP/2.0"), server.log
            raise ConnectionResetError("closed without an answer")
    if isinstance(refused.value, ssl.SSLError):
        # The server's alert names the reason: the chain does not reach client_ca.
        assert "UNKNOWN_CA" in str(refused.value), server.log


def test_trunk_map_recognises_the_certificate_the_server_accepted(pki) -> None:
    """The identities the lead's auth stage will read from peer_certificate()."""
    cert = x509.load_pem_x509_certificate(pki["trunk"][0].read_bytes())
    account = TrunkAccount("carrier", TRUNK, ("trunk",))
    assert TrunkMap({f"sip:{TRUNK}": account}).match(cert) is account


TRUNK_CONFIG = CLIENT_CA + f'\n[[auth.tls.trunks]]\nidentity = "sip:{TRUNK}"\nname = "carrier"\nroles = ["trunk"]\n'


def _invite(tls: ssl.SSLSocket) -> bytes:
    local = tls.getsockname()
    tls.sendall(
        (
            f"INVITE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/TLS {local[0]}:{local[1]};branch=z9hG4bKtrunk{local[1]}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:+15551234@pstn.example.org>;tag=9\r\nTo: <sip:alice@example.com>\r\n"
            f"Call-ID: trunk-{local[1]}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    data = b""
    final = re.compile(rb"SIP/2\.0 [2-6]\d\d .*?\r\n\r\n", re.S)
    while not final.search(data):
        chunk = tls.recv(65535)  # bounded by the socket's 10 s timeout
        if not chunk:
            break
        data += chunk
    return data[data.rfind(b"SIP/2.0 "):]


def test_trunk_with_mapped_certificate_is_not_challenged(start_server, tmp_path: Path, pki) -> None:
    server = start_server(ephemeral_config(extra=TRUNK_CONFIG, trusted=False))
    host, port = server.addresses["tls"]
    server_ca = tmp_path / "data" / "tls-selfsigned.pem"
    with socket.create_connection((host, port), timeout=10) as raw, _context(server_ca, pki["trunk"]).wrap_socket(raw, server_hostname="localhost") as tls:
        final = _invite(tls)
    # Authenticated as the trunk, allowed to call, From is the PSTN caller: alice is just not registered.
    assert final.startswith(b"SIP/2.0 404 "), final.decode(errors="replace") + server.log
    with socket.create_connection((host, port), timeout=10) as raw, _context(server_ca, None).wrap_socket(raw, server_hostname="localhost") as tls:
        final = _invite(tls)
    assert final.startswith(b"SIP/2.0 407 "), final
