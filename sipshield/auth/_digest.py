"""Digest authentication computations (RFC 7616, RFC 8760, RFC 3261 22.4).

Pure functions and values: nothing here imports Twisted or touches a clock.
Nonce issue and replay tracking live in :mod:`sipshield.auth._nonce`; the
twisted.cred credentials object in :mod:`sipshield.auth._credentials`.

What :func:`verify` does *not* check, and the caller must (RFC 7616 3.4.6,
RFC 3261 22.4): that ``nonce`` is one we issued and is fresh and unreplayed
(``NonceManager.check`` / ``use``), that ``realm`` is the realm we challenged
with, and that ``uri`` designates the Request-URI of the request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sipshield.message import format_auth, parse_auth

__all__ = ["ALGORITHMS", "MAX_AUTH_PARAMS", "MAX_CREDENTIALS_BYTES", "DigestResponse", "challenge_values", "compute_ha1",
           "credentials_refusal", "verify"]

MAX_CREDENTIALS_BYTES = 4096
"""The longest Authorization/Proxy-Authorization value read.  A genuine
digest answer is a few hundred octets (its ``uri`` is the Request-URI), a
bearer token (RFC 8898) a few KB at most."""

MAX_AUTH_PARAMS = 32
"""The most auth-params one credentials value may carry: a digest answer
has at most 12 (RFC 7616 3.4), the rest is an attack on the parser."""

# A quoted-string (RFC 3261 25.1): a comma inside one separates nothing.
_QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"?')

# RFC 7616 3.3 and 6.1, RFC 8760 (SHA-512-256 is SHA-512/256): algorithm -> (hashlib name, is -sess).
_ALGORITHM_SPEC: dict[str, tuple[str, bool]] = {
    "SHA-512-256": ("sha512_256", False),
    "SHA-512-256-sess": ("sha512_256", True),
    "SHA-256": ("sha256", False),
    "SHA-256-sess": ("sha256", True),
    "MD5": ("md5", False),
    "MD5-sess": ("md5", True),
}

ALGORITHMS: tuple[str, ...] = tuple(_ALGORITHM_SPEC)
"""Supported algorithms, strongest first (RFC 8760 2.3: challenges are listed in preference order)."""

# Algorithm tokens compare case-insensitively (RFC 7616 3.3: "algorithm" is a token).
_CANONICAL = {name.lower(): name for name in ALGORITHMS}

_HEX_LENGTH = {name: hashlib.new(spec[0]).digest_size * 2 for name, spec in _ALGORITHM_SPEC.items()}

_QOPS = ("auth", "auth-int")

# RFC 7616 3.4: nc-value = 8LHEX (upper case tolerated from lenient clients).
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")

_REQUIRED = ("username", "realm", "nonce", "uri", "response")


def credentials_refusal(values: Iterable[str]) -> str | None:
    """The 400 reason for credentials too costly to parse, else None.

    Asked before any value is parsed: parsing costs about 5 us per
    auth-param, so one 60 KB ``Digest a="b",a="b",...`` value would take
    20-50 ms of the reactor for a guaranteed failure.  Linear in the
    values' length, at C speed: a value over :data:`MAX_CREDENTIALS_BYTES`
    is refused unread, and auth-params are counted as the commas outside
    quoted strings (only when the plain comma count is above the cap).
    """
    for value in values:
        if len(value) > MAX_CREDENTIALS_BYTES:
            return "Bad Request: credentials too long"
        if value.count(",") >= MAX_AUTH_PARAMS and _QUOTED_RE.sub("", value).count(",") >= MAX_AUTH_PARAMS:
            return "Bad Request: too many auth-params"
    return None


def _canonical_algorithm(name: str) -> str:
    """The canonical spelling of a supported algorithm name, or ValueError."""
    canonical = _CANONICAL.get(name.lower())
    if canonical is None:
        raise ValueError("Digest: unsupported algorithm")
    return canonical


def _h(hash_name: str, text: str) -> str:
    """H(data) as lower-case hex over the UTF-8 form of *text* (RFC 7616 3.4, 4)."""
    return hashlib.new(hash_name, text.encode("utf-8", "surrogatepass")).hexdigest()


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """The stored secret ``H(username ":" realm ":" password)`` as lower-case hex (RFC 7616 3.4.2).

    For the ``-sess`` variants this is still the base value: the session key
    ``H(H(user:realm:pass) ":" nonce ":" cnonce)`` depends on the nonce and
    is derived inside :func:`verify`. Strings are hashed as UTF-8 (RFC 7616 4).
    Raises ValueError for an unsupported algorithm.
    """
    hash_name = _ALGORITHM_SPEC[_canonical_algorithm(algorithm)][0]
    return _h(hash_name, f"{username}:{realm}:{password}")


@dataclass(frozen=True, slots=True)
class DigestResponse:
    """The credentials of an Authorization / Proxy-Authorization header (RFC 7616 3.4, RFC 3261 22.4).

    Build it with :meth:`parse`. ``algorithm`` is the canonical spelling from
    :data:`ALGORITHMS`; ``qop`` is ``None`` for the RFC 2069 form, otherwise
    ``"auth"`` or ``"auth-int"`` and then ``cnonce`` and ``nc`` are set;
    ``response`` is lower-case hex of the algorithm's length.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    # Kept out of repr(): with the nonce it is material for an offline password search.
    response: str = field(repr=False)
    algorithm: str = "MD5"
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None
    userhash: bool = False

    @classmethod
    def parse(cls, value: str) -> DigestResponse:
        """Parse a credentials header value (RFC 7616 3.4, RFC 3261 25.1 ``digest-response``).

        Raises ValueError (a :class:`sipshield.message.ParseError` for
        malformed syntax) for another scheme, a missing username, realm,
        nonce, uri or response, an unsupported algorithm or qop, ``qop``
        without ``cnonce``/``nc`` (RFC 7616 3.4), ``cnonce``/``nc`` without
        ``qop`` (RFC 2617 3.2.2), a malformed ``nc`` or ``response``, and
        ``userhash=true`` (RFC 7616 3.4.4; not supported here). The message
        never echoes peer data.
        """
        header = parse_auth(value)
        if header.scheme.lower() != "digest":
            raise ValueError("Authorization: scheme is not Digest")
        if header.token is not None:
            raise ValueError("Digest: credentials must be auth-params, not a token68")
        params = header.params
        for name in _REQUIRED:
            if not params.get(name):
                raise ValueError(f"Digest: missing {name}")

        algorithm = _canonical_algorithm(params.get("algorithm", "MD5"))

        userhash_value = params.get("userhash", "false").lower()
        if userhash_value == "true":
            raise ValueError("Digest: userhash=true is not supported")
        if userhash_value != "false":
            raise ValueError("Digest: malformed userhash")

        qop = params.get("qop")
        cnonce = params.get("cnonce")
        nc = params.get("nc")
        if qop is not None:
            qop = qop.lower()
            if qop not in _QOPS:
                raise ValueError("Digest: unsupported qop")
            if not cnonce:
                raise ValueError("Digest: qop without cnonce")
            if nc is None:
                raise ValueError("Digest: qop without nc")
            if not _NC_RE.fullmatch(nc):
                raise ValueError("Digest: malformed nc (8 hex digits expected)")
        elif cnonce is not None or nc is not None:
            raise ValueError("Digest: cnonce or nc without qop")

        response = params["response"]
        if len(response) != _HEX_LENGTH[algorithm] or not _HEX_RE.fullmatch(response):
            raise ValueError("Digest: malformed response")

        return cls(
            username=params["username"],
            realm=params["realm"],
            nonce=params["nonce"],
            uri=params["uri"],
            response=response.lower(),
            algorithm=algorithm,
            cnonce=cnonce,
            nc=nc,
            qop=qop,
            opaque=params.get("opaque"),
        )


