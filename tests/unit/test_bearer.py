"""Bearer tokens (RFC 8898, RFC 6750): JWKS loading, validation on an
injected clock, algorithm confusion, header parsing and the challenge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from inline_pool import ImmediateReactor
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from pipeline_support import EventRecorder, Proxy, RecordingDispatcher, RecordingFlow, build_service
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
from sipshield.events import AUTH_FAILURE, BEARER_REFUSED, SecurityEvent
from sipshield.message import parse_message

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
    with pytest.raises(InvalidToken, match="^identity has no domain and no default domain is configured$"):
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


def test_a_token_over_8192_characters_is_refused_unread(jwks: Path, clock: Clock) -> None:
    """The service never gets this far (credentials over 4096 bytes are a 400 before
    any parsing, tests/unit/test_credentials_caps.py); the validator holds on its own."""
    validator = make_validator(jwks, clock)
    for length, reason in ((8192, "malformed token"), (8193, "token too large")):
        with pytest.raises(InvalidToken) as refused:
            validator.validate("x" * length)
        assert refused.value.reason == reason


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
    with pytest.raises(ValueError, match="^realm contains a control character$"):
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


# -- through the service: makeService's auth stage with [auth.bearer] ---------------------

AUTHZ_SERVER = "https://as.example.com/token"
PHONE_TLS = ("192.0.2.9", 5061)


@dataclass
class BearerProxy:
    proxy: Proxy
    recorder: EventRecorder

    def call(self, token: str | None, transport: str = "TLS", from_uri: str = "sip:alice@example.com") -> RecordingFlow:
        """An INVITE to bob with *token* as its Proxy-Authorization on a *transport* connection."""
        auth = f"Proxy-Authorization: Bearer {token}\r\n" if token is not None else ""
        data = (
            f"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/{transport} {PHONE_TLS[0]}:{PHONE_TLS[1]};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
            f"Max-Forwards: 70\r\nFrom: <{from_uri}>;tag=a1\r\nTo: <sip:bob@example.com>\r\nCall-ID: {secrets.token_hex(6)}@bearer\r\n"
            f"CSeq: 1 INVITE\r\n{auth}Content-Length: 0\r\n\r\n"
        ).encode()
        flow = RecordingFlow(PHONE_TLS, transport, local=("127.0.0.1", 5061))
        self.proxy.core.message_received(parse_message(data), flow)
        return flow

    @staticmethod
    def finals(flow: RecordingFlow) -> list[int]:
        return [s for s in flow.statuses() if s >= 200]

    def refusals(self) -> list[SecurityEvent]:
        return [e for e in self.recorder.events if e.kind in (AUTH_FAILURE, BEARER_REFUSED)]


@pytest.fixture
def bearer_service(tmp_path: Path, jwks: Path):
    """A factory: the service (on a Clock at NOW unless *now* is given) with [auth.bearer]
    over *keys* (default: the rsa1/ec1 set), bob registered at 127.0.0.3."""
    made: list[Proxy] = []

    def make(*, keys: Path | None = None, now: float = NOW, **bearer: Any) -> BearerProxy:
        clock = ImmediateReactor()
        clock.advance(now)
        settings = {"issuer": ISSUER, "audience": AUDIENCE, "keys": str(keys or jwks), "authz_server": AUTHZ_SERVER, **bearer}
        dispatcher = RecordingDispatcher()
        service = build_service(tmp_path / f"s{len(made)}", {"auth": {"bearer": settings}}, clock=clock, dispatcher=dispatcher)
        proxy = Proxy(service, clock, dispatcher)
        made.append(proxy)
        proxy.register("bob", "sip:bob@127.0.0.3:5060")
        recorder = EventRecorder()
        service.events.subscribe(recorder)
        return BearerProxy(proxy, recorder)

    yield make
    for proxy in made:
        proxy.stop()


def assert_forwarded_as_alice(service: BearerProxy, flow: RecordingFlow) -> None:
    assert service.finals(flow) == []
    (relayed,) = service.proxy.relayed("INVITE")
    assert str(relayed.uri) == "sip:bob@127.0.0.3:5060"
    assert relayed.headers.get_all("Proxy-Authorization") == []  # the token never travels downstream
    assert flow.authenticated and service.refusals() == []


def test_service_forwards_a_call_with_a_valid_token_over_tls_and_strips_the_token(bearer_service, rsa_key) -> None:
    service = bearer_service()
    assert_forwarded_as_alice(service, service.call(mint(rsa_key)))


def test_service_with_leeway_0_refuses_a_token_at_its_exp(bearer_service, rsa_key) -> None:
    service = bearer_service(leeway=0)
    assert_forwarded_as_alice(service, service.call(mint(rsa_key, exp=NOW + 1, iat=NOW)))
    assert service.finals(service.call(mint(rsa_key, exp=NOW, iat=NOW))) == [407]
    assert [e.reason for e in service.refusals()] == ["bearer token refused: token expired"]


def test_service_takes_time_from_its_reactor_not_the_wall_clock(bearer_service, rsa_key) -> None:
    """At reactor time 1 000 000 (1970 to the wall clock) a token valid for 300 s is
    accepted, and refused once the reactor passes exp and the leeway."""
    service = bearer_service(now=1_000_000)
    token = mint(rsa_key, iat=1_000_000, exp=1_000_300)
    assert_forwarded_as_alice(service, service.call(token))
    (first,) = {r.call_id for r in service.proxy.relayed("INVITE")}
    service.proxy.clock.advance(300 + 30)
    flow = service.call(token)
    assert service.finals(flow) == [407]
    assert {r.call_id for r in service.proxy.relayed("INVITE")} == {first}  # the first call's retransmissions only
    assert [e.reason for e in service.refusals()] == ["bearer token refused: token expired"]


def test_service_accepts_the_leeway_boundaries_of_nbf_and_iat(bearer_service, rsa_key) -> None:
    service = bearer_service(leeway=30)
    assert_forwarded_as_alice(service, service.call(mint(rsa_key, nbf=NOW + 30, iat=NOW + 30)))


@pytest.mark.parametrize(
    "roles, status",
    [(["staff"], None), ("agent staff", None), (["agent"], 403), (None, 403)],
    ids=["list", "scope-string", "no-call-permission", "no-roles"],
)
def test_service_gives_the_caller_the_roles_of_its_token(bearer_service, rsa_key, roles: Any, status: int | None) -> None:
    service = bearer_service()
    flow = service.call(mint(rsa_key, roles=roles))
    if status is None:
        assert_forwarded_as_alice(service, flow)
    else:
        assert service.finals(flow) == [403] and flow.messages()[-1].reason == "Forbidden: missing permission call"
        assert service.proxy.relayed("INVITE") == []


def test_service_authenticates_the_token_identity_not_the_from_header(bearer_service, rsa_key) -> None:
    """alice's token does not let her call as carol (From is checked against the token's identity)."""
    service = bearer_service()
    flow = service.call(mint(rsa_key), from_uri="sip:carol@example.com")
    assert service.finals(flow) == [403] and service.proxy.relayed("INVITE") == []


def _signed_garbage_payload(key: Any) -> str:
    """A token whose header is fine and whose payload is not JSON: PyJWT's DecodeError."""
    header = _b64(json.dumps({"alg": "RS256", "kid": "rsa1", "typ": "JWT"}).encode())
    payload = _b64(b"not json")
    signature = _b64(key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()))
    return f"{header}.{payload}.{signature}"


