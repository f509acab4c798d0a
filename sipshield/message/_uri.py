"""SIP, SIPS, tel and other URIs (RFC 3261 19.1, RFC 3966, RFC 3986)."""

from __future__ import annotations

import re
from urllib.parse import unquote

from ._errors import ParseError
from ._grammar import HOST_RE, SCHEME_RE

__all__ = ["URI"]

_PORT_RE = re.compile(r"[0-9]{1,5}")
_BAD_URI_CHARS = re.compile(r"[\s<>\"]")
# Userinfo is kept raw (still %-escaped); only characters that can never appear
# in it (LWS, quotes, angle brackets, '@') are refused.
_BAD_USERINFO = re.compile(r"[\s<>\"@]")
_BAD_PARAM = re.compile(r"[\s<>\";?=]")
# RFC 3261 19.1.4: these URI parameters must match when present in either URI.
_STRICT_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def _norm(text: str | None) -> str | None:
    """Unescape %HH and lowercase, for case-insensitive URI components (RFC 3261 19.1.4)."""
    if text is None:
        return None
    if "%" in text:
        text = unquote(text, errors="surrogateescape")
    return text.lower()


def _unescape(text: str | None) -> str | None:
    if text is None or "%" not in text:
        return text
    return unquote(text, errors="surrogateescape")


