"""Header names, the ordered header collection and the typed header values.

RFC 3261 7.3 (header fields), 20 (header field definitions) and 25.1 (ABNF).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from operator import itemgetter

from ._errors import ParseError
from ._grammar import (
    ADDR_SPEC_HEAD_RE,
    AUTH_HEAD_RE,
    AUTH_PARAM_RE,
    CSEQ_RE,
    HOST_RE,
    NAME_ADDR_HEAD_RE,
    PARAM_RE,
    TOKEN_RE,
    VIA_HEAD_RE,
    ip_version,
    quote_string,
    split_commas,
    unquote_string,
)
from ._uri import URI

__all__ = [
    "Address",
    "AuthHeader",
    "Contact",
    "CSeq",
    "Headers",
    "Via",
    "canonical_name",
    "format_auth",
    "parse_auth",
]

# RFC 3261 20 and the extension RFCs that define compact forms (7.3.3).
_CANONICAL = (
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "Identity",
    "In-Reply-To",
    "Max-Forwards",
    "MIME-Version",
    "Min-Expires",
    "Organization",
    "Path",
    "Priority",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "RAck",
    "Server",
    "Session-Expires",
    "Subject",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
    "Min-SE",
    "Service-Route",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Privacy",
    "Subscription-State",
    "Security-Client",
    "Security-Server",
    "Security-Verify",
    "Replaces",
    "Reason",
    "Content-Transfer-Encoding",
)
_COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "f": "From",
    "t": "To",
    "v": "Via",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "y": "Identity",
    "a": "Accept-Contact",
    "d": "Request-Disposition",
    "j": "Reject-Contact",
}
# What parse_message checks eagerly: 1 = single-valued (RFC 3261 7.3.1, 20),
# 2 = Via, 3 = other checked header (Contact, Expires).
_CHECKS = {"to": 1, "from": 1, "call-id": 1, "cseq": 1, "max-forwards": 1, "content-length": 1, "via": 2, "contact": 3, "expires": 3}
# lowercased spelling (long or compact) -> (key, canonical name, check); the key
# is the lowercased canonical name and is what Headers compares.
KNOWN: dict[str, tuple[str, str, int]] = {name.lower(): (name.lower(), name, _CHECKS.get(name.lower(), 0)) for name in _CANONICAL}
KNOWN.update({short: KNOWN[long.lower()] for short, long in _COMPACT.items()})
# Exact spellings as usually sent, so the hot path can skip str.lower().
KNOWN.update({name: KNOWN[name.lower()] for name in _CANONICAL})
KNOWN.update({short.upper(): KNOWN[short] for short in _COMPACT})

# Headers whose value is a comma-separated list (RFC 3261 7.3.1: "#element" in
# the grammar of 20 and of the extension RFCs), by key.  Only their commas
# separate values; in any other header (Authorization, Date, Subject, an
# unknown extension...) a comma is just text.
LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events", "Call-Info",
        "Contact", "Content-Encoding", "Content-Language", "Error-Info", "In-Reply-To", "Path", "Proxy-Require", "Reason",
        "Record-Route", "Reject-Contact", "Request-Disposition", "Require", "Route", "Security-Client", "Security-Server",
        "Security-Verify", "Service-Route", "Supported", "Unsupported", "Via", "Warning", "P-Asserted-Identity",
        "P-Preferred-Identity",
    )
)


def canonical_name(name: str) -> tuple[str, str]:
    """Return ``(key, display name)`` for a header name (RFC 3261 7.3.3, 7.3.1).

    Known names (long or compact form, any case) map to their canonical long
    spelling; unknown names keep their spelling and are keyed case-insensitively.
    """
    info = KNOWN.get(name) or KNOWN.get(name.lower())
    if info is not None:
        return info[0], info[1]
    name = name.strip(" \t")
    info = KNOWN.get(name.lower())
    if info is not None:
        return info[0], info[1]
    if not TOKEN_RE.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    return name.lower(), name


def _key(name: str) -> str:
    info = KNOWN.get(name) or KNOWN.get(name.lower())
    if info is not None:
        return info[0]
    return name.strip(" \t").lower()


def _check_value(value: str) -> str:
    # Refuse header injection: a value is one line (RFC 3261 7.3.1).
    if not value.isprintable() and ("\r" in value or "\n" in value or "\0" in value):
        raise ValueError("header values must not contain CR, LF or NUL")
    return value


# One header line: (key, name, value, raw). ``raw`` is the line as received
# (including any folding) or None once it has been built or changed.
_Entry = tuple[str, str, str, "str | None"]
_entry_key = itemgetter(0)


class Headers:
    """The ordered header fields of a message (RFC 3261 7.3).

    Names are case-insensitive and compact forms are accepted everywhere.
    Values are the unfolded text of each header line (RFC 3261 7.3.1).
    Untouched lines keep their received text for serialisation.
    """

    __slots__ = ("_entries", "_cache", "_dirty")

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] | None = None) -> None:
        self._entries: list[_Entry] = []
        self._cache: dict[str, object] = {}
        self._dirty = True
        if items is not None:
            pairs = items.items() if isinstance(items, Mapping) else items
            for name, value in pairs:
                self.add(name, value)

    @classmethod
    def _from_entries(cls, entries: list[_Entry]) -> Headers:
        self = cls.__new__(cls)
        self._entries = entries
        self._cache = {}
        self._dirty = False
        return self

    def _changed(self, key: str) -> None:
        self._dirty = True
        cache = self._cache
        if cache:
            cache.pop(key, None)
            if key == "via":
                cache.pop("top_via", None)

    # -- reading ---------------------------------------------------------------

    def _get(self, key: str) -> str | None:
        for entry in self._entries:
            if entry[0] == key:
                return entry[2]
        return None

    def get(self, name: str) -> str | None:
        """The value of the first header line called *name*, or None."""
        key = _key(name)
        for entry in self._entries:
            if entry[0] == key:
                return entry[2]
        return None

    def get_all(self, name: str) -> list[str]:
        """The values of every header line called *name*, in order (not comma-split)."""
        key = _key(name)
        return [entry[2] for entry in self._entries if entry[0] == key]

    def get_values(self, name: str) -> list[str]:
        """Every comma-separated value of the header *name* across all its lines (RFC 3261 7.3.1)."""
        values: list[str] = []
        for raw in self.get_all(name):
            values.extend(split_commas(raw))
        return values

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _key(name)
        return any(entry[0] == key for entry in self._entries)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for entry in self._entries:
            yield entry[1], entry[2]

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._comparable() == other._comparable()

    __hash__ = None  # type: ignore[assignment]

    def _comparable(self) -> list[tuple[str, str]]:
        return [(e[0], e[2]) for e in self._entries if e[0] != "content-length"]

    def copy(self) -> Headers:
        """An independent copy (raw text of untouched lines is kept)."""
        other = Headers._from_entries(list(self._entries))
        other._dirty = self._dirty
        return other

    # -- mutation --------------------------------------------------------------

    def add(self, name: str, value: str) -> None:
        """Append a header line."""
        key, display = canonical_name(name)
        self._entries.append((key, display, _check_value(value), None))
        self._changed(key)

    def prepend(self, name: str, value: str) -> None:
        """Insert a header line before the first line of the same name.

        If there is none, a Via goes to the very top (RFC 3261 16.6 step 8,
        18.1.1) and any other header is appended.
        """
        info = KNOWN.get(name)
        key, display = (info[0], info[1]) if info is not None else canonical_name(name)
        entry = (key, display, _check_value(value), None)
        entries = self._entries
        for index, existing in enumerate(entries):
            if existing[0] == key:
                entries.insert(index, entry)
                break
        else:
            if key == "via":
                self._entries.insert(0, entry)
            else:
                self._entries.append(entry)
        self._changed(key)

    def set(self, name: str, value: str) -> None:
        """Replace every line called *name* by one line (in place of the first)."""
        info = KNOWN.get(name)
        key, display = (info[0], info[1]) if info is not None else canonical_name(name)
        entry = (key, display, _check_value(value), None)
        entries = self._entries
        for index, existing in enumerate(entries):
            if existing[0] == key:
                entries[index] = entry
                # Usually the only line: look for more without building a list.
                if key in map(_entry_key, islice(entries, index + 1, None)):
                    self._entries = entries[: index + 1] + [e for e in entries[index + 1 :] if e[0] != key]
                break
        else:
            entries.append(entry)
        self._changed(key)

    def remove(self, name: str) -> None:
        """Remove every line called *name* (no error when absent)."""
        key = _key(name)
        self._entries = [e for e in self._entries if e[0] != key]
        self._changed(key)

    def remove_first(self, name: str) -> str | None:
        """Remove the first comma-separated value of *name* and return it.

        This is how a proxy pops its own Via from a response (RFC 3261 16.7
        step 3) or a Route value (16.4, 16.12). The rest of the line is kept.
        """
        key = _key(name)
        for index, entry in enumerate(self._entries):
            if entry[0] == key:
                values = split_commas(entry[2])
                first = values[0]
                if len(values) == 1:
                    del self._entries[index]
                else:
                    self._entries[index] = (key, entry[1], ", ".join(values[1:]), None)
                self._changed(key)
                return first
        return None

    def remove_first_values(self, name: str, count: int) -> None:
        """Remove the first *count* comma-separated values of *name*, across
        its lines, in one pass (a proxy dropping its own Routes, RFC 3261
        16.4); the rest of a partly removed line is kept."""
        if count <= 0:
            return
        key = _key(name)
        kept: list[_Entry] = []
        left = count
        for entry in self._entries:
            if left and entry[0] == key:
                values = split_commas(entry[2])
                if len(values) <= left:
                    left -= len(values)
                    continue
                entry = (key, entry[1], ", ".join(values[left:]), None)
                left = 0
            kept.append(entry)
        self._entries = kept
        self._changed(key)

    def replace_first(self, name: str, value: str) -> None:
        """Replace the first comma-separated value of *name* (e.g. to add ``received`` to the top Via, RFC 3261 18.2.1)."""
        key = _key(name)
        _check_value(value)
        for index, entry in enumerate(self._entries):
            if entry[0] == key:
                values = split_commas(entry[2])
                values[0] = value
                self._entries[index] = (key, entry[1], ", ".join(values), None)
                self._changed(key)
                return
        self.add(name, value)


# -- parameters ----------------------------------------------------------------


def parse_params(text: str, pos: int = 0, what: str = "Header") -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )`` from *text* at *pos* (RFC 3261 25.1).

    Names are lowercased; values are kept raw (quoted-strings keep their quotes).
    """
    params: dict[str, str | None] = {}
    n = len(text)
    while pos < n:
        m = PARAM_RE.match(text, pos)
        if m is None:
            raise ParseError(f"{what}: invalid parameter")
        params[m.group(1).lower()] = m.group(2)
        pos = m.end()
    return params


