"""Client-certificate (mutual TLS) identities for SIP trunks (RFC 5922).

The TLS layer has already verified the peer's chain against ``[tls]
client_ca`` (:meth:`sipshield.transport.TLSMaterial.options`); what is left
is reading the SIP domain identities out of the verified certificate
(RFC 5922 7.1) and mapping them, by exact comparison (RFC 5922 7.2), to a
configured trunk account.

Matching is exact and case-insensitive on domains.  Wildcard names are not
identities: RFC 5922 7.2 forbids wildcard matching of SIP domain
identities, which is why service_identity's DNS matching (wildcard-aware,
for HTTPS-style server names) is not used here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from sipshield.auth._checkers import Identity

__all__ = ["TrunkAccount", "TrunkMap", "certificate_identities", "normalize_identity"]

# RFC 1035 2.3.1 / RFC 1123 2.1 host names, in A-label (ASCII) form as
# RFC 5280 4.2.1.6 requires for dNSName.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_MAX_HOSTNAME = 253


def _host_name(text: str) -> str | None:
    """A lower-cased host name, or None if *text* is not one (no wildcards,
    no IP literals, no empty labels)."""
    host = text.strip().lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > _MAX_HOSTNAME or not _HOSTNAME.match(host):
        return None
    if host.replace(".", "").isdigit():
        return None  # a dotted-quad IPv4 literal is not a SIP domain
    return host


def _sip_uri_domain(uri: str) -> str | None:
    """The domain of a ``sip:domain`` subjectAltName URI, else None.

    RFC 5922 7.1 step 1: only the ``sip`` scheme yields an identity (a
    ``sips`` URI or any other scheme is not accepted).  A URI with a user
    part, port, parameters or headers does not name a SIP domain (RFC 5922
    5: the URI holds the scheme and the domain only) and is ignored.
    """
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme.lower() != "sip":
        return None
    if any(c in rest for c in "@;?:/[]"):
        return None
    return _host_name(rest)


def _as_cryptography(cert: Any) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    to_cryptography = getattr(cert, "to_cryptography", None)
    if to_cryptography is None:
        raise TypeError(f"expected a pyOpenSSL X509 or a cryptography Certificate, not {type(cert).__name__}")
    converted = to_cryptography()
    if not isinstance(converted, x509.Certificate):
        raise TypeError("to_cryptography() did not return a cryptography Certificate")
    return converted


def certificate_identities(cert: Any) -> list[str]:
    """The SIP domain identities a certificate asserts (RFC 5922 7.1).

    *cert* is a pyOpenSSL ``X509`` (as :meth:`SIPStreamProtocol.peer_certificate`
    returns) or a cryptography ``Certificate``.  The caller must only pass a
    certificate whose chain the TLS layer verified.

    Returns, in certificate order and without duplicates: first each
    subjectAltName URI of scheme ``sip`` as ``"sip:<domain>"``, then each
    subjectAltName dNSName as ``"<domain>"``, all lower-cased.  The subject
    CN is used (as ``"<domain>"``) if and only if the certificate has no
    subjectAltName extension at all (RFC 5922 7.1 step 3), and only when it
    is a valid host name.  Wildcard and IP-address names yield nothing.
    """
    certificate = _as_cryptography(cert)
    found: list[str] = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            domain = _sip_uri_domain(uri)
            if domain is not None:
                found.append(f"sip:{domain}")
        for name in san.get_values_for_type(x509.DNSName):
            domain = _host_name(name)
            if domain is not None:
                found.append(domain)
    else:
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = attribute.value
            domain = _host_name(value if isinstance(value, str) else value.decode("ascii", "replace"))
            if domain is not None:
                found.append(domain)
    return list(dict.fromkeys(found))


def normalize_identity(identity: str) -> str:
    """The canonical form of a configured trunk identity: ``sip:<domain>``
    or ``<domain>``, lower-cased.  Raises ValueError for anything else
    (a user part, a port, a wildcard, another scheme)."""
    text = identity.strip()
    if text[:4].lower() == "sip:":
        domain = _sip_uri_domain(text)
        if domain is None:
            raise ValueError(f"{identity!r} is not a sip:<domain> URI (RFC 5922 7.1)")
        return f"sip:{domain}"
    domain = _host_name(text)
    if domain is None:
        raise ValueError(f"{identity!r} is neither a host name nor a sip:<domain> URI (RFC 5922 7.1)")
    return domain


@dataclass(frozen=True)
class TrunkAccount:
    """The account a trunk acts as once its certificate is recognised:
    ``name`` and ``domain`` form the identity, ``roles`` feed RBAC."""

    name: str
    domain: str
    roles: tuple[str, ...] = ()

    def identity(self) -> Identity:
        """The avatar the auth stage sets on the request context, the same
        type digest login produces."""
        return Identity(self.name, self.domain.lower(), frozenset(self.roles))


class TrunkMap:
    """Configured certificate identities -> trunk accounts.

    Keys are identities as :func:`certificate_identities` returns them
    (``"sip:trunk.example.net"`` or ``"trunk.example.net"``), compared
    exactly and case-insensitively (RFC 5922 7.2: no wildcards, no suffix
    matching).  A ``sip:`` key and a bare host name key are distinct: a
    certificate with only ``DNS:trunk.example.net`` does not match the key
    ``"sip:trunk.example.net"``.  Raises ValueError for an invalid key or
    for two keys that differ only in case.
    """

    def __init__(self, mapping: Mapping[str, TrunkAccount]) -> None:
        self._accounts: dict[str, TrunkAccount] = {}
        for key, account in mapping.items():
            canonical = normalize_identity(key)
            if canonical in self._accounts:
                raise ValueError(f"trunk identity {key!r} is configured twice")
            self._accounts[canonical] = account

    def __len__(self) -> int:
        return len(self._accounts)

    def match(self, cert: Any) -> TrunkAccount | None:
        """The account of the first of the certificate's identities (in
        :func:`certificate_identities` order) that is configured, or None.
        ``None`` (no client certificate was presented) gives None."""
        if cert is None:
            return None
        for identity in certificate_identities(cert):
            account = self._accounts.get(identity)
            if account is not None:
                return account
        return None