class URI:
    """A parsed URI.

    For ``sip``/``sips`` (RFC 3261 19.1.1): ``user`` and ``password`` are kept
    raw (still %-escaped as received), ``host`` is lowercased (IPv6 references
    keep their brackets, ``[::1]``), ``port`` is an int or None, ``params``
    maps lowercased parameter names to raw values (None for a parameter
    without value), ``headers`` is the raw text after ``?`` or None.

    For ``tel`` (RFC 3966): the number (global or local) is in ``user``,
    ``host`` is None and ``params`` holds the parameters.

    For any other scheme (RFC 3986 absoluteURI, for example ``soap.beep`` or
    an unknown scheme a proxy answers with 416): ``opaque`` holds everything
    after ``scheme:`` and the other fields are None/empty.

    ``str(uri)`` returns the original text when the URI is unchanged, so
    escapes and spelling are preserved; otherwise it rebuilds the URI.
    Equality and hashing follow RFC 3261 19.1.4.
    """

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers", "opaque", "_text", "_fp")

    def __init__(
        self,
        scheme: str,
        host: str | None = None,
        user: str | None = None,
        password: str | None = None,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        headers: str | None = None,
        opaque: str | None = None,
    ) -> None:
        self.scheme = scheme.lower()
        self.host = host.lower() if host is not None and self.scheme in ("sip", "sips") else host
        self.user = user
        self.password = password
        self.port = port
        self.params: dict[str, str | None] = dict(params) if params else {}
        self.headers = headers
        self.opaque = opaque
        self._text: str | None = None
        self._fp: tuple[object, ...] | None = None

    # -- parsing -------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> URI:
        """Parse a URI; raise :class:`ParseError` (400) when it is malformed.

        Unknown schemes are not an error here: the proxy answers 416
        (RFC 3261 8.2.2.1 / 16.3) after looking at ``scheme``.
        """
        colon = text.find(":")
        if colon <= 0 or not SCHEME_RE.fullmatch(text, 0, colon):
            raise ParseError("URI: missing or invalid scheme")
        scheme = text[:colon].lower()
        rest = text[colon + 1 :]
        if scheme == "sip" or scheme == "sips":
            uri = cls._parse_sip(scheme, rest)
        elif scheme == "tel":
            uri = cls._parse_tel(rest)
        else:
            if not rest or _BAD_URI_CHARS.search(rest):
                raise ParseError("URI: invalid characters")
            uri = cls.__new__(cls)
            uri.scheme = scheme
            uri.user = uri.password = uri.host = uri.headers = None
            uri.port = None
            uri.params = {}
            uri.opaque = rest
        uri._text = text
        uri._fp = uri._fingerprint()
        return uri

    @classmethod
    def _parse_sip(cls, scheme: str, rest: str) -> URI:
        """RFC 3261 19.1.1 / 25.1 SIP-URI and SIPS-URI."""
        user: str | None = None
        password: str | None = None
        at = rest.find("@")
        if at >= 0:
            userinfo = rest[:at]
            rest = rest[at + 1 :]
            if not userinfo or _BAD_USERINFO.search(userinfo):
                raise ParseError("URI: invalid userinfo")
            user, sep, pw = userinfo.partition(":")
            if sep:
                password = pw
        headers: str | None = None
        q = rest.find("?")
        if q >= 0:
            headers = rest[q + 1 :]
            rest = rest[:q]
            if _BAD_URI_CHARS.search(headers):
                raise ParseError("URI: invalid headers")
        params: dict[str, str | None] = {}
        semi = rest.find(";")
        if semi >= 0:
            for item in rest[semi + 1 :].split(";"):
                name, eq, value = item.partition("=")
                if not name or _BAD_PARAM.search(name) or (eq and _BAD_PARAM.search(value)):
                    raise ParseError("URI: invalid parameter")
                params[name.lower()] = value if eq else None
            rest = rest[:semi]
        port: int | None = None
        if rest.startswith("["):
            close = rest.find("]")
            if close < 0:
                raise ParseError("URI: invalid IPv6 reference")
            host = rest[: close + 1]
            tail = rest[close + 1 :]
            if tail:
                if tail[0] != ":":
                    raise ParseError("URI: invalid host")
                port_text = tail[1:]
            else:
                port_text = None
        else:
            host, sep, port_text_ = rest.partition(":")
            port_text = port_text_ if sep else None
        if not HOST_RE.fullmatch(host):
            raise ParseError("URI: invalid host")
        if port_text is not None:
            if not _PORT_RE.fullmatch(port_text) or int(port_text) > 65535:
                raise ParseError("URI: invalid port")
            port = int(port_text)
        uri = cls.__new__(cls)
        uri.scheme = scheme
        uri.user = user
        uri.password = password
        uri.host = host.lower()
        uri.port = port
        uri.params = params
        uri.headers = headers
        uri.opaque = None
        return uri

    @classmethod
    def _from_fast(cls, text: str, user: str | None, host: str, port: str | None, ptext: str) -> URI | None:
        """Build a sip/sips URI from the groups of ``FAST_ADDRESS_RE`` (see ``_grammar``).

        That expression only matches URIs :meth:`parse` accepts, with the same
        split into user, host, port and parameters, so the result equals
        ``URI.parse(text)``. Returns None for a port above 65535, so that the
        caller falls back to :meth:`parse` and its error.
        """
        port_no: int | None = None
        if port is not None:
            port_no = int(port)
            if port_no > 65535:
                return None
        params: dict[str, str | None] = {}
        if ptext:
            for item in ptext[1:].split(";"):
                name, eq, value = item.partition("=")
                params[name.lower()] = value if eq else None
        uri = cls.__new__(cls)
        uri.scheme = text[:4] if text[3] == "s" else "sip"
        uri.user = user
        uri.password = None
        uri.host = host.lower()
        uri.port = port_no
        uri.params = params
        uri.headers = None
        uri.opaque = None
        uri._text = text
        uri._fp = uri._fingerprint()
        return uri

    @classmethod
    def _parse_tel(cls, rest: str) -> URI:
        """RFC 3966 telephone-subscriber: the number goes to ``user``."""
        number, _, ptext = rest.partition(";")
        if not number or _BAD_URI_CHARS.search(rest):
            raise ParseError("URI: invalid tel URI")
        params: dict[str, str | None] = {}
        if ptext:
            for item in ptext.split(";"):
                name, eq, value = item.partition("=")
                if not name:
                    raise ParseError("URI: invalid parameter")
                params[name.lower()] = value if eq else None
        uri = cls.__new__(cls)
        uri.scheme = "tel"
        uri.user = number
        uri.password = uri.host = uri.headers = uri.opaque = None
        uri.port = None
        uri.params = params
        return uri

    # -- serialisation -------------------------------------------------------

    def _fingerprint(self) -> tuple[object, ...]:
        return (self.scheme, self.user, self.password, self.host, self.port, tuple(self.params.items()), self.headers, self.opaque)

    def __str__(self) -> str:
        if self._text is not None and self._fp == self._fingerprint():
            return self._text
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":")
                parts.append(self.password)
            if self.host is not None:
                parts.append("@")
        if self.host is not None:
            parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        for name, value in self.params.items():
            parts.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers is not None:
            parts.append("?")
            parts.append(self.headers)
        return "".join(parts)

    def __repr__(self) -> str:
        return f"URI({str(self)!r})"

    # -- convenience -----------------------------------------------------------

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lowercased (RFC 3261 19.1.1), or None."""
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        """True when the loose-routing ``lr`` parameter is present (RFC 3261 19.1.1)."""
        return "lr" in self.params

    @property
    def maddr(self) -> str | None:
        """The ``maddr`` parameter or None (RFC 3261 19.1.1)."""
        return self.params.get("maddr")

    @property
    def canonical_user(self) -> str | None:
        """The user part as it identifies someone: %HH-unescaped (RFC 3261
        19.1.4: "an escaped character and its unescaped form are
        equivalent"), case-sensitive; None when the URI has none.

        This is the one form in which sipshield compares users: the
        registrar's and the location service's AOR keys (``aor_of``), the
        From/To identity checks of the auth and RBAC stages, and URI
        equality here.  ``sip:%61lice@example.com`` is ``alice``.
        """
        return _unescape(self.user)

    @property
    def is_sip(self) -> bool:
        """True for ``sip`` and ``sips`` URIs."""
        return self.scheme == "sip" or self.scheme == "sips"

    def copy(self) -> URI:
        """A shallow copy that can be modified independently (params dict copied)."""
        other = URI.__new__(URI)
        for slot in URI.__slots__:
            setattr(other, slot, getattr(self, slot))
        other.params = dict(self.params)
        return other

    # -- RFC 3261 19.1.4 comparison -------------------------------------------

    def _norm_params(self) -> dict[str | None, str | None]:
        return {_norm(k): _norm(v) for k, v in self.params.items()}

    def _norm_headers(self) -> frozenset[tuple[str | None, str | None]]:
        if not self.headers:
            return frozenset()
        items = set()
        for item in self.headers.split("&"):
            name, _, value = item.partition("=")
            items.add((_norm(name), _unescape(value)))
        return frozenset(items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, URI):
            return NotImplemented
        if self.scheme != other.scheme:
            return False
        if self.opaque is not None or other.opaque is not None:
            return self.opaque == other.opaque
        if self.canonical_user != other.canonical_user or _unescape(self.password) != _unescape(other.password):
            return False
        if self.host != other.host or self.port != other.port:
            return False
        if self.scheme == "tel" and self.host is None:
            return self._norm_params() == other._norm_params()
        mine = self._norm_params()
        theirs = other._norm_params()
        for name in _STRICT_PARAMS:
            if (name in mine or name in theirs) and mine.get(name, "\0") != theirs.get(name, "\0"):
                return False
        for pname, pvalue in mine.items():
            if pname in theirs and theirs[pname] != pvalue:
                return False
        return self._norm_headers() == other._norm_headers()

    def __hash__(self) -> int:
        params = self._norm_params()
        strict = tuple((n, params[n]) for n in _STRICT_PARAMS if n in params)
        host = self.host
        return hash((self.scheme, self.canonical_user, _unescape(self.password), host, self.port, strict, self._norm_headers(), self.opaque))
