"""Certificates for the TLS tests: a CA (or an intermediate), leaves it signs, PEM files."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now or datetime.datetime.now(datetime.UTC)


def make_ca(name: str = "sipshield test CA", issuer: Issued | None = None, now: datetime.datetime | None = None) -> Issued:
    """A CA certificate: self-signed, or an intermediate signed by *issuer*."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (_name(name), key)
    cert = (
        x509.CertificateBuilder().subject_name(_name(name)).issuer_name(issuer_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(_now(now) - datetime.timedelta(days=1)).not_valid_after(_now(now) + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True)
        .sign(signer, hashes.SHA256())
    )
    return cert, key


def make_leaf(cn: str, san: list[x509.GeneralName] | None, issuer: Issued | None = None, now: datetime.datetime | None = None) -> Issued:
    """A leaf signed by *issuer*, or self-signed when *issuer* is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (_name(cn), key)
    builder = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(_now(now) - datetime.timedelta(days=1)).not_valid_after(_now(now) + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signer, hashes.SHA256()), key


def write_pem(path: Path, *certs: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    """*certs* (leaf first), or *key* unencrypted, as one PEM file."""
    if key is not None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    else:
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def served_subject(port: int, host: str = "127.0.0.1") -> str:
    """The subject of the certificate a TLS server at host:port presents (not verified)."""
    import socket
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()
