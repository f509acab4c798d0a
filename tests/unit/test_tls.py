"""TLS material: self-signed generation, file checks and errors naming the key."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from cert_support import Issued, make_ca, make_leaf, write_pem
from cryptography import x509
from OpenSSL import SSL, crypto

from sipshield.config import ConfigError, TLSConfig
from sipshield.transport import ServerTLSContext, generate_self_signed, load_tls_material
from sipshield.transport._tls import SELF_SIGNED_CERT, SELF_SIGNED_KEY


def test_self_signed_key_is_private_and_loads(tmp_path: Path) -> None:
    cert, key = tmp_path / SELF_SIGNED_CERT, tmp_path / SELF_SIGNED_KEY
    generate_self_signed(cert, key, ["example.com", "127.0.0.1"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    material = load_tls_material(TLSConfig(), tmp_path)
    assert material is not None
    names = str(material.certificate.extensions)
    assert "example.com" in names and "127.0.0.1" in names and "sip:example.com" in names
    context = ServerTLSContext(material)
    assert context.getContext() is not None


def test_no_generated_pair_yet_means_none(tmp_path: Path) -> None:
    assert load_tls_material(TLSConfig(), tmp_path) is None


def test_unreadable_certificate_names_key_and_file(tmp_path: Path) -> None:
    tls = TLSConfig(certificate=tmp_path / "missing.pem", private_key=tmp_path / "missing.key")
    with pytest.raises(ConfigError) as info:
        load_tls_material(tls, tmp_path, source="site.toml")
    assert str(info.value) == f"site.toml: tls.certificate: cannot read {tmp_path / 'missing.pem'}: No such file or directory"


def test_garbage_certificate_and_mismatched_key_are_refused(tmp_path: Path) -> None:
    generate_self_signed(tmp_path / "a.pem", tmp_path / "a.key", ["a.example"])
    generate_self_signed(tmp_path / "b.pem", tmp_path / "b.key", ["b.example"])
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="tls.certificate: .*junk.pem holds no PEM certificate"):
        load_tls_material(TLSConfig(certificate=tmp_path / "junk.pem", private_key=tmp_path / "a.key"), tmp_path)
    with pytest.raises(ConfigError, match="tls.private_key: .*b.key does not match the certificate"):
        load_tls_material(TLSConfig(certificate=tmp_path / "a.pem", private_key=tmp_path / "b.key"), tmp_path)
    with pytest.raises(ConfigError, match="tls.client_ca: cannot read"):
        load_tls_material(TLSConfig(client_ca=tmp_path / "ca.pem"), tmp_path)


def test_only_half_a_generated_pair_means_none(tmp_path: Path) -> None:
    """A certificate without its key (a start-up cut short) is generated anew, not half loaded."""
    generate_self_signed(tmp_path / SELF_SIGNED_CERT, tmp_path / SELF_SIGNED_KEY, ["example.com"])
    (tmp_path / SELF_SIGNED_KEY).unlink()
    assert load_tls_material(TLSConfig(), tmp_path) is None


# -- what the listener's TLS context lets through: handshakes in memory (no socket) --------

def _handshake(server_context: ServerTLSContext, client: SSL.Context) -> tuple[SSL.Connection, SSL.Connection]:
    """A TLS handshake between the listener's connection and *client*,
    bytes passed through memory BIOs; raises SSL.Error when either refuses."""
    server = server_context.serverConnectionForTLS(None)
    server.set_accept_state()
    peer = SSL.Connection(client, None)
    peer.set_connect_state()
    done = {server: False, peer: False}
    for _ in range(20):
        for side, other in ((peer, server), (server, peer)):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except SSL.WantReadError:
                    pass
            try:
                other.bio_write(side.bio_read(65536))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            # TLS 1.3: the server judges the client certificate after the
            # client thinks it is done; the server's verdict reaches it on read.
            try:
                peer.recv(1)
            except SSL.WantReadError:
                pass
            return server, peer
    raise AssertionError("handshake did not finish")


def _client(max_version: int | None = None, cert: Issued | None = None, trust: x509.Certificate | None = None) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    if cert is not None:
        context.use_certificate(cert[0])
        context.use_privatekey(cert[1])
    if trust is not None:
        context.get_cert_store().add_cert(crypto.X509.from_cryptography(trust))  # type: ignore[union-attr]
        context.set_verify(SSL.VERIFY_PEER)
    return context


def _listener(tmp_path: Path, **tls: Any) -> ServerTLSContext:
    generate_self_signed(tmp_path / SELF_SIGNED_CERT, tmp_path / SELF_SIGNED_KEY, ["127.0.0.1"])
    material = load_tls_material(TLSConfig(**tls), tmp_path)
    assert material is not None
    return ServerTLSContext(material)


def test_minimum_version_refuses_an_older_client(tmp_path: Path) -> None:
    """``[tls] minimum_version`` (downgrade): a client that stops at TLS 1.2 gets no connection to a TLS 1.3 listener."""
    listener = _listener(tmp_path, minimum_version="TLSv1.3")
    with pytest.raises(SSL.Error):
        _handshake(listener, _client(SSL.TLS1_2_VERSION))
    server, _ = _handshake(listener, _client())
    assert server.get_protocol_version_name() == "TLSv1.3"


def test_maximum_version_caps_what_is_negotiated(tmp_path: Path) -> None:
    server, _ = _handshake(_listener(tmp_path, maximum_version="TLSv1.2"), _client())
    assert server.get_protocol_version_name() == "TLSv1.2"


@pytest.fixture(scope="module")
def client_ca() -> Issued:
    return make_ca("sipshield client CA")


def test_with_client_ca_a_certificate_from_another_ca_is_refused_and_none_is_allowed(tmp_path: Path, client_ca: Issued) -> None:
    """RFC 5922 mutual TLS: a client certificate must chain to ``[tls]
    client_ca`` (a self-signed one claiming a trunk's name gets no
    connection); a client without one still connects (digest may follow),
    and only a verified certificate reaches the auth stage."""
    listener = _listener(tmp_path, client_ca=write_pem(tmp_path / "client-ca.pem", client_ca[0]))
    trunk = make_leaf("trunk.example.net", [x509.UniformResourceIdentifier("sip:trunk.example.net")], client_ca)
    rogue = make_leaf("trunk.example.net", [x509.UniformResourceIdentifier("sip:trunk.example.net")])
    with pytest.raises(SSL.Error):
        _handshake(listener, _client(cert=rogue))
    server, _ = _handshake(listener, _client(cert=trunk))
    assert server.get_peer_certificate().to_cryptography() == trunk[0]  # type: ignore[union-attr]
    server, _ = _handshake(listener, _client())
    assert server.get_peer_certificate() is None


def test_the_configured_chain_is_sent_so_clients_trusting_only_the_root_connect(tmp_path: Path) -> None:
    root = make_ca("sipshield root")
    intermediate = make_ca("sipshield intermediate", issuer=root)
    leaf = make_leaf("127.0.0.1", [x509.DNSName("sip.example.com")], intermediate)
    tls = {"certificate": write_pem(tmp_path / "chain.pem", leaf[0], intermediate[0]), "private_key": write_pem(tmp_path / "leaf.key", key=leaf[1])}
    material = load_tls_material(TLSConfig(**tls), tmp_path)
    assert material is not None
    _handshake(ServerTLSContext(material), _client(trust=root[0]))


def test_the_listener_context_is_built_without_pyopenssl_deprecations(tmp_path: Path, client_ca: Issued) -> None:
    """Certificate, chain and key reach pyOpenSSL as cryptography objects (its
    X509 and PKey are deprecated there); the client CAs go to the X509Store,
    which takes only X509s and does not warn."""
    import warnings

    root = make_ca("sipshield root")
    intermediate = make_ca("sipshield intermediate", issuer=root)
    leaf = make_leaf("sip.example.com", [x509.DNSName("sip.example.com")], intermediate)
    tls = {
        "certificate": write_pem(tmp_path / "chain.pem", leaf[0], intermediate[0]),
        "private_key": write_pem(tmp_path / "leaf.key", key=leaf[1]),
        "client_ca": write_pem(tmp_path / "client-ca.pem", client_ca[0]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        material = load_tls_material(TLSConfig(**tls), tmp_path)
        assert material is not None
        assert (material.certificate, material.chain) == (leaf[0], [intermediate[0]])
        server, _ = _handshake(ServerTLSContext(material), _client(cert=make_leaf("trunk.example.net", None, client_ca), trust=root[0]))
    assert server.get_peer_certificate() is not None


def test_a_key_that_cannot_sign_is_refused_naming_the_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    generate_self_signed(tmp_path / "a.pem", tmp_path / "a.key", ["a.example"])
    (tmp_path / "x.key").write_bytes(
        x25519.X25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with pytest.raises(ConfigError, match=r"tls.private_key: .*x.key holds no usable unencrypted PEM private key \(X25519PrivateKey: not a signing key\)"):
        load_tls_material(TLSConfig(certificate=tmp_path / "a.pem", private_key=tmp_path / "x.key"), tmp_path)
