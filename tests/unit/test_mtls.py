"""Client-certificate identities (RFC 5922 7.1) and the trunk map (RFC 5922 7.2)."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cert_support import make_ca, make_leaf
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import crypto

from sipshield.auth._checkers import Identity
from sipshield.auth._mtls import TrunkAccount, TrunkMap, certificate_identities, normalize_identity

NOW = datetime.datetime(2026, 11, 28, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return make_ca(now=NOW)


@pytest.fixture(scope="module")
def trunk_cert(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> x509.Certificate:
    san: list[x509.GeneralName] = [
        x509.DNSName("edge1.trunk.example.net"),
        x509.UniformResourceIdentifier("sip:trunk.example.net"),
        x509.DNSName("Trunk.Example.NET"),
    ]
    return make_leaf("ignored-cn.example.net", san, ca, now=NOW)[0]


def test_sip_uri_identities_come_first_then_dns_names_lower_cased(trunk_cert: x509.Certificate) -> None:
    assert certificate_identities(trunk_cert) == ["sip:trunk.example.net", "edge1.trunk.example.net", "trunk.example.net"]


def test_pyopenssl_x509_gives_the_same_identities(trunk_cert: x509.Certificate) -> None:
    assert certificate_identities(crypto.X509.from_cryptography(trunk_cert)) == certificate_identities(trunk_cert)


def test_cn_is_used_only_when_there_is_no_subject_alt_name(ca) -> None:
    cn_only, _ = make_leaf("Legacy.Trunk.Example.ORG", None, ca)
    assert certificate_identities(cn_only) == ["legacy.trunk.example.org"]
    # RFC 5922 7.1 step 3: a SAN without any usable name still hides the CN.
    email_only, _ = make_leaf("legacy.trunk.example.org", [x509.RFC822Name("noc@example.org")], ca)
    assert certificate_identities(email_only) == []


def test_cn_that_is_not_a_host_name_is_no_identity(ca) -> None:
    cert, _ = make_leaf("ACME Trunk Gateway", None, ca)
    assert certificate_identities(cert) == []


def test_sips_user_part_wildcard_ip_and_other_schemes_are_not_identities(ca) -> None:
    san: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier("sips:secure.example.net"),  # RFC 5922 7.1: only "sip" is accepted
        x509.UniformResourceIdentifier("sip:alice@users.example.net"),
        x509.UniformResourceIdentifier("sip:trunk.example.net:5061"),
        x509.UniformResourceIdentifier("sip:trunk.example.net;transport=tls"),
        x509.UniformResourceIdentifier("https://trunk.example.net/"),
        x509.DNSName("*.example.net"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
        x509.DNSName("192.0.2.8"),
        x509.UniformResourceIdentifier("SIP:Upper.Example.Net"),
    ]
    cert, _ = make_leaf("trunk.example.net", san, ca)
    assert certificate_identities(cert) == ["sip:upper.example.net"]


def test_duplicate_names_are_listed_once(ca) -> None:
    cert, _ = make_leaf("x", [x509.DNSName("a.example.net"), x509.DNSName("A.example.net.")], ca)
    assert certificate_identities(cert) == ["a.example.net"]


def test_other_objects_are_refused() -> None:
    with pytest.raises(TypeError):
        certificate_identities("sip:trunk.example.net")


def test_leaf_chains_to_ca_and_self_signed_does_not(ca, trunk_cert: x509.Certificate) -> None:
    """The fixtures mean what the e2e test relies on: the TLS layer (not this
    module) refuses the self-signed certificate."""
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(ca[0]))
    store.set_time(NOW.replace(tzinfo=None))
    crypto.X509StoreContext(store, crypto.X509.from_cryptography(trunk_cert)).verify_certificate()
    rogue, _ = make_leaf("trunk.example.net", [x509.UniformResourceIdentifier("sip:trunk.example.net")], now=NOW)
    with pytest.raises(crypto.X509StoreContextError):
        crypto.X509StoreContext(store, crypto.X509.from_cryptography(rogue)).verify_certificate()
    # Identities are read, never trusted, here: a caller must only pass verified certificates.
    assert certificate_identities(rogue) == ["sip:trunk.example.net"]


CARRIER = TrunkAccount("carrier", "trunk.example.net", ("trunk",))
BACKUP = TrunkAccount("backup", "example.com", ("trunk",))


def test_trunk_map_matches_the_sip_uri_identity_case_insensitively(trunk_cert: x509.Certificate) -> None:
    trunks = TrunkMap({"SIP:TRUNK.example.net": CARRIER})
    assert trunks.match(trunk_cert) is CARRIER
    assert trunks.match(crypto.X509.from_cryptography(trunk_cert)) is CARRIER


def test_trunk_map_takes_the_first_configured_identity_of_the_certificate(trunk_cert: x509.Certificate) -> None:
    trunks = TrunkMap({"edge1.trunk.example.net": BACKUP, "sip:trunk.example.net": CARRIER})
    assert trunks.match(trunk_cert) is CARRIER


def test_dns_identity_does_not_satisfy_a_sip_uri_key(ca) -> None:
    cert, _ = make_leaf("x", [x509.DNSName("trunk.example.net")], ca)
    assert TrunkMap({"sip:trunk.example.net": CARRIER}).match(cert) is None
    assert TrunkMap({"trunk.example.net": CARRIER}).match(cert) is CARRIER


def test_no_suffix_or_wildcard_matching(ca) -> None:
    cert, _ = make_leaf("x", [x509.DNSName("evil-trunk.example.net"), x509.DNSName("trunk.example.net.evil.org")], ca)
    assert TrunkMap({"trunk.example.net": CARRIER}).match(cert) is None
    with pytest.raises(ValueError):
        TrunkMap({"*.example.net": CARRIER})


def test_unknown_certificate_or_no_certificate_matches_nothing(ca) -> None:
    cn_only, _ = make_leaf("other.example.org", None, ca)
    trunks = TrunkMap({"sip:trunk.example.net": CARRIER})
    assert trunks.match(cn_only) is None
    assert trunks.match(None) is None


@pytest.mark.parametrize("key", ["sip:alice@trunk.example.net", "sips:trunk.example.net", "sip:trunk.example.net:5061", "", "trunk example"])
def test_trunk_map_refuses_keys_that_are_not_domain_identities(key: str) -> None:
    with pytest.raises(ValueError):
        TrunkMap({key: CARRIER})


def test_trunk_map_refuses_keys_that_differ_only_in_case() -> None:
    with pytest.raises(ValueError, match="configured twice"):
        TrunkMap({"trunk.example.net": CARRIER, "TRUNK.example.net": BACKUP})
    assert len(TrunkMap({"trunk.example.net": CARRIER, "sip:trunk.example.net": BACKUP})) == 2


def test_normalize_identity() -> None:
    assert normalize_identity(" SIP:Trunk.Example.Net ") == "sip:trunk.example.net"
    assert normalize_identity("Trunk.Example.Net.") == "trunk.example.net"


def test_trunk_account_identity_is_what_digest_login_produces() -> None:
    identity = TrunkAccount("carrier", "Trunk.Example.Net", ("trunk", "monitor")).identity()
    assert identity == Identity("carrier", "trunk.example.net", frozenset({"trunk", "monitor"}))
    assert identity.aor == "sip:carrier@trunk.example.net"
