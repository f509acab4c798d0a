"""Client-certificate identities (RFC 5922 7.1) and the trunk map (RFC 5922 7.2)."""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from pathlib import Path

import pytest
from cert_support import make_ca, make_leaf, write_pem
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import crypto
from pipeline_support import Proxy, RecordingFlow, proxy_service

from sipshield.auth._checkers import Identity
from sipshield.auth._mtls import TrunkAccount, TrunkMap, certificate_identities, normalize_identity
from sipshield.config import ConfigError
from sipshield.message import parse_message

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


# -- through the service: makeService's auth stage with [[auth.tls.trunks]] -------------

# A host name of exactly 253 characters (RFC 1035 2.3.4: the longest there is), labels of 63 at most.
LONGEST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
PSTN_CALLER = "sip:+15551234@pstn.example.org"


class CertFlow(RecordingFlow):
    """A connection whose TLS handshake verified *cert* (pyOpenSSL, as SIPStreamProtocol.peer_certificate gives it)."""

    def __init__(self, cert: x509.Certificate | None, transport: str = "TLS") -> None:
        super().__init__(("198.51.100.7", 5061), transport, local=("127.0.0.1", 5061))
        self.cert = None if cert is None else crypto.X509.from_cryptography(cert)

    def peer_certificate(self) -> crypto.X509 | None:  # type: ignore[override]
        return self.cert


def trunk_proxy(tmp_path: Path, ca, *trunks: dict[str, object]) -> Proxy:
    """The service with bob registered at 127.0.0.3 and *trunks* as [[auth.tls.trunks]]."""
    client_ca = write_pem(tmp_path / "client-ca.pem", ca[0])
    proxy = proxy_service(tmp_path, tls={"client_ca": str(client_ca)}, auth={"tls": {"trunks": list(trunks)}})
    proxy.register("bob", "sip:bob@127.0.0.3:5060")
    return proxy


def trunk_call(proxy: Proxy, flow: CertFlow, method: str = "INVITE", ruri: str = "sip:bob@example.com") -> int | None:
    """A request from the trunk's PSTN side on *flow*: the status answered, or None when it was only forwarded."""
    data = (
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/{flow.transport_name} 198.51.100.7:5061;branch=z9hG4bK{secrets.token_hex(6)}\r\n"
        f"Max-Forwards: 70\r\nFrom: <{PSTN_CALLER}>;tag=9\r\nTo: <{ruri}>\r\nCall-ID: {secrets.token_hex(6)}@trunk\r\n"
        f"CSeq: 1 {method}\r\nContact: <sip:gw@198.51.100.7:5061;transport=tls>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    before = len(flow.sent)
    proxy.core.message_received(parse_message(data), flow)
    finals = [s for s in flow.statuses()[before:] if s >= 200]
    return finals[-1] if finals else None


CARRIER_TRUNK = {"identity": "sip:trunk.example.net", "name": "carrier", "roles": ["trunk"]}


def test_a_mapped_trunk_certificate_calls_without_a_challenge_and_its_from_is_not_its_identity(tmp_path: Path, ca) -> None:
    """The certificate's SIP URI in upper case (RFC 5922 7.2: case-insensitive) names the configured trunk."""
    cert, _ = make_leaf("gw.example.net", [x509.UniformResourceIdentifier("SIP:TRUNK.EXAMPLE.NET")], ca)
    proxy = trunk_proxy(tmp_path, ca, CARRIER_TRUNK)
    try:
        flow = CertFlow(cert)
        assert trunk_call(proxy, flow) is None
        (relayed,) = proxy.relayed("INVITE")
        assert str(relayed.uri) == "sip:bob@127.0.0.3:5060" and str(relayed.from_.uri) == PSTN_CALLER
        assert flow.authenticated
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    "san",
    [
        [x509.DNSName("trunk.example.net")],  # a dNSName never satisfies a sip: key
        [x509.UniformResourceIdentifier("sip:evil-trunk.example.net"), x509.UniformResourceIdentifier("sip:trunk.example.net.evil.org")],
        [x509.UniformResourceIdentifier("sip:carrier@trunk.example.net")],  # a user part is no domain identity
        [x509.UniformResourceIdentifier("sips:trunk.example.net")],
        [x509.RFC822Name("noc@trunk.example.net")],  # a SAN without a SIP name: the CN below is not read
    ],
    ids=["dns-name", "suffix", "user-part", "sips", "cn-behind-san"],
)
def test_a_certificate_naming_no_configured_trunk_is_challenged_and_nothing_is_relayed(tmp_path: Path, ca, san) -> None:
    cert, _ = make_leaf("trunk.example.net", san, ca)
    proxy = trunk_proxy(tmp_path, ca, CARRIER_TRUNK, {"identity": "trunk.example.org", "name": "other"})
    try:
        flow = CertFlow(cert)
        assert trunk_call(proxy, flow) == 407
        assert proxy.relayed("INVITE") == [] and not flow.authenticated
    finally:
        proxy.stop()