def verify(resp: DigestResponse, method: str, ha1: str, body: bytes = b"") -> bool:
    """True when ``resp.response`` is the request-digest for *ha1* (RFC 7616 3.4.1-3.4.3).

    *ha1* is the stored ``H(username:realm:password)`` for ``resp.algorithm``
    (see :func:`compute_ha1`); *method* is the request method and *body* the
    message body (hashed for ``qop=auth-int``, RFC 7616 3.4.3). For ``-sess``
    algorithms the session key is ``H(ha1:nonce:cnonce)`` (RFC 7616 3.4.2).
    Without qop only plain MD5 is accepted, in the RFC 2069 form
    ``H(HA1:nonce:HA2)`` (RFC 3261 22.4 backwards compatibility); the other
    algorithms require qop (RFC 7616 3.3: qop MUST be used). The comparison is
    constant-time. Never raises for a well-typed argument.
    """
    spec = _ALGORITHM_SPEC.get(resp.algorithm)
    if spec is None:
        return False
    hash_name, sess = spec
    ha1 = ha1.lower()
    if resp.qop is None:
        if resp.algorithm != "MD5":
            return False
        ha2 = _h(hash_name, f"{method}:{resp.uri}")
        expected = _h(hash_name, f"{ha1}:{resp.nonce}:{ha2}")
    else:
        if resp.cnonce is None or resp.nc is None or resp.qop not in _QOPS:
            return False
        if sess:
            ha1 = _h(hash_name, f"{ha1}:{resp.nonce}:{resp.cnonce}")
        if resp.qop == "auth-int":
            ha2 = _h(hash_name, f"{method}:{resp.uri}:{hashlib.new(hash_name, body).hexdigest()}")
        else:
            ha2 = _h(hash_name, f"{method}:{resp.uri}")
        expected = _h(hash_name, f"{ha1}:{resp.nonce}:{resp.nc}:{resp.cnonce}:{resp.qop}:{ha2}")
    # Bytes, not str: compare_digest raises TypeError on non-ASCII str.
    return hmac.compare_digest(expected.encode("ascii"), resp.response.lower().encode("utf-8", "surrogatepass"))


def challenge_values(
    realm: str,
    nonce: str,
    algorithms: Sequence[str],
    *,
    stale: bool = False,
    opaque: str | None = None,
    qop: str = "auth",
) -> list[str]:
    """One WWW-Authenticate / Proxy-Authenticate value per algorithm, in the order given.

    RFC 8760 2.3 (and RFC 7616 3.7): a server offering several algorithms
    sends one challenge each, in preference order: the operator's order
    (``[auth] algorithms``). ``stale=true`` tells the client its
    credentials were right but the nonce expired (RFC 7616 3.3). *qop* is
    ``"auth"``, ``"auth-int"`` or ``"auth,auth-int"``; it is always sent
    (RFC 7616 3.3). Raises ValueError for an unknown algorithm or qop.
    Example::

        Digest realm="example.com", nonce="...", algorithm=SHA-256, qop="auth", stale=true
    """
    qop_values = [item.strip() for item in qop.split(",")]
    if not qop_values or any(item not in _QOPS for item in qop_values):
        raise ValueError("Digest challenge: qop must be auth and/or auth-int")
    qop_text = ",".join(qop_values)
    values = []
    for name in algorithms:
        params = {"realm": realm, "nonce": nonce}
        if opaque is not None:
            params["opaque"] = opaque
        params["algorithm"] = _canonical_algorithm(name)
        params["qop"] = qop_text
        if stale:
            params["stale"] = "true"
        values.append(format_auth("Digest", params, quoted=("realm", "nonce", "opaque", "qop")))
    return values