def _fast_params(text: str) -> dict[str, str | None]:
    """``parse_params`` for the parameter text a fast-path expression matched.

    ``FAST_VIA_RE`` and ``FAST_ADDRESS_RE`` only match ``;token[=value]`` items
    without LWS, quotes, ``;`` or ``=`` inside a value, so splitting gives the
    same names and values as the full grammar.
    """
    params: dict[str, str | None] = {}
    if text:
        for item in text[1:].split(";"):
            name, eq, value = item.partition("=")
            params[name.lower()] = value if eq else None
    return params


def format_params(params: Mapping[str, str | None]) -> str:
    """Render a parameter mapping as ``;name=value;flag``."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# -- Via -----------------------------------------------------------------------


def _is_ip_literal(text: str) -> bool:
    if text[:1] == "[" and text[-1:] == "]":
        text = text[1:-1]
    return ip_version(text) is not None and "%" not in text  # a scope zone names an interface of the sender, not an address


def _check_via_params(params: dict[str, str | None]) -> None:
    """The Via parameters a proxy sends to must have their grammar: via-received
    is an IPv4 or IPv6 address, via-maddr a host, via-ttl 0-255 (RFC 3261 20.42,
    25.1), response-port 1-65535 (RFC 3581 4, a port).  Anything else is a
    malformed Via, answered 400 for a request and dropped for a response."""
    if "received" in params:
        value = params["received"]
        if not value or not _is_ip_literal(value):
            raise ParseError("Via: received is not an IP address")
    rport = params.get("rport")
    if rport is not None and not (len(rport) <= 5 and rport.isdigit() and rport.isascii() and 0 < int(rport) <= 65535):
        raise ParseError("Via: rport out of range")
    if "maddr" in params:
        value = params["maddr"]
        if not value or not HOST_RE.fullmatch(value) or (value[0] == "[" and not _is_ip_literal(value)):
            raise ParseError("Via: maddr is not a host")
    if "ttl" in params:
        value = params["ttl"]
        if not value or len(value) > 3 or not value.isdigit() or not value.isascii() or int(value) > 255:
            raise ParseError("Via: ttl out of range")


class Via:
    """One Via value (RFC 3261 20.42, 18.2.1): ``protocol/transport host[:port];params``."""

    __slots__ = ("protocol", "transport", "host", "port", "params")

    def __init__(self, transport: str, host: str, port: int | None = None, params: Mapping[str, str | None] | None = None, protocol: str = "SIP/2.0") -> None:
        self.protocol = protocol
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = dict(params) if params else {}

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one Via value; LWS is allowed around ``/`` (RFC 4475 3.1.1.1)."""
        m = VIA_HEAD_RE.match(text)
        if m is None:
            raise ParseError("Via: malformed sent-protocol or sent-by")
        via = cls.__new__(cls)
        via.protocol = f"{m.group(1).upper()}/{m.group(2)}"
        via.transport = m.group(3).upper()
        via.host = m.group(4).lower()
        port = m.group(5)
        if port is not None:
            via.port = int(port)
            if via.port > 65535:
                raise ParseError("Via: port out of range")
        else:
            via.port = None
        via.params = parse_params(text, m.end(), "Via") if m.end() < len(text) else {}
        if via.params:
            _check_via_params(via.params)
        return via

    @classmethod
    def _from_fast(cls, m: re.Match[str]) -> Via:
        """Build the Via a ``FAST_VIA_RE`` match describes; equal to ``Via.parse(m.string)``."""
        transport, host, port, ptext = m.groups()
        via = cls.__new__(cls)
        via.protocol = "SIP/2.0"
        via.transport = transport
        via.host = host.lower()
        if port is not None:
            via.port = int(port)
            if via.port > 65535:
                raise ParseError("Via: port out of range")
        else:
            via.port = None
        via.params = params = _fast_params(ptext)
        if params:
            _check_via_params(params)
        return via

    def __str__(self) -> str:
        hostport = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.transport} {hostport}{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return (self.protocol, self.transport, self.host, self.port, self.params) == (other.protocol, other.transport, other.host, other.port, other.params)

    __hash__ = None  # type: ignore[assignment]

    @property
    def branch(self) -> str | None:
        """The branch parameter (RFC 3261 8.1.1.7); None for RFC 2543 peers."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The received parameter (RFC 3261 18.2.1)."""
        return self.params.get("received")

    @property
    def rport(self) -> str | None:
        """RFC 3581 rport: None when absent, '' when present without value."""
        if "rport" not in self.params:
            return None
        return self.params["rport"] or ""

    @property
    def maddr(self) -> str | None:
        """The maddr parameter (RFC 3261 18.2.2)."""
        return self.params.get("maddr")

    @property
    def ttl(self) -> int | None:
        """The ttl parameter as an int, or None (RFC 3261 20.42)."""
        value = self.params.get("ttl")
        if value is None or not value.isdigit():
            return None
        return int(value)


# -- CSeq ----------------------------------------------------------------------


class CSeq:
    """The CSeq header (RFC 3261 20.16, 8.1.1.5): a sequence number below 2**31 and a method."""

    __slots__ = ("seq", "method")

    def __init__(self, seq: int, method: str) -> None:
        self.seq = seq
        self.method = method

    @classmethod
    def parse(cls, text: str) -> CSeq:
        """Parse ``1*DIGIT LWS Method``; the number must be below 2**31."""
        m = CSEQ_RE.fullmatch(text.strip(" \t"))
        if m is None:
            raise ParseError("CSeq: malformed value")
        seq = int(m.group(1))
        if seq >= 2**31:
            raise ParseError("CSeq: sequence number out of range")
        return cls(seq, m.group(2))

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"

    def __repr__(self) -> str:
        return f"CSeq({self.seq}, {self.method!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CSeq):
            return NotImplemented
        return self.seq == other.seq and self.method == other.method

    def __hash__(self) -> int:
        return hash((self.seq, self.method))


# -- name-addr / addr-spec -------------------------------------------------------


class Address:
    """A name-addr or addr-spec with header parameters (RFC 3261 20.10, 20.20, 20.39).

    In the addr-spec form (no ``<>``) the parameters after ``;`` belong to the
    header, not to the URI (RFC 3261 20.10). ``display_name`` has quotes and
    quoted-pairs resolved. ``str()`` always renders the name-addr form.
    """

    __slots__ = ("display_name", "uri", "params")

    def __init__(self, uri: URI | str, display_name: str | None = None, params: Mapping[str, str | None] | None = None) -> None:
        self.uri = uri if isinstance(uri, URI) else URI.parse(uri)
        self.display_name = display_name
        self.params: dict[str, str | None] = dict(params) if params else {}

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse one name-addr / addr-spec with its parameters; raise ParseError (400)."""
        self = cls.__new__(cls)
        self._parse_into(text)
        return self

    @classmethod
    def _from_fast(cls, m: re.Match[str]) -> Address:
        """Build the address a ``FAST_ADDRESS_RE`` match describes; equal to ``Address.parse(m.string)``."""
        self = cls.__new__(cls)
        if not self._fill_fast(m):
            return cls.parse(m.string)  # raises the full parser's error
        return self

    def _fill_fast(self, m: re.Match[str]) -> bool:
        quoted, tokens, uri_text, user, host, port, uri_params, ptext = m.groups()
        uri = URI._from_fast(uri_text, user, host, port, uri_params)
        if uri is None:
            return False
        if quoted is not None:
            self.display_name = quoted
        else:
            self.display_name = tokens[:-1] if tokens else None
        self.uri = uri
        self.params = _fast_params(ptext)
        return True

    def _parse_into(self, text: str) -> None:
        m = NAME_ADDR_HEAD_RE.match(text)
        if m is not None:
            display = m.group(1)
            if display is not None and display.startswith('"'):
                display = unquote_string(display)
            self.display_name = display
            self.uri = URI.parse(m.group(2))
        else:
            m = ADDR_SPEC_HEAD_RE.match(text)
            if m is None:
                raise ParseError(f"{self._what()}: malformed name-addr or addr-spec")
            self.display_name = None
            self.uri = URI.parse(m.group(1))
        self.params = parse_params(text, m.end(), self._what()) if m.end() < len(text) else {}

    def _what(self) -> str:
        return "Address"

    @property
    def tag(self) -> str | None:
        """The ``tag`` header parameter (RFC 3261 19.3)."""
        return self.params.get("tag")

    def __str__(self) -> str:
        display = f"{quote_string(self.display_name)} " if self.display_name else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Address):
            return NotImplemented
        return (self.display_name, self.uri, self.params) == (other.display_name, other.uri, other.params)

    __hash__ = None  # type: ignore[assignment]


class Contact(Address):
    """A Contact value (RFC 3261 20.10): an address, or ``*`` in a REGISTER (10.2.2)."""

    __slots__ = ("is_star",)

    def __init__(self, uri: URI | str, display_name: str | None = None, params: Mapping[str, str | None] | None = None) -> None:
        super().__init__(uri, display_name, params)
        self.is_star = False

    @classmethod
    def parse(cls, text: str) -> Contact:
        """Parse one Contact value, accepting ``*``."""
        self = cls.__new__(cls)
        if text.strip(" \t") == "*":
            self.is_star = True
            self.display_name = None
            self.uri = URI("*")
            self.params = {}
            return self
        self.is_star = False
        self._parse_into(text)
        return self

    @classmethod
    def _from_fast(cls, m: re.Match[str]) -> Contact:
        """Build the Contact a ``FAST_ADDRESS_RE`` match describes; equal to ``Contact.parse(m.string)``."""
        self = cls.__new__(cls)
        self.is_star = False
        if not self._fill_fast(m):
            return cls.parse(m.string)
        return self

    def _what(self) -> str:
        return "Contact"

    @property
    def expires(self) -> int | None:
        """The expires parameter in seconds (RFC 3261 20.10); None when absent or not a number."""
        value = self.params.get("expires")
        if value is None or not value.isdigit() or len(value) > 10:
            return None
        return int(value)

    @property
    def q(self) -> float | None:
        """The q parameter (RFC 3261 20.10), 0.0 to 1.0; None when absent or invalid."""
        value = self.params.get("q")
        if value is None:
            return None
        try:
            q = float(value)
        except ValueError:
            return None
        return q if 0.0 <= q <= 1.0 else None

    def __str__(self) -> str:
        if self.is_star:
            return "*"
        return super().__str__()


# -- Authorization / WWW-Authenticate ---------------------------------------------


class AuthHeader:
    """A challenge or credentials header (RFC 3261 20.7, 20.27, 20.28, 20.44; RFC 7235).

    ``params`` holds the auth-params with quoted values unquoted. A scheme
    followed by a token68 instead of parameters keeps it in ``token``.
    """

    __slots__ = ("scheme", "params", "token")

    def __init__(self, scheme: str, params: Mapping[str, str] | None = None, token: str | None = None) -> None:
        self.scheme = scheme
        self.params: dict[str, str] = dict(params) if params else {}
        self.token = token

    def __repr__(self) -> str:
        return f"AuthHeader({self.scheme!r}, {self.params!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuthHeader):
            return NotImplemented
        return (self.scheme.lower(), self.params, self.token) == (other.scheme.lower(), other.params, other.token)

    __hash__ = None  # type: ignore[assignment]


def parse_auth(value: str) -> AuthHeader:
    """Parse ``scheme auth-param *(COMMA auth-param)`` (RFC 3261 25.1 challenge / credentials).

    Parameter names are lowercased; quoted values are unquoted.
    """
    m = AUTH_HEAD_RE.match(value)
    if m is None:
        raise ParseError("Authorization: missing scheme")
    scheme = m.group(1)
    rest = value[m.end() :].strip(" \t")
    params: dict[str, str] = {}
    if not rest:
        return AuthHeader(scheme, params)
    pos = 0
    n = len(rest)
    while pos < n:
        pm = AUTH_PARAM_RE.match(rest, pos)
        if pm is None:
            if not params and TOKEN_RE.fullmatch(rest.rstrip("=")):
                return AuthHeader(scheme, params, token=rest)
            raise ParseError("Authorization: malformed auth-param")
        raw = pm.group(2)
        params[pm.group(1).lower()] = unquote_string(raw) if raw.startswith('"') else raw
        pos = pm.end()
        while pos < n and rest[pos] in " \t":
            pos += 1
    return AuthHeader(scheme, params)


_UNQUOTED_AUTH = frozenset({"algorithm", "nc", "stale"})


def format_auth(scheme: str, params: Mapping[str, str], quoted: Iterable[str] | None = None) -> str:
    """Render an auth header value (RFC 3261 25.1, RFC 2617 3.2).

    *quoted* names the parameters to render as quoted-strings; by default every
    parameter except ``algorithm``, ``nc`` and ``stale`` is quoted. Note that
    in credentials (Authorization) ``qop`` must be unquoted: pass *quoted*
    explicitly there.
    """
    quote_set = {q.lower() for q in quoted} if quoted is not None else None
    items = []
    for name, value in params.items():
        lname = name.lower()
        must_quote = (lname in quote_set) if quote_set is not None else (lname not in _UNQUOTED_AUTH)
        items.append(f"{name}={quote_string(value) if must_quote else value}")
    return f"{scheme} {', '.join(items)}" if items else scheme
