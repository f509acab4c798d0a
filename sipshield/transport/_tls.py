"""TLS material for the SIP-over-TLS listeners (RFC 3261 26.2, RFC 5630).

Certificates are checked when the configuration is checked, so an unreadable
or mismatched file is refused before anything listens.  When no certificate
is configured, a self-signed one is generated into the data directory on
first start (private key mode 0600).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from sipshield.config import ConfigError, TLSConfig

__all__ = ["ServerTLSContext", "TLSMaterial", "generate_self_signed", "load_tls_material"]

SELF_SIGNED_CERT = "tls-selfsigned.pem"
SELF_SIGNED_KEY = "tls-selfsigned.key"

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_CERTIFICATE_KEYS = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey, dsa.DSAPrivateKey)
"""The private keys a certificate can be served with (CertificateIssuerPrivateKeyTypes)."""


def _write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, created with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def generate_self_signed(cert_path: Path, key_path: Path, names: list[str], *, days: int = 825) -> None:
    """Create a self-signed ECDSA P-256 certificate valid for ``names``.

    IP addresses go in as iPAddress subjectAltNames, the rest as dNSName and
    ``sip:`` URI entries (RFC 5922 7.1).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    common = names[0] if names else "sipshield"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sipshield self-signed")])
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
            alt.append(x509.UniformResourceIdentifier(f"sip:{name}"))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(63) + 1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class TLSMaterial:
    """Loaded, cross-checked certificate, key and optional client CA bundle.

    The certificate, its chain and the key are ``cryptography`` objects:
    pyOpenSSL's ``Context.use_certificate``, ``use_privatekey`` and
    ``add_extra_chain_cert``, to which Twisted's CertificateOptions hands
    them unchanged, take those and deprecate their own X509 and PKey.  The
    client CAs stay pyOpenSSL X509s: Twisted adds them to the context's
    ``X509Store``, whose ``add_cert`` takes nothing else."""

    def __init__(
        self, certificate: x509.Certificate, chain: list[x509.Certificate], private_key: CertificateIssuerPrivateKeyTypes, client_cas: list[crypto.X509],
        minimum_version: str, maximum_version: str | None = None,
    ) -> None:
        self.certificate = certificate
        self.chain = chain
        self.private_key = private_key
        self.client_cas = client_cas
        self.minimum_version = minimum_version
        self.maximum_version = maximum_version

    def options(self) -> ssl.CertificateOptions:
        """Build CertificateOptions; client certificates are requested and, when
        ``client_ca`` is configured, must chain to it (RFC 5922 mutual TLS)."""
        kwargs: dict[str, object] = {}
        if self.client_cas:
            kwargs.update(verify=True, caCerts=self.client_cas, requireCertificate=False)
        if self.maximum_version is not None:
            kwargs["lowerMaximumSecurityTo"] = _VERSIONS[self.maximum_version]
        return ssl.CertificateOptions(
            privateKey=self.private_key,  # type: ignore[arg-type]  # typed PKey; passed to Context.use_privatekey as it is
            certificate=self.certificate,  # type: ignore[arg-type]  # typed X509; passed to Context.use_certificate as it is
            extraCertChain=self.chain or None,  # type: ignore[arg-type]  # each passed to Context.add_extra_chain_cert
            raiseMinimumTo=_VERSIONS[self.minimum_version],
            **kwargs,  # type: ignore[arg-type]
        )


def _read(path: Path, key: str, source: str | None) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", key=key, source=source) from None


def _load_certs(data: bytes, path: Path, key: str, source: str | None) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{path} holds no PEM certificate", key=key, source=source) from None


def load_tls_material(tls: TLSConfig, data_dir: Path, *, source: str | None = None, section: str = "tls") -> TLSMaterial | None:
    """Load the configured certificate and key, or the generated self-signed
    pair from ``data_dir`` if present.  Returns None when the self-signed pair
    has not been generated yet.  Raises ConfigError naming the key (in
    *section*: ``tls``, or ``admin.tls`` for the admin API's) and file."""
    if tls.certificate is None or tls.private_key is None:
        cert_path, key_path = data_dir / SELF_SIGNED_CERT, data_dir / SELF_SIGNED_KEY
        if not (cert_path.exists() and key_path.exists()):
            certs_and_key = None
        else:
            certs_and_key = (cert_path, key_path)
        cert_key, key_key = f"{section}.certificate (generated)", f"{section}.private_key (generated)"
    else:
        certs_and_key = (tls.certificate, tls.private_key)
        cert_key, key_key = f"{section}.certificate", f"{section}.private_key"
    client_cas: list[crypto.X509] = []
    if tls.client_ca is not None:
        ca_key = f"{section}.client_ca"
        client_cas = [crypto.X509.from_cryptography(c) for c in _load_certs(_read(tls.client_ca, ca_key, source), tls.client_ca, ca_key, source)]
    if certs_and_key is None:
        return None
    cert_path, key_path = certs_and_key
    certs = _load_certs(_read(cert_path, cert_key, source), cert_path, cert_key, source)
    key_data = _read(key_path, key_key, source)
    try:
        private = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key_path} holds no usable unencrypted PEM private key ({e})", key=key_key, source=source) from None
    if not isinstance(private, _CERTIFICATE_KEYS):
        # X25519/X448 (key agreement only) and DH keys: what pyOpenSSL's PKey refused as unsupported too.
        raise ConfigError(f"{key_path} holds no usable unencrypted PEM private key ({type(private).__name__}: not a signing key)", key=key_key, source=source)
    ctx = SSL.Context(SSL.TLS_METHOD)
    try:
        ctx.use_certificate(certs[0])
        ctx.use_privatekey(private)
        ctx.check_privatekey()
    except SSL.Error:
        raise ConfigError(f"{key_path} does not match the certificate in {cert_path}", key=key_key, source=source) from None
    return TLSMaterial(certs[0], certs[1:], private, client_cas, tls.minimum_version, tls.maximum_version)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLSContext:
    """A server TLS connection creator whose material can be replaced at run
    time: new connections use the new context, open ones keep theirs.

    ``CertificateOptions`` caches its OpenSSL context, so reloading means
    swapping the options object behind this wrapper.
    """

    def __init__(self, material: TLSMaterial) -> None:
        self.reload(material)

    def reload(self, material: TLSMaterial) -> None:
        self.material = material
        self._options = material.options()

    def getContext(self) -> SSL.Context:
        return self._options.getContext()

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.getContext(), None)