def test_a_trunk_certificate_counts_only_on_tls(tmp_path: Path, ca) -> None:
    """A flow that is not TLS has no verified certificate, whatever it claims to hold."""
    cert, _ = make_leaf("gw.example.net", [x509.UniformResourceIdentifier("sip:trunk.example.net")], ca)
    proxy = trunk_proxy(tmp_path, ca, CARRIER_TRUNK)
    try:
        assert trunk_call(proxy, CertFlow(cert, transport="TCP")) == 407
        assert trunk_call(proxy, CertFlow(None)) == 407  # TLS without a client certificate
        assert proxy.relayed("INVITE") == []
    finally:
        proxy.stop()


def test_the_trunk_acts_with_the_roles_configured_for_it(tmp_path: Path, ca) -> None:
    cert, _ = make_leaf("gw.example.net", [x509.DNSName("gw.example.net")], ca)
    proxy = trunk_proxy(tmp_path, ca, {"identity": "gw.example.net", "name": "gw", "roles": ["agent"]})
    try:
        flow = CertFlow(cert)
        assert trunk_call(proxy, flow) == 403
        assert flow.messages()[-1].reason == "Forbidden: missing permission call"
        assert proxy.relayed("INVITE") == []
    finally:
        proxy.stop()


def test_a_cn_is_the_identity_only_of_a_certificate_without_subject_alt_name(tmp_path: Path, ca) -> None:
    cert, _ = make_leaf("Legacy.Trunk.Example.ORG", None, ca)
    proxy = trunk_proxy(tmp_path, ca, {"identity": "legacy.trunk.example.org", "name": "legacy"})
    try:
        assert trunk_call(proxy, CertFlow(cert)) is None
        assert len(proxy.relayed("INVITE")) == 1
    finally:
        proxy.stop()


def test_a_253_character_identity_is_a_trunk_and_a_longer_one_a_config_error(tmp_path: Path, ca) -> None:
    cert, _ = make_leaf("x", [x509.UniformResourceIdentifier(f"sip:{LONGEST}")], ca)
    proxy = trunk_proxy(tmp_path, ca, {"identity": f"sip:{LONGEST.upper()}", "name": "long"})
    try:
        assert trunk_call(proxy, CertFlow(cert)) is None
        assert len(proxy.relayed("INVITE")) == 1
    finally:
        proxy.stop()
    for index, (identity, why) in enumerate([(f"sip:{LONGEST}d", "is not a sip:<domain> URI"), (f"{LONGEST}d", "is neither a host name nor a sip:<domain> URI")]):
        (tmp_path / f"longer{index}").mkdir()
        with pytest.raises(ConfigError) as refused:
            trunk_proxy(tmp_path / f"longer{index}", ca, {"identity": identity, "name": "long"})  # 254, labels of 63 at most
        assert refused.value.key == "auth.tls.trunks[0].identity"
        assert str(refused.value) == f"auth.tls.trunks[0].identity: {identity!r} {why} (RFC 5922 7.1)"
