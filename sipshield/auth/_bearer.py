"""Bearer-token authentication for SIP (RFC 8898, RFC 6750, JWT RFC 7519).

A UA that obtained an access token from an authorization server sends it as
``Authorization: Bearer <token>`` (REGISTER) or ``Proxy-Authorization:
Bearer <token>`` (RFC 8898 2.1.2, 2.2; RFC 6750 2.1).  The token is a signed
JWT (RFC 7519, RFC 9068 profile) that the proxy validates locally against a
JWKS file (RFC 7517 5) loaded once at start: the key set is never fetched
from the network here (PyJWT's PyJWKClient would do blocking I/O on the
reactor thread).

Validation fails closed: only asymmetric algorithms from the configured list
are accepted, the header's ``kid`` must name a loaded key of a matching key
type, and ``iss``, ``aud`` and ``exp`` are required.  Time comes from the
injected ``IReactorTime`` (a ``task.Clock`` in tests), never the wall clock.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, implementer

from sipshield.auth._checkers import AvatarId, Identity
from sipshield.auth._mtls import _host_name
from sipshield.config import ConfigError
from sipshield.message import format_auth

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "BearerChecker",
    "BearerCredentials",
    "BearerSettings",
    "BearerValidator",
    "IBearerCredentials",
    "InvalidToken",
    "challenge_value",
    "parse_bearer",
]

# JWS algorithms (RFC 7518 3.1, RFC 8037 3.1) with the JWK key type and curve
# each needs.  Symmetric (HS*) and "none" are deliberately absent: a proxy
# that accepted them with a public key would be open to algorithm confusion.
_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
ASYMMETRIC_ALGORITHMS = tuple(_KEY_TYPES)
_MIN_RSA_BITS = 2048
# A JWT far larger than any real access token is refused before any base64
# or JSON work (headers are already bounded by the transport's limits).
_MAX_TOKEN = 8192
# RFC 6750 2.1: credentials = "Bearer" 1*SP b64token; SIP allows LWS.
_BEARER = re.compile(r"^\s*bearer[ \t]+([A-Za-z0-9\-._~+/]+=*)\s*$", re.IGNORECASE)
# RFC 3261 25.1 user (unreserved / escaped / user-unreserved).
_USER = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+$")
_ERRORS = frozenset(("invalid_request", "invalid_token", "insufficient_scope"))  # RFC 6750 3.1


class InvalidToken(UnauthorizedLogin):
    """The bearer token was refused.  ``reason`` is for the log only; the
    peer is told ``error="invalid_token"`` (RFC 6750 3.1, RFC 8898 2.3)."""

    error = "invalid_token"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class BearerSettings:
    """``[auth.bearer]``: how access tokens are validated.

    ``identity_claim`` holds ``user@domain``, or ``user`` completed with
    ``default_domain`` (no default domain: such a token is refused).  When
    ``domains`` is not empty the identity's domain must be one of them.
    ``leeway`` (seconds) absorbs clock skew on ``exp``, ``nbf`` and ``iat``
    (RFC 7519 4.1.4).
    """

    issuer: str
    audience: str
    keys: Path
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    identity_claim: str = "sub"
    roles_claim: str = "roles"
    leeway: int = 30
    default_domain: str | None = None
    domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        refused = [a for a in self.algorithms if a not in _KEY_TYPES]
        if refused:
            raise ConfigError(f"{', '.join(refused)} not accepted (asymmetric algorithms only: {', '.join(ASYMMETRIC_ALGORITHMS)})", key="auth.bearer.algorithms")
        if not self.algorithms:
            raise ConfigError("at least one algorithm is needed", key="auth.bearer.algorithms")
        if not self.issuer:
            raise ConfigError("an issuer is required", key="auth.bearer.issuer")
        if not self.audience:
            raise ConfigError("an audience is required", key="auth.bearer.audience")
        if self.leeway < 0:
            raise ConfigError("must not be negative", key="auth.bearer.leeway")


def _load_keys(path: Path, algorithms: Sequence[str]) -> tuple[dict[tuple[str, str], jwt.PyJWK], frozenset[str]]:
    """Read a JWKS file (RFC 7517 5) into ``(kid, alg) -> key`` for each
    configured algorithm a key can serve, and the set of signing kids.  Raises ConfigError naming the file
    for an unreadable file, a key without ``kid``, a duplicate ``kid``, a
    symmetric key or an RSA key under 2048 bits."""
    key = "auth.bearer.keys"
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", key=key) from None
    except ValueError as e:
        raise ConfigError(f"{path} is not JSON: {e}", key=key) from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigError(f"{path} is not a JWK Set (no \"keys\" list, RFC 7517 5)", key=key)
    loaded: dict[tuple[str, str], jwt.PyJWK] = {}
    kids: set[str] = set()
    signing: set[str] = set()
    for jwk in data["keys"]:
        if not isinstance(jwk, dict):
            raise ConfigError(f"{path}: a JWK is not an object", key=key)
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ConfigError(f"{path}: every key needs a \"kid\" (RFC 7517 4.5)", key=key)
        if kid in kids:
            raise ConfigError(f"{path}: kid {kid!r} appears twice", key=key)
        kids.add(kid)
        kty = jwk.get("kty")
        if kty not in ("RSA", "EC", "OKP"):
            raise ConfigError(f"{path}: key {kid!r} has kty {kty!r}: only RSA, EC and OKP public keys are accepted", key=key)
        if "d" in jwk:
            raise ConfigError(f"{path}: key {kid!r} holds a private key: publish public keys only", key=key)
        if jwk.get("use", "sig") != "sig":
            continue  # RFC 7517 4.2: an encryption key never verifies a signature
        signing.add(kid)
        for alg in algorithms:
            want_kty, want_crv = _KEY_TYPES[alg]
            if kty != want_kty or (want_crv is not None and jwk.get("crv") != want_crv):
                continue
            if "alg" in jwk and jwk["alg"] != alg:
                continue  # RFC 7517 4.4: the key is bound to one algorithm
            try:
                pyjwk = jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError as e:
                raise ConfigError(f"{path}: key {kid!r} cannot be used for {alg}: {e}", key=key) from None
            bits = getattr(pyjwk.key, "key_size", None)
            if kty == "RSA" and (bits is None or bits < _MIN_RSA_BITS):
                raise ConfigError(f"{path}: RSA key {kid!r} has {bits} bits, fewer than {_MIN_RSA_BITS}", key=key)
            loaded[(kid, alg)] = pyjwk
    return loaded, frozenset(signing)


def _configured_domain(text: str, key: str) -> str:
    domain = _host_name(text)
    if domain is None:
        raise ConfigError(f"{text!r} is not a host name", key=key)
    return domain


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"malformed {name} claim")
    return float(value)


class BearerValidator:
    """Validates JWT access tokens into identities (RFC 8898 2.3, RFC 9068 4).

    The key set is read once, here: build the validator at start (a bad
    file is a ConfigError then, not a refusal per request).  *clock* gives
    "now" for ``exp``/``nbf``/``iat``.
    """

    def __init__(self, settings: BearerSettings, clock: IReactorTime) -> None:
        self.settings = settings
        self.clock = clock
        self._keys, self._kids = _load_keys(settings.keys, settings.algorithms)
        self._domains = frozenset(_configured_domain(d, "auth.bearer.domains") for d in settings.domains)
        self._default_domain = _configured_domain(settings.default_domain, "auth.bearer.default_domain") if settings.default_domain else None

    def validate(self, token: str) -> Identity:
        """Return the identity a valid token names; raise InvalidToken
        otherwise (bad signature, unknown ``kid``, algorithm not configured
        or not matching the key, wrong ``iss``/``aud`` (RFC 7519 4.1.1,
        4.1.3), expired or not yet valid (4.1.4, 4.1.5), missing or
        malformed identity or roles claim)."""
        settings = self.settings
        if len(token) > _MAX_TOKEN:
            raise InvalidToken("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in settings.algorithms:
            # "none", HS256 and anything else not configured (RFC 8725 3.1).
            raise InvalidToken(f"algorithm {alg!r} not accepted")
        if "crit" in header:
            # RFC 7515 4.1.11: we understand no extension, so none may be
            # critical (PyJWT checks too; this does not depend on it).
            raise InvalidToken("critical header extension not understood")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("token has no kid")
        key = self._keys.get((kid, alg))
        if key is None:
            raise InvalidToken("unknown key id" if kid not in self._kids else f"key {kid!r} is not for {alg}")
        try:
            claims = jwt.decode(
                token, key=key, algorithms=[alg], audience=settings.audience, issuer=settings.issuer,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.MissingRequiredClaimError as e:
            raise InvalidToken(f"missing {e.claim} claim") from None
        except jwt.PyJWTError as e:
            raise InvalidToken(f"invalid token ({type(e).__name__})") from None
        self._check_times(claims)
        username, domain = self._identity(claims)
        return Identity(username, domain, self._roles(claims))

    def _check_times(self, claims: dict[str, Any]) -> None:
        """RFC 7519 4.1.4-4.1.6 against the injected clock, with leeway."""
        now = self.clock.seconds()
        leeway = self.settings.leeway
        exp = _number(claims, "exp")
        if exp is None or exp <= now - leeway:
            raise InvalidToken("token expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise InvalidToken("token not yet valid")
        iat = _number(claims, "iat")
        if iat is not None and iat > now + leeway:
            raise InvalidToken("token issued in the future")

    def _identity(self, claims: dict[str, Any]) -> tuple[str, str]:
        value = claims.get(self.settings.identity_claim)
        if not isinstance(value, str) or not value:
            raise InvalidToken(f"no {self.settings.identity_claim} claim")
        user, at, domain_text = value.rpartition("@")
        if not at:
            user, domain = value, self._default_domain
            if domain is None:
                raise InvalidToken("identity has no domain and no default domain is configured")
        else:
            domain = _host_name(domain_text)
            if domain is None:
                raise InvalidToken("identity domain is not a host name")
        if not _USER.match(user):
            raise InvalidToken("identity user part is not a SIP user (RFC 3261 25.1)")
        if self._domains and domain not in self._domains:
            raise InvalidToken(f"domain {domain} is not served here")
        return user, domain

    def _roles(self, claims: dict[str, Any]) -> frozenset[str]:
        """A list of strings, or one space-separated string (as OAuth's
        ``scope``, RFC 6749 3.3); no claim means no roles."""
        value = claims.get(self.settings.roles_claim)
        if value is None:
            return frozenset()
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list) and all(isinstance(r, str) and r for r in value):
            return frozenset(value)
        raise InvalidToken(f"malformed {self.settings.roles_claim} claim")


def parse_bearer(header_value: str) -> str | None:
    """The token of an ``Authorization``/``Proxy-Authorization`` value with
    the Bearer scheme (RFC 8898 2.2, RFC 6750 2.1; the scheme name is
    case-insensitive, RFC 7235 2.1), or None for any other scheme or a value
    that is not a single b64token."""
    match = _BEARER.match(header_value)
    return match.group(1) if match else None


def _checked(name: str, value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{name} contains a control character")
    return value


def challenge_value(realm: str, authz_server: str | None = None, error: str | None = None) -> str:
    """A ``WWW-Authenticate`` (401) or ``Proxy-Authenticate`` (407) value
    for the Bearer scheme (RFC 8898 2.3, 4: ``Bearer realm="...",
    authz_server="...", error="invalid_token"``).

    ``authz_server`` tells the UA where to get a token (RFC 8898 2.3);
    ``error`` is one of RFC 6750 3.1's codes and belongs on the challenge
    that answers a refused token.  Raises ValueError for an unknown error
    code or a control character in a value.
    """
    params = {"realm": _checked("realm", realm)}
    if authz_server is not None:
        params["authz_server"] = _checked("authz_server", authz_server)
    if error is not None:
        if error not in _ERRORS:
            raise ValueError(f"unknown bearer error code {error!r} (RFC 6750 3.1)")
        params["error"] = error
    return format_auth("Bearer", params, quoted=params.keys())


class IBearerCredentials(ICredentials):
    """A Bearer token a SIP request carried (RFC 8898 2.2)."""

    token = Attribute("The b64token (str) from the Authorization or Proxy-Authorization header.")


@implementer(IBearerCredentials)
@dataclass(frozen=True)
class BearerCredentials:
    token: str


@implementer(ICredentialsChecker)
class BearerChecker:
    """twisted.cred checker over a BearerValidator: fires with a
    ``user@domain`` avatar id carrying the token's roles (for SIPRealm), or
    fails with InvalidToken (an UnauthorizedLogin).  Validation is local
    and synchronous (no key fetch), so this never blocks."""

    credentialInterfaces = (IBearerCredentials,)

    def __init__(self, validator: BearerValidator) -> None:
        self.validator = validator

    def requestAvatarId(self, credentials: Any) -> Any:
        try:
            identity = self.validator.validate(credentials.token)
        except InvalidToken:
            return defer.fail()
        avatar = AvatarId(f"{identity.username}@{identity.domain}")
        avatar.roles = tuple(sorted(identity.roles))
        return defer.succeed(avatar)
