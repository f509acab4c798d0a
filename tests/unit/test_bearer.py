"""Bearer tokens (RFC 8898, RFC 6750): JWKS loading, validation on an
injected clock, algorithm confusion, header parsing and the challenge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from sipshield.auth._bearer import (
    BearerChecker,
    BearerCredentials,
    BearerSettings,
    BearerValidator,
    InvalidToken,
    challenge_value,
    parse_bearer,
)
from sipshield.auth._checkers import Identity, IIdentity, SIPRealm
from sipshield.config import ConfigError

NOW = 1_800_000_000
ISSUER = "https://as.example.com"
AUDIENCE = "sip:example.com"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk(public_key: Any, kid: str, **extra: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(public_key, rsa.RSAPublicKey) else ECAlgorithm
    data = dict(algorithm.to_jwk(public_key, as_dict=True))
    data.update(kid=kid, **extra)
    return data


def write_jwks(path: Path, *keys: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": list(keys)}))
    return path


@pytest.fixture
def jwks(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Path:
    return write_jwks(tmp_path / "jwks.json", jwk(rsa_key.public_key(), "rsa1", use="sig"), jwk(ec_key.public_key(), "ec1"))


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(NOW)
    return c


def make_validator(jwks: Path, clock: Clock, **overrides: Any) -> BearerValidator:
    return BearerValidator(BearerSettings(issuer=ISSUER, audience=AUDIENCE, keys=jwks, **overrides), clock)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice@example.com", "iat": NOW, "exp": NOW + 300, "roles": ["staff"]}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key: Any, kid: str | None = "rsa1", algorithm: str = "RS256", **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=algorithm, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A JWS built by hand: PyJWT itself refuses to HMAC-sign with a PEM key."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) if secret is not None else ""
    return f"{signing_input}.{signature}"


def test_valid_rs256_token_gives_identity_with_roles(jwks: Path, clock: Clock, rsa_key) -> None:
    identity = make_validator(jwks, clock).validate(mint(rsa_key, roles=["staff", "agent"]))
    assert identity == Identity("alice", "example.com", frozenset({"staff", "agent"}))


def test_valid_es256_token_is_accepted(jwks: Path, clock: Clock, ec_key) -> None:
    identity = make_validator(jwks, clock).validate(mint(ec_key, kid="ec1", algorithm="ES256", sub="bob@Example.COM"))
    assert identity == Identity("bob", "example.com", frozenset({"staff"}))


def test_bare_user_takes_the_default_domain_or_is_refused(jwks: Path, clock: Clock, rsa_key) -> None:
    token = mint(rsa_key, sub="carol")
    assert make_validator(jwks, clock, default_domain="example.com").validate(token).domain == "example.com"
    with pytest.raises(InvalidToken, match="no default domain"):
        make_validator(jwks, clock).validate(token)


def test_custom_identity_and_roles_claims(jwks: Path, clock: Clock, rsa_key) -> None:
    validator = make_validator(jwks, clock, identity_claim="sip_user", roles_claim="scope")
    identity = validator.validate(mint(rsa_key, sip_user="dave@example.com", scope="register call"))
    assert identity == Identity("dave", "example.com", frozenset({"register", "call"}))


def test_no_roles_claim_means_no_roles_and_a_malformed_one_is_refused(jwks: Path, clock: Clock, rsa_key) -> None:
    validator = make_validator(jwks, clock)
    assert validator.validate(mint(rsa_key, roles=None)).roles == frozenset()
    with pytest.raises(InvalidToken, match="malformed roles"):
        validator.validate(mint(rsa_key, roles=[1, "staff"]))


@pytest.mark.parametrize("sub", ["", "alice@", "@example.com", "alice@exa mple.com", "ali<ce@example.com", "alice@sip:example.com", "alice@*.example.com"])
def test_malformed_identity_is_refused(jwks: Path, clock: Clock, rsa_key, sub: str) -> None:
    with pytest.raises(InvalidToken):
        make_validator(jwks, clock, default_domain="example.com").validate(mint(rsa_key, sub=sub))


def test_identity_domain_must_be_served_when_domains_are_configured(jwks: Path, clock: Clock, rsa_key) -> None:
    validator = make_validator(jwks, clock, domains=("example.com",))
    assert validator.validate(mint(rsa_key)).domain == "example.com"
    with pytest.raises(InvalidToken, match="not served"):
        validator.validate(mint(rsa_key, sub="mallory@other.example"))


def test_expiry_follows_the_injected_clock_with_leeway(jwks: Path, clock: Clock, rsa_key) -> None:
    validator = make_validator(jwks, clock, leeway=30)
    token = mint(rsa_key, exp=NOW + 60)
    assert validator.validate(token).username == "alice"
    clock.advance(60 + 29)
    assert validator.validate(token).username == "alice"
    clock.advance(1)
    with pytest.raises(InvalidToken, match="expired"):
        validator.validate(token)


def test_token_without_exp_is_refused(jwks: Path, clock: Clock, rsa_key) -> None:
    with pytest.raises(InvalidToken, match="missing exp"):
        make_validator(jwks, clock).validate(mint(rsa_key, exp=None))


def test_token_not_yet_valid_is_refused(jwks: Path, clock: Clock, rsa_key) -> None:
    validator = make_validator(jwks, clock, leeway=30)
    with pytest.raises(InvalidToken, match="not yet valid"):
        validator.validate(mint(rsa_key, nbf=NOW + 31))
    with pytest.raises(InvalidToken, match="issued in the future"):
        validator.validate(mint(rsa_key, iat=NOW + 3600))
    assert validator.validate(mint(rsa_key, nbf=NOW + 30)).username == "alice"


def test_wrong_audience_or_issuer_is_refused(jwks: Path, clock: Clock, rsa_key) -> None:
    validator = make_validator(jwks, clock)
    with pytest.raises(InvalidToken, match="wrong audience"):
        validator.validate(mint(rsa_key, aud="sip:other.example"))
    with pytest.raises(InvalidToken, match="wrong issuer"):
        validator.validate(mint(rsa_key, iss="https://evil.example"))
    with pytest.raises(InvalidToken, match="missing aud"):
        validator.validate(mint(rsa_key, aud=None))


def test_tampered_payload_fails_the_signature(jwks: Path, clock: Clock, rsa_key) -> None:
    header, _, signature = mint(rsa_key).split(".")
    forged = _b64(json.dumps(claims(sub="admin@example.com", roles=["admin"])).encode())
    with pytest.raises(InvalidToken, match="bad signature"):
        make_validator(jwks, clock).validate(f"{header}.{forged}.{signature}")


def test_token_signed_by_another_key_with_a_known_kid_is_refused(jwks: Path, clock: Clock) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidToken, match="bad signature"):
        make_validator(jwks, clock).validate(mint(other))


def test_alg_none_is_refused(jwks: Path, clock: Clock) -> None:
    token = hand_made({"alg": "none", "kid": "rsa1", "typ": "JWT"}, claims(), None)
    with pytest.raises(InvalidToken, match="'none' not accepted"):
        make_validator(jwks, clock).validate(token)


def test_hs256_signed_with_the_public_key_is_refused(jwks: Path, clock: Clock, rsa_key) -> None:
    """Algorithm confusion (RFC 8725 2.1): the attacker HMACs with the published key."""
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = hand_made({"alg": "HS256", "kid": "rsa1", "typ": "JWT"}, claims(roles=["admin"]), pem)
    with pytest.raises(InvalidToken, match="'HS256' not accepted"):
        make_validator(jwks, clock).validate(token)
    with pytest.raises(ConfigError, match="HS256 not accepted"):
        make_validator(jwks, clock, algorithms=("RS256", "HS256"))


def test_alg_must_match_the_key_type_of_the_kid(jwks: Path, clock: Clock, ec_key) -> None:
    """An ES256 token naming the RSA key is not verified with it (or at all)."""
    with pytest.raises(InvalidToken, match="not for ES256"):
        make_validator(jwks, clock).validate(mint(ec_key, kid="rsa1", algorithm="ES256"))


def test_configured_algorithms_limit_what_is_accepted(jwks: Path, clock: Clock, ec_key) -> None:
    with pytest.raises(InvalidToken, match="'ES256' not accepted"):
        make_validator(jwks, clock, algorithms=("RS256",)).validate(mint(ec_key, kid="ec1", algorithm="ES256"))


def test_unknown_or_missing_kid_is_refused(jwks: Path, clock: Clock, rsa_key) -> None:
    validator = make_validator(jwks, clock)
    with pytest.raises(InvalidToken, match="unknown key id"):
        validator.validate(mint(rsa_key, kid="rotated-away"))
    with pytest.raises(InvalidToken, match="no kid"):
        validator.validate(mint(rsa_key, kid=None))


def test_critical_header_extension_is_refused(jwks: Path, clock: Clock, rsa_key) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa1", "crit": ["x-ext"], "x-ext": 1})
    with pytest.raises(InvalidToken, match="critical|malformed"):
        make_validator(jwks, clock).validate(token)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 9000])
def test_garbage_is_refused(jwks: Path, clock: Clock, token: str) -> None:
    with pytest.raises(InvalidToken):
        make_validator(jwks, clock).validate(token)


def test_key_bound_to_another_alg_is_not_used(tmp_path: Path, clock: Clock, rsa_key) -> None:
    path = write_jwks(tmp_path / "k.json", jwk(rsa_key.public_key(), "rsa1", alg="PS256"))
    with pytest.raises(InvalidToken, match="not for RS256"):
        make_validator(path, clock).validate(mint(rsa_key))


def test_encryption_keys_are_not_used_for_signatures(tmp_path: Path, clock: Clock, rsa_key) -> None:
    path = write_jwks(tmp_path / "k.json", jwk(rsa_key.public_key(), "rsa1", use="enc"))
    with pytest.raises(InvalidToken, match="unknown key id"):
        make_validator(path, clock).validate(mint(rsa_key))


@pytest.mark.parametrize(
    "keys, message",
    [
        ([{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}], "only RSA, EC and OKP"),
        ([{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}], "needs a \"kid\""),
        (["not-an-object"], "not an object"),
    ],
)
def test_unusable_key_sets_are_config_errors(tmp_path: Path, clock: Clock, keys: list[Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_validator(write_jwks(tmp_path / "k.json", *keys), clock)


def test_private_duplicate_and_weak_keys_are_config_errors(tmp_path: Path, clock: Clock, rsa_key, ec_key) -> None:
    private = dict(ECAlgorithm.to_jwk(ec_key, as_dict=True), kid="p")
    with pytest.raises(ConfigError, match="private key"):
        make_validator(write_jwks(tmp_path / "a.json", private), clock)
    public = jwk(ec_key.public_key(), "dup")
    with pytest.raises(ConfigError, match="appears twice"):
        make_validator(write_jwks(tmp_path / "b.json", public, public), clock)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ConfigError, match="fewer than 2048"):
        make_validator(write_jwks(tmp_path / "c.json", jwk(weak.public_key(), "weak")), clock)


def test_missing_or_non_jwks_file_is_a_config_error(tmp_path: Path, clock: Clock) -> None:
    with pytest.raises(ConfigError, match="auth.bearer.keys: cannot read"):
        make_validator(tmp_path / "missing.json", clock)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a JWK Set"):
        make_validator(tmp_path / "x.json", clock)
    (tmp_path / "y.json").write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        make_validator(tmp_path / "y.json", clock)


def test_settings_refuse_empty_issuer_audience_and_negative_leeway(jwks: Path) -> None:
    with pytest.raises(ConfigError, match="issuer"):
        BearerSettings(issuer="", audience=AUDIENCE, keys=jwks)
    with pytest.raises(ConfigError, match="audience"):
        BearerSettings(issuer=ISSUER, audience="", keys=jwks)
    with pytest.raises(ConfigError, match="leeway"):
        BearerSettings(issuer=ISSUER, audience=AUDIENCE, keys=jwks, leeway=-1)
    with pytest.raises(ConfigError, match="none not accepted"):
        BearerSettings(issuer=ISSUER, audience=AUDIENCE, keys=jwks, algorithms=("none",))


@pytest.mark.parametrize(
    "value, token",
    [
        ("Bearer eyJh.eyJz.c2ln", "eyJh.eyJz.c2ln"),
        ("bearer   abc-_~+/==", "abc-_~+/=="),
        ("  BEARER\tabc  ", "abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer a b", None),
        ("Bearer a,b", None),
        ('Digest username="alice", realm="example.com"', None),
        ("Bearerabc", None),
    ],
)
def test_parse_bearer(value: str, token: str | None) -> None:
    assert parse_bearer(value) == token


def test_challenge_value_has_rfc8898_shape() -> None:
    assert challenge_value("example.com") == 'Bearer realm="example.com"'
    assert (
        challenge_value("example.com", authz_server="https://as.example.com/token", error="invalid_token")
        == 'Bearer realm="example.com", authz_server="https://as.example.com/token", error="invalid_token"'
    )


def test_challenge_value_quotes_and_refuses_injection() -> None:
    assert challenge_value('a"b\\c') == 'Bearer realm="a\\"b\\\\c"'
    with pytest.raises(ValueError, match="control character"):
        challenge_value("example.com\r\nVia: evil")
    with pytest.raises(ValueError, match="unknown bearer error"):
        challenge_value("example.com", error="invalid_grant")


def _login(portal: Portal, token: str) -> Any:
    results: list[Any] = []
    portal.login(BearerCredentials(token), None, IIdentity).addBoth(results.append)
    (result,) = results
    return result


def test_bearer_checker_logs_in_through_the_sip_realm(jwks: Path, clock: Clock, rsa_key) -> None:
    checker = BearerChecker(make_validator(jwks, clock))
    assert verifyObject(ICredentialsChecker, checker)
    portal = Portal(SIPRealm(), [checker])
    _, identity, _ = _login(portal, mint(rsa_key, roles=["trunk", "staff"]))
    assert identity == Identity("alice", "example.com", frozenset({"trunk", "staff"}))
    failure = _login(portal, mint(rsa_key, aud="sip:other.example"))
    assert failure.check(UnauthorizedLogin)
    assert failure.value.reason == "wrong audience"


# -- the auth stage accepting bearer tokens (RFC 8898) ----------------------

def _stage_with_bearer(jwks: Path, clock: Clock):
    from sipshield.auth import NonceManager
    from sipshield.auth._setup import BearerSetup
    from sipshield.auth._stages import DigestAuthStage, DomainMap

    nonces = NonceManager(b"k" * 32, clock)
    bearer = BearerSetup(make_validator(jwks, clock), "https://as.example.com/token", require_tls=True)
    return DigestAuthStage(None, lambda: nonces, DomainMap(["example.com"], lambda h, p: False), ["SHA-256"], bearer=bearer)


def _context(transport: str, token: str | None):
    from sipshield.message import parse_message
    from sipshield.routing import RequestContext

    class Flow:
        transport_name = transport
        remote = ("192.0.2.9", 5061)
        local = ("127.0.0.1", 5061)

    auth = f"Proxy-Authorization: Bearer {token}\r\n" if token else ""
    data = (
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.9;branch=z9hG4bKb\r\nMax-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: b\r\nCSeq: 1 INVITE\r\n"
        f"{auth}Content-Length: 0\r\n\r\n"
    ).encode()
    return RequestContext(parse_message(data), Flow())  # type: ignore[arg-type]


def test_stage_accepts_a_valid_token_over_tls_and_strips_it(jwks: Path, clock: Clock, rsa_key) -> None:
    from sipshield.routing import CONTINUE

    stage = _stage_with_bearer(jwks, clock)
    context = _context("TLS", mint(rsa_key))
    assert stage.process(context) is CONTINUE
    assert context.identity == "sip:alice@example.com" and context.roles == frozenset({"staff"})
    assert "Proxy-Authorization" not in context.request.headers


def test_stage_refuses_tokens_over_udp_and_challenges_bad_ones(jwks: Path, clock: Clock, rsa_key) -> None:
    stage = _stage_with_bearer(jwks, clock)
    assert stage.process(_context("UDP", mint(rsa_key))).reason == "Forbidden: bearer tokens only over TLS"
    decision = stage.process(_context("TLS", mint(rsa_key, aud="someone-else")))
    values = [v for n, v in decision.headers if n == "Proxy-Authenticate"]
    assert decision.status == 407 and values[0].startswith("Digest ")
    assert values[-1] == 'Bearer realm="example.com", authz_server="https://as.example.com/token", error="invalid_token"'
    plain = stage.process(_context("TLS", None))
    assert [v for n, v in plain.headers][-1] == 'Bearer realm="example.com", authz_server="https://as.example.com/token"'


def test_refused_bearer_tokens_over_tls_count_towards_a_ban_over_udp_they_do_not(jwks: Path, clock: Clock, rsa_key) -> None:
    """A bad token is a guess like a wrong password: over TLS an auth-failure
    (the handshake proved the source), which the ban policy counts; over UDP
    (bearer allowed there by config) a bearer-refused event, counted by nobody."""
    from sipshield.events import AUTH_FAILURE, BEARER_REFUSED, SecurityEventBus
    from sipshield.security import BanPolicy

    recorded: list[Any] = []

    class Recorder:
        def emit(self, event: Any) -> None:
            recorded.append(event)

    bus = SecurityEventBus([Recorder()])
    bans = BanPolicy(clock, events=bus)
    bus.subscribe(bans)
    stage = _stage_with_bearer(jwks, clock)
    stage.events = bus
    stage.bearer.require_tls = False
    for transport in ("UDP", "UDP", "UDP", "TLS", "TLS"):
        context = _context(transport, mint(rsa_key, aud="someone-else"))
        context.flow.reliable = transport != "UDP"  # type: ignore[attr-defined]
        assert stage.process(context).status == 407
    assert [e.kind for e in recorded] == [BEARER_REFUSED] * 3 + [AUTH_FAILURE] * 2
    assert not bans.refuse_source("192.0.2.9")
    context = _context("TLS", mint(rsa_key, aud="someone-else"))
    context.flow.reliable = True  # type: ignore[attr-defined]
    stage.process(context)
    assert bans.refuse_source("192.0.2.9")