REFUSED_TOKENS: list[tuple[str, Any, str]] = [
    ("expired", lambda k, e: mint(k, exp=NOW - 31), "token expired"),
    ("not-yet-valid", lambda k, e: mint(k, nbf=NOW + 31), "token not yet valid"),
    ("issued-in-the-future", lambda k, e: mint(k, iat=NOW + 31), "token issued in the future"),
    ("exp-infinite", lambda k, e: mint(k, exp=float("inf")), "malformed exp claim"),
    ("exp-string", lambda k, e: mint(k, exp="soon"), "malformed exp claim"),
    ("nbf-boolean", lambda k, e: mint(k, nbf=True), "malformed nbf claim"),
    ("no-exp", lambda k, e: mint(k, exp=None), "missing exp claim"),
    ("no-iss", lambda k, e: mint(k, iss=None), "missing iss claim"),
    ("wrong-audience", lambda k, e: mint(k, aud="sip:other.example"), "wrong audience"),
    ("wrong-issuer", lambda k, e: mint(k, iss="https://evil.example"), "wrong issuer"),
    ("another-key", lambda k, e: mint(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "bad signature"),
    ("payload-not-json", lambda k, e: _signed_garbage_payload(k), "invalid token (DecodeError)"),
    ("unknown-kid", lambda k, e: mint(k, kid="rotated-away"), "unknown key id"),
    ("no-kid", lambda k, e: mint(k, kid=None), "token has no kid"),
    ("kid-of-another-key-type", lambda k, e: mint(e, kid="rsa1", algorithm="ES256"), "key 'rsa1' is not for ES256"),
    ("alg-none", lambda k, e: hand_made({"alg": "none", "kid": "rsa1"}, claims(), None), "algorithm 'none' not accepted"),
    ("alg-hs256", lambda k, e: hand_made({"alg": "HS256", "kid": "rsa1"}, claims(), b"secret"), "algorithm 'HS256' not accepted"),
    ("malformed", lambda k, e: "abc.def", "malformed token"),
    ("sub-not-a-string", lambda k, e: mint(k, sub=123), "invalid token (InvalidSubjectError)"),  # PyJWT checks sub itself
    ("domain-not-a-host", lambda k, e: mint(k, sub="alice@exa_mple.com"), "identity domain is not a host name"),
    ("user-not-a-sip-user", lambda k, e: mint(k, sub="al<ice@example.com"), "identity user part is not a SIP user (RFC 3261 25.1)"),
    ("domain-not-served", lambda k, e: mint(k, sub="alice@other.example"), "domain other.example is not served here"),
    ("roles-an-object", lambda k, e: mint(k, roles={"admin": True}), "malformed roles claim"),
]


@pytest.mark.parametrize("make_token, reason", [(m, r) for _, m, r in REFUSED_TOKENS], ids=[i for i, _, _ in REFUSED_TOKENS])
def test_service_challenges_a_refused_token_and_logs_why_as_an_auth_failure(bearer_service, rsa_key, ec_key, make_token, reason: str) -> None:
    service = bearer_service()
    flow = service.call(make_token(rsa_key, ec_key))
    assert service.finals(flow) == [407] and service.proxy.relayed("INVITE") == [] and not flow.authenticated
    bearer = [v for n, v in flow.messages()[-1].headers if n == "Proxy-Authenticate" and v.startswith("Bearer ")]
    assert bearer == [f'Bearer realm="example.com", authz_server="{AUTHZ_SERVER}", error="invalid_token"']
    assert service.refusals() == [SecurityEvent(AUTH_FAILURE, PHONE_TLS[0], "TLS", None, f"bearer token refused: {reason}")]


def test_service_refuses_an_identity_claim_that_is_not_a_string(bearer_service, rsa_key) -> None:
    """PyJWT checks the type of ``sub`` only; a configured identity_claim is checked here."""
    service = bearer_service(identity_claim="sip_user")
    assert_forwarded_as_alice(service, service.call(mint(rsa_key, sip_user="alice@example.com")))
    assert service.finals(service.call(mint(rsa_key, sip_user=["alice@example.com"]))) == [407]
    assert [e.reason for e in service.refusals()] == ["bearer token refused: no sip_user claim"]


def test_service_refuses_a_token_over_udp_unless_configured_otherwise(bearer_service, rsa_key) -> None:
    service = bearer_service()
    flow = service.call(mint(rsa_key), transport="UDP")
    assert service.finals(flow) == [403] and flow.messages()[-1].reason == "Forbidden: bearer tokens only over TLS"
    assert service.proxy.relayed("INVITE") == []
    open_udp = bearer_service(require_tls=False)
    flow = open_udp.call(mint(rsa_key, exp=NOW - 31), transport="UDP")
    assert open_udp.finals(flow) == [407]
    assert open_udp.refusals() == [SecurityEvent(BEARER_REFUSED, PHONE_TLS[0], "UDP", None, "bearer token refused: token expired")]


# -- the key set, as the service loads it --------------------------------------------------

def test_service_verifies_eddsa_tokens_with_an_okp_key(bearer_service, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    keys = write_jwks(tmp_path / "okp.json", dict(OKPAlgorithm.to_jwk(key.public_key(), as_dict=True), kid="ed1"))
    service = bearer_service(keys=keys, algorithms=["EdDSA"])
    assert_forwarded_as_alice(service, service.call(mint(key, kid="ed1", algorithm="EdDSA")))


def test_service_loads_the_signing_key_listed_after_an_encryption_key(bearer_service, tmp_path: Path, rsa_key, ec_key) -> None:
    keys = write_jwks(tmp_path / "k.json", jwk(ec_key.public_key(), "enc1", use="enc"), jwk(rsa_key.public_key(), "rsa1"))
    service = bearer_service(keys=keys)
    assert_forwarded_as_alice(service, service.call(mint(rsa_key)))


def test_service_uses_an_alg_bound_key_for_its_algorithm_only(bearer_service, tmp_path: Path, rsa_key) -> None:
    keys = write_jwks(tmp_path / "k.json", jwk(rsa_key.public_key(), "rsa1", alg="PS256"))
    service = bearer_service(keys=keys, algorithms=["RS256", "PS256"])
    assert_forwarded_as_alice(service, service.call(mint(rsa_key, algorithm="PS256")))
    assert service.finals(service.call(mint(rsa_key, algorithm="RS256"))) == [407]
    assert [e.reason for e in service.refusals()] == ["bearer token refused: key 'rsa1' is not for RS256"]


def test_service_uses_a_key_without_alg_for_every_configured_algorithm_of_its_type(bearer_service, tmp_path: Path, rsa_key) -> None:
    """An RSA key that names no alg serves RS256 and PS256 alike (each loaded for its own algorithm)."""
    keys = write_jwks(tmp_path / "k.json", jwk(rsa_key.public_key(), "rsa1"))
    service = bearer_service(keys=keys, algorithms=["RS256", "PS256"])
    assert_forwarded_as_alice(service, service.call(mint(rsa_key, algorithm="PS256")))
    service.proxy.dispatcher.sent.clear()
    assert_forwarded_as_alice(service, service.call(mint(rsa_key, algorithm="RS256")))


def test_service_does_not_verify_es256_with_a_p384_key(bearer_service, tmp_path: Path, ec_key) -> None:
    """The curve is part of the key type (RFC 7518 3.4): a P-384 key serves ES384 only."""
    p384 = ec.generate_private_key(ec.SECP384R1())
    keys = write_jwks(tmp_path / "k.json", jwk(p384.public_key(), "ec384"))
    service = bearer_service(keys=keys, algorithms=["ES256", "ES384"])
    assert_forwarded_as_alice(service, service.call(mint(p384, kid="ec384", algorithm="ES384")))
    assert service.finals(service.call(mint(ec_key, kid="ec384", algorithm="ES256"))) == [407]
    assert [e.reason for e in service.refusals()] == ["bearer token refused: key 'ec384' is not for ES256"]


@pytest.mark.parametrize(
    "bearer, message",
    [
        ({"issuer": ""}, "auth.bearer.issuer: an issuer is required"),
        ({"audience": ""}, "auth.bearer.audience: an audience is required"),
        ({"leeway": -1}, "auth.bearer.leeway: must not be negative"),
        ({"algorithms": []}, "auth.bearer.algorithms: at least one algorithm is needed"),
        ({"algorithms": ["RS256", "HS256", "none"]}, "auth.bearer.algorithms: HS256, none not accepted (asymmetric algorithms only: "
         "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA)"),
        ({"domains": ["exa_mple.com"]}, "auth.bearer.domains: 'exa_mple.com' is not a host name"),
        ({"default_domain": "*.example.com"}, "auth.bearer.default_domain: '*.example.com' is not a host name"),
        # Once failed every challenge with a traceback; now refused at start (and by check-config).
        ({"authz_server": "https://as.example.com/\r\nVia: evil"}, "auth.bearer.authz_server: authz_server contains a control character"),
        ({"authz_server": "https://as.example.com/\x7f"}, "auth.bearer.authz_server: authz_server contains a control character"),
        ({"authz_server": 5}, "auth.bearer.authz_server: must be a non-empty string (where a UA gets a token, RFC 8898 2.3)"),
    ],
    ids=["issuer", "audience", "leeway", "no-algorithm", "hs256", "domains", "default-domain", "authz-server-crlf", "authz-server-del", "authz-server-not-a-string"],
)
def test_service_refuses_bearer_settings_naming_the_key(tmp_path: Path, jwks: Path, bearer: dict[str, Any], message: str) -> None:
    settings = {"issuer": ISSUER, "audience": AUDIENCE, "keys": str(jwks), **bearer}
    with pytest.raises(ConfigError) as refused:
        build_service(tmp_path, {"auth": {"bearer": settings}})
    assert str(refused.value) == message


def _key_sets(rsa_key: Any, ec_key: Any) -> list[tuple[str, Any, str]]:
    private = dict(ECAlgorithm.to_jwk(ec_key, as_dict=True), kid="p")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return [
        ("no-file", None, "cannot read {path}: No such file or directory"),
        ("not-json", "{", "{path} is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ("no-keys-list", {"keys": {}}, '{path} is not a JWK Set (no "keys" list, RFC 7517 5)'),
        ("not-an-object", {"keys": ["k"]}, "{path}: a JWK is not an object"),
        ("empty-kid", {"keys": [jwk(ec_key.public_key(), "")]}, '{path}: every key needs a "kid" (RFC 7517 4.5)'),
        ("twice", {"keys": [jwk(ec_key.public_key(), "d"), jwk(ec_key.public_key(), "d")]}, "{path}: kid 'd' appears twice"),
        ("oct", {"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]},
         "{path}: key 's' has kty 'oct': only RSA, EC and OKP public keys are accepted"),
        ("private", {"keys": [private]}, "{path}: key 'p' holds a private key: publish public keys only"),
        ("weak", {"keys": [jwk(weak.public_key(), "w")]}, "{path}: RSA key 'w' has 1024 bits, fewer than 2048"),
        ("unusable", {"keys": [{"kty": "EC", "crv": "P-256", "kid": "bad", "x": "AA", "y": "AA"}]}, "{path}: key 'bad' cannot be used for ES256: "),
    ]


@pytest.mark.parametrize("case", range(10), ids=["no-file", "not-json", "no-keys-list", "not-an-object", "empty-kid", "twice", "oct", "private", "weak", "unusable"])
def test_service_refuses_an_unusable_key_set_naming_the_key_and_the_file(tmp_path: Path, rsa_key, ec_key, case: int) -> None:
    _, content, message = _key_sets(rsa_key, ec_key)[case]
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError) as refused:
        build_service(tmp_path, {"auth": {"bearer": {"issuer": ISSUER, "audience": AUDIENCE, "keys": str(path)}}})
    assert str(refused.value).startswith("auth.bearer.keys: " + message.format(path=path))
