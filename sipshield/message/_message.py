"""SIP requests and responses: parsing, typed access, editing and serialisation.

RFC 3261 7 (SIP messages), 8.2.6 (building responses), 18.3 (framing),
20 (header fields), 21 (status codes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any

from ._errors import ParseError
from ._grammar import (
    ADDRESS_RE,
    CALLID_RE,
    CONTACTS_RE,
    CSEQ_RE,
    DIGITS_RE,
    FAST_ADDRESS_RE,
    FAST_VIA_RE,
    SIP_RURI_RE,
    SIP_VERSION_RE,
    TOKEN_RE,
    VIAS_RE,
    count_values,
    split_commas,
)
from ._headers import KNOWN, LIST_HEADERS, Address, Contact, CSeq, Headers, Via, _Entry
from ._uri import URI

__all__ = ["Message", "Request", "Response", "check_header_values", "parse_message", "REASON_PHRASES"]

SIP_VERSION = "SIP/2.0"

#: RFC 3261 21 reason phrases (plus a few widely used extension codes).
REASON_PHRASES: Mapping[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    429: "Too Many Requests",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}
_CLASS_REASONS = {1: "Provisional", 2: "Successful", 3: "Redirection", 4: "Client Error", 5: "Server Error", 6: "Global Failure"}

# Headers that may appear only once (RFC 3261 7.3.1, 20; RFC 4475 3.3.8, 3.3.9).
_SINGLE = frozenset({"to", "from", "call-id", "cseq", "max-forwards", "content-length"})
_REQUIRED = (("to", "To"), ("from", "From"), ("call-id", "Call-ID"), ("cseq", "CSeq"), ("via", "Via"))
_MAX_CONTENT_LENGTH = 2**31 - 1
# Methods that are known tokens, so the Request-Line check can skip TOKEN_RE.
_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"})
_fast_via = FAST_VIA_RE.fullmatch
_fast_address = FAST_ADDRESS_RE.fullmatch


def _reason_for(status: int) -> str:
    return REASON_PHRASES.get(status) or _CLASS_REASONS.get(status // 100, "Unknown")


class Message:
    """Common part of :class:`Request` and :class:`Response` (RFC 3261 7).

    ``headers`` is an ordered :class:`Headers`; ``body`` is bytes. The typed
    accessors parse on first use and cache the result until the header changes;
    they raise :class:`ParseError` when the header is absent or malformed.
    """

    __slots__ = ("headers", "body", "version", "_raw_head", "_cl", "wire_size")

    headers: Headers
    body: bytes
    version: str
    wire_size: int
    """Octets the message took as received (the whole datagram, or the framed
    message on a stream), what a reply's size is weighed against; 0 for a
    message built in code."""
    _raw_head: bytes | None
    _cl: int | None

    # -- serialisation -----------------------------------------------------------

    def _start_line(self) -> str:
        raise NotImplementedError

    def _start_unchanged(self) -> bool:
        raise NotImplementedError

    def serialise(self) -> bytes:
        """Render the message (RFC 3261 7): start line, headers, Content-Length, CRLF, body.

        Exactly one Content-Length, equal to ``len(body)``, is always written
        (RFC 3261 18.3, 20.14). Untouched header lines are written as received.
        """
        headers = self.headers
        body = self.body
        blen = len(body)
        raw = self._raw_head
        if raw is not None and not headers._dirty and self._cl == blen and self._start_unchanged():
            return raw + b"\r\n\r\n" + body
        # Content-Length is written last, once, from len(body) (RFC 3261 18.3, 20.14).
        parts = [self._start_line()]
        parts += [line if line is not None else f"{name}: {value}" for key, name, value, line in headers._entries if key != "content-length"]
        parts.append(f"Content-Length: {blen}\r\n\r\n")
        return "\r\n".join(parts).encode("utf-8", "surrogateescape") + body

    serialize = serialise

    def __bytes__(self) -> bytes:
        return self.serialise()

    def _start_key(self) -> tuple[object, ...]:
        raise NotImplementedError

    def release_parsed(self) -> None:
        """Let go of the typed values the accessors cached (Via, From, To,
        CSeq, the Request-URI ...): they are read again from the header text on
        next use.  For a message kept long after its handling (the proxy keeps
        a call's request for its late 2xx responses while Timer M runs), this
        leaves the text alone in memory and the cyclic garbage collector fewer
        objects to walk.  The message itself is unchanged."""
        self.headers._cache.clear()

    def __eq__(self, other: object) -> bool:
        """Equal start line, header (canonical name, value) list and body.

        Content-Length is derived from the body and not compared.
        """
        if not isinstance(other, Message):
            return NotImplemented
        return (
            type(self) is type(other)
            and self._start_key() == other._start_key()
            and self.body == other.body
            and self.headers._comparable() == other.headers._comparable()
        )

    __hash__ = None  # type: ignore[assignment]

    # -- typed accessors -----------------------------------------------------------

    def _require(self, key: str, name: str) -> str:
        value = self.headers._get(key)
        if value is None:
            raise ParseError(f"Missing header: {name}")
        return value

    # parse_message leaves the fast-path match (see _grammar) of the top Via, From,
    # To and CSeq in the cache under the accessor's key; the first access turns it
    # into the typed value. Headers._changed drops both.

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first, across all Via lines (RFC 3261 20.42)."""
        cache = self.headers._cache
        cached = cache.get("via")
        if cached is not None:
            return cached  # type: ignore[return-value]
        vias: list[Via] = []
        for line in self.headers.get_all("via"):
            m = _fast_via(line)
            if m is not None:
                vias.append(Via._from_fast(m))
                continue
            for item in split_commas(line):
                if not item:
                    raise ParseError("Via: empty value")
                vias.append(Via.parse(item))
        cache["via"] = vias
        return vias

    @property
    def top_via(self) -> Via:
        """The topmost Via value (RFC 3261 16.7 step 3, 17.1.3, 17.2.3)."""
        cache = self.headers._cache
        via = cache.get("top_via")
        if via.__class__ is not Via:
            if via is not None:
                via = cache["top_via"] = Via._from_fast(via)  # type: ignore[arg-type]
            else:
                line = self._require("via", "Via")
                first = split_commas(line)[0] if ("," in line) else line
                via = cache["top_via"] = Via.parse(first)
        return via  # type: ignore[return-value]

    @property
    def call_id(self) -> str:
        """The Call-ID (RFC 3261 20.8)."""
        return self._require("call-id", "Call-ID")

    @property
    def cseq(self) -> CSeq:
        """The CSeq (RFC 3261 20.16)."""
        cache = self.headers._cache
        cseq = cache.get("cseq")
        if cseq.__class__ is not CSeq:
            if cseq is not None:
                # parse_message matched CSEQ_RE and checked the range already.
                cseq = cache["cseq"] = CSeq(int(cseq[1]), cseq[2])  # type: ignore[index]
            else:
                cseq = cache["cseq"] = CSeq.parse(self._require("cseq", "CSeq"))
        return cseq  # type: ignore[return-value]

    def _address(self, key: str, name: str) -> Address:
        cache = self.headers._cache
        addr = cache.get(key)
        if addr.__class__ is not Address:
            if addr is not None:
                addr = cache[key] = Address._from_fast(addr)  # type: ignore[arg-type]
            else:
                addr = cache[key] = Address.parse(self._require(key, name))
        return addr  # type: ignore[return-value]

    @property
    def from_(self) -> Address:
        """The From address (RFC 3261 20.20)."""
        return self._address("from", "From")

    @property
    def to(self) -> Address:
        """The To address (RFC 3261 20.39)."""
        return self._address("to", "To")

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (RFC 3261 20.22), None when absent."""
        cache = self.headers._cache
        if "max-forwards" in cache:
            return cache["max-forwards"]  # type: ignore[return-value]
        value = self.headers._get("max-forwards")
        result: int | None = None
        if value is not None:
            result = _parse_max_forwards(value)
        cache["max-forwards"] = result
        return result

    def _addresses(self, key: str, cls: type[Address]) -> list[Any]:
        cache = self.headers._cache
        cached = cache.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        result: list[Any] = []
        for line in self.headers.get_all(key):
            m = _fast_address(line)
            if m is not None:
                result.append(cls._from_fast(m))
                continue
            for item in split_commas(line):
                if not item:
                    raise ParseError(f"{key}: empty value")
                result.append(cls.parse(item))
        cache[key] = result
        return result

    @property
    def contacts(self) -> list[Contact]:
        """Every Contact value (RFC 3261 20.10)."""
        return self._addresses("contact", Contact)

    @property
    def routes(self) -> list[Address]:
        """Every Route value, in order (RFC 3261 20.34)."""
        return self._addresses("route", Address)

    @property
    def record_routes(self) -> list[Address]:
        """Every Record-Route value, in order (RFC 3261 20.30)."""
        return self._addresses("record-route", Address)

    @property
    def content_length(self) -> int:
        """The Content-Length header value, or ``len(body)`` when absent (RFC 3261 20.14)."""
        value = self.headers.get("content-length")
        if value is None:
            return len(self.body)
        return _parse_content_length(value)

    @property
    def content_type(self) -> str | None:
        """The raw Content-Type value (RFC 3261 20.15), or None."""
        return self.headers.get("content-type")


def _build_headers(headers: Headers | Iterable[tuple[str, str]] | Mapping[str, str] | None) -> Headers:
    if isinstance(headers, Headers):
        return headers
    return Headers(headers)


class Request(Message):
    """A SIP request (RFC 3261 7.1): ``method``, ``uri`` (a :class:`URI`), ``version``."""

    __slots__ = ("method", "_uri", "_uri_text", "_raw_method")

    method: str
    _uri: URI | None
    _uri_text: str
    _raw_method: str | None

    def __init__(
        self,
        method: str,
        uri: URI | str,
        headers: Headers | Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        if not TOKEN_RE.fullmatch(method):
            raise ValueError(f"invalid method {method!r}")
        self.method = method
        self.uri = uri if isinstance(uri, URI) else URI.parse(uri)
        self.version = SIP_VERSION
        self.headers = _build_headers(headers)
        self.body = bytes(body)
        self._raw_head = None
        self._cl = None
        self.wire_size = 0
        self._raw_method = None

    @property
    def uri(self) -> URI:
        """The Request-URI (RFC 3261 7.1, 19.1), parsed on first access."""
        uri = self._uri
        if uri is None:
            uri = self._uri = URI.parse(self._uri_text)
        return uri

    @uri.setter
    def uri(self, value: URI) -> None:
        self._uri = value
        self._uri_text = ""

    def _start_line(self) -> str:
        uri = self._uri_text if self._uri is None else str(self._uri)
        return f"{self.method} {uri} {self.version}"

    def release_parsed(self) -> None:
        super().release_parsed()
        if self._uri is not None and self._uri_text and str(self._uri) == self._uri_text:
            self._uri = None  # unchanged since parsed: the text says the same

    def _start_unchanged(self) -> bool:
        if self.method is not self._raw_method and self.method != self._raw_method:
            return False
        return self._uri is None or str(self._uri) == self._uri_text

    def _start_key(self) -> tuple[object, ...]:
        return (self.method, self._uri_text if self._uri is None else str(self._uri), self.version)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._uri_text if self._uri is None else self._uri}>"

    def make_response(self, status: int, reason: str | None = None, *, to_tag: str | None = None) -> Response:
        """Build a response to this request (RFC 3261 8.2.6.2).

        Via (all, same order), From, To, Call-ID and CSeq are copied as raw
        text, so this also works on the partial message attached to a
        :class:`ParseError`. A To tag is added when *to_tag* is given, the To
        has none, and the status is not 100 (RFC 3261 8.2.6.1).
        """
        if not 100 <= status <= 699:
            raise ValueError(f"invalid status code {status}")
        src = self.headers._entries
        entries: list[_Entry] = [e for e in src if e[0] == "via"]
        for key in ("from", "to", "call-id", "cseq"):
            for e in src:
                if e[0] == key:
                    if key == "to" and to_tag is not None and status != 100:
                        e = _with_to_tag(e, to_tag)
                    entries.append((e[0], e[1], e[2], None))
                    break
        entries.append(("content-length", "Content-Length", "0", None))
        headers = Headers._from_entries(entries)
        headers._dirty = True
        return Response(status, reason if reason is not None else _reason_for(status), headers)


def _with_to_tag(entry: _Entry, tag: str) -> _Entry:
    try:
        has_tag = Address.parse(entry[2]).tag is not None
    except ParseError:
        # A broken To is echoed as received; the response is an error anyway.
        return entry
    if has_tag:
        return entry
    return (entry[0], entry[1], f"{entry[2]};tag={tag}", None)


class Response(Message):
    """A SIP response (RFC 3261 7.2): ``status`` (100-699) and ``reason``."""

    __slots__ = ("status", "reason", "_raw_status")

    status: int
    reason: str
    _raw_status: tuple[int, str] | None

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        if not 100 <= status <= 699:
            raise ValueError(f"invalid status code {status}")
        self.status = status
        self.reason = reason if reason is not None else _reason_for(status)
        if "\r" in self.reason or "\n" in self.reason:
            raise ValueError("reason phrase must be one line")
        self.version = SIP_VERSION
        self.headers = _build_headers(headers)
        self.body = bytes(body)
        self._raw_head = None
        self._cl = None
        self.wire_size = 0
        self._raw_status = None

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def _start_unchanged(self) -> bool:
        return self._raw_status == (self.status, self.reason)

    def _start_key(self) -> tuple[object, ...]:
        return (self.version, self.status, self.reason)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# -- parsing -----------------------------------------------------------------------


def _parse_max_forwards(value: str) -> int:
    if len(value) <= 3 and value.isdigit() and value.isascii():
        result = int(value)
        if result <= 255:
            return result
    if not DIGITS_RE.fullmatch(value):
        raise ParseError("Max-Forwards: value out of range")
    result = int(value)
    if result > 255:
        raise ParseError("Max-Forwards: value out of range")
    return result


def _parse_content_length(value: str) -> int:
    if len(value) <= 9 and value.isdigit() and value.isascii():
        return int(value)  # below 10**9: in range
    if not DIGITS_RE.fullmatch(value):
        raise ParseError("Content-Length: invalid value")
    result = int(value)
    if result > _MAX_CONTENT_LENGTH:
        raise ParseError("Content-Length: invalid value")
    return result


def _unknown_name(name: str) -> tuple[str, str, int]:
    info = KNOWN.get(name.lower())
    if info is None:
        name = name.strip(" \t")
        info = KNOWN.get(name.lower())
        if info is None:
            if not TOKEN_RE.fullmatch(name):
                raise ParseError("Malformed header name")
            info = (name.lower(), name, 0)
    return info


def _split_lines(head: str) -> list[str]:
    lines = head.split("\r\n")
    if "\r\n " not in head and "\r\n\t" not in head:
        return lines
    # RFC 3261 7.3.1: a line starting with SP/HT continues the previous one.
    merged: list[str] = [lines[0]]
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and len(merged) > 1:
            merged[-1] = merged[-1] + "\r\n" + line
        else:
            merged.append(line)
    return merged


def _check_headers(msg: Message, single: dict[str, str], vias: list[str], others: list[tuple[str, str]], is_request: bool, method: str | None) -> int | None:
    """Eager checks of the headers a proxy relies on (RFC 3261 8.1.1, 8.2, 16.3; RFC 4475 3.1.2, 3.3).

    Returns the Content-Length value (None when absent).
    """
    cache = msg.headers._cache
    for value in vias:
        m = _fast_via(value)
        if m is None:
            if not VIAS_RE.fullmatch(value):
                raise ParseError("Via: malformed value", message=msg)
        elif value is vias[0]:
            cache["top_via"] = m
    for key, value in others:
        if key == "contact":
            if not _fast_address(value) and not CONTACTS_RE.fullmatch(value):
                raise ParseError("Contact: malformed value", message=msg)
        elif not DIGITS_RE.fullmatch(value) or int(value) >= 2**32:
            raise ParseError("Expires: value out of range", message=msg)
    if not (vias and "to" in single and "from" in single and "call-id" in single and "cseq" in single):
        for key, name in _REQUIRED:
            if key not in single and (key != "via" or not vias):
                raise ParseError(f"Missing header: {name}", message=msg)
    try:
        value = single["from"]
        fm = _fast_address(value)
        if fm is not None:
            cache["from"] = fm
        elif not ADDRESS_RE.fullmatch(value):
            raise ParseError("From: malformed name-addr or addr-spec")
        value = single["to"]
        fm = _fast_address(value)
        if fm is not None:
            cache["to"] = fm
        elif not ADDRESS_RE.fullmatch(value):
            raise ParseError("To: malformed name-addr or addr-spec")
        if not CALLID_RE.fullmatch(single["call-id"]):
            raise ParseError("Call-ID: malformed value")
        m = CSEQ_RE.fullmatch(single["cseq"])
        if m is None:
            raise ParseError("CSeq: malformed value")
        if len(m.group(1)) > 10 or int(m.group(1)) >= 2**31:
            raise ParseError("CSeq: sequence number out of range")
        if is_request and m.group(2) != method:
            raise ParseError("CSeq: method does not match request method")
        cache["cseq"] = m
        mf = single.get("max-forwards")
        cache["max-forwards"] = None if mf is None else _parse_max_forwards(mf)
        cl = single.get("content-length")
        return None if cl is None else _parse_content_length(cl)
    except ParseError as exc:
        exc.message = msg
        raise


class _Folded(Exception):
    """Internal: a continuation line was met; parse again with folding (RFC 3261 7.3.1)."""


_Lines = tuple[list[_Entry], dict[str, str], list[str], list[tuple[str, str]], "str | None"]


def _plain_header_lines(lines: list[str]) -> _Lines:
    """Split header lines into (key, name, value, raw) entries and collect what must be checked.

    Raises :class:`_Folded` at the first continuation line.
    """
    known = KNOWN
    entries: list[_Entry] = []
    append = entries.append
    single: dict[str, str] = {}
    vias: list[str] = []
    others: list[tuple[str, str]] = []
    duplicate: str | None = None
    for line in islice(lines, 1, None):
        name, sep, value = line.partition(":")
        info = known.get(name)
        if info is None or not sep:
            # Rare: a continuation line, a line without colon, or a name not
            # spelt as in KNOWN.
            if line[:1] in (" ", "\t"):
                raise _Folded
            if not sep:
                raise ParseError("Malformed header line")
            info = _unknown_name(name)
        key, display, check = info
        value = value.strip(" \t")
        append((key, display, value, line))
        if check:
            if check == 1:
                if key in single:
                    duplicate = duplicate or display
                single[key] = value
            elif check == 2:
                vias.append(value)
            else:
                others.append((key, value))
    return entries, single, vias, others, duplicate


def _folded_header_lines(lines: list[str]) -> _Lines:
    """:func:`_plain_header_lines` for lines merged by :func:`_split_lines`: unfold each value (RFC 3261 7.3.1)."""
    known = KNOWN
    entries: list[_Entry] = []
    append = entries.append
    single: dict[str, str] = {}
    vias: list[str] = []
    others: list[tuple[str, str]] = []
    duplicate: str | None = None
    for line in islice(lines, 1, None):
        name, sep, value = line.partition(":")
        if not sep:
            raise ParseError("Malformed header line")
        info = known.get(name)
        if info is None:
            info = _unknown_name(name)
        if "\r\n" in value:
            value = " ".join(part.strip(" \t") for part in value.split("\r\n"))
        value = value.strip(" \t")
        key, display, check = info
        append((key, display, value, line))
        if check:
            if check == 1:
                if key in single:
                    duplicate = duplicate or display
                single[key] = value
            elif check == 2:
                vias.append(value)
            else:
                others.append((key, value))
    return entries, single, vias, others, duplicate


_ANSWERED_HEADERS_FACTOR = 4
"""Up to this many times *max_headers* header lines, a message over the limit
is split so that its 400 can be addressed; past it, it is refused unread."""


def parse_message(data: bytes, *, datagram: bool = True, max_headers: int = 256) -> Request | Response:
    """Parse one complete SIP message (RFC 3261 7, 18.3).

    Leading CRLFs are ignored (RFC 3261 7.5). Header lines are split and
    mapped to canonical names (compact forms, any case, LWS around the colon,
    folded lines: RFC 3261 7.3); only the headers a proxy relies on (Via,
    From, To, Call-ID, CSeq, Max-Forwards, Content-Length, Contact, Expires)
    are validated now, everything else is parsed on access.

    The body is exactly Content-Length octets; extra octets are discarded
    (RFC 3261 18.3, RFC 4475 3.1.1.8) and too few is an error (RFC 4475
    3.1.2.2). Without Content-Length, a datagram's body is the rest of it
    (RFC 3261 18.3); on a stream (*datagram* false) it is an error.

    More than *max_headers* header lines raises "Too many header lines"
    (400), with the partial message attached up to 4 times that many.

    Raises :class:`ParseError`; ``err.message`` carries the partially parsed
    message when the start line and header lines could be split.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        # A datagram that ends right after its last header line (no blank
        # line) is accepted: the end of the datagram ends the headers.
        if datagram and data.endswith(b"\r\n") and len(data) > start + 2:
            end = len(data) - 2
            body_start = len(data)
        else:
            raise ParseError("Missing empty line after header section")
    else:
        body_start = end + 4
    if end == start:
        raise ParseError("Empty message")
    raw_head = data[start:end]
    head = raw_head.decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    crlf = len(lines) - 1
    unsafe = head.count("\r") != crlf or head.count("\n") != crlf or ("\0" in head and _BARE_NUL.search(head) is not None)
    too_many = len(lines) - 1 > max_headers
    if too_many and len(lines) - 1 > _ANSWERED_HEADERS_FACTOR * max_headers:
        raise ParseError("Too many header lines")  # not worth parsing even to answer
    try:
        entries, single, vias, others, duplicate = _plain_header_lines(lines)
    except _Folded:
        lines = _split_lines(head)
        entries, single, vias, others, duplicate = _folded_header_lines(lines)

    msg: Request | Response
    first = lines[0]
    if first[:4] == "SIP/" or first[:4].upper() == "SIP/":
        msg, error = _response_from_line(first)
        is_request = False
        method = None
    else:
        msg, error = _request_from_line(first)
        is_request = True
        method = msg.method
    headers = msg.headers = Headers.__new__(Headers)
    headers._entries = entries
    headers._cache = {}
    headers._dirty = False
    msg.body = b""
    msg._raw_head = raw_head
    msg._cl = None
    msg.wire_size = len(data)
    if unsafe:
        # RFC 3261 7.3.1, 25.1: a header line ends with CRLF, and no value holds
        # CR, LF or NUL (NUL only as a quoted-pair, RFC 4475 3.1.1.2); echoed
        # into a response they would forge header lines.
        raise ParseError("NUL, CR or LF inside a header line", message=msg if _echo_safe(entries) else None)
    if error is not None:
        error.message = msg
        raise error
    if too_many:
        # Split, not validated: enough to address the 400 (RFC 3261 8.2.6).
        raise ParseError("Too many header lines", message=msg)
    if duplicate is not None:
        raise ParseError(f"{duplicate}: header appears more than once", message=msg)
    cl = _check_headers(msg, single, vias, others, is_request, method)
    if cl is None:
        if not datagram:
            raise ParseError("Content-Length: required on stream transports", message=msg)
        msg.body = data[body_start:]
    else:
        if body_start + cl > len(data):
            raise ParseError("Content-Length: larger than the message body", message=msg)
        msg.body = data[body_start : body_start + cl]
        msg._cl = cl
    return msg


def check_header_values(message: Message, limit: int) -> None:
    """Refuse a message with more than *limit* values of one header name.

    Every header line counts one value; in a comma-list header (Via, Route,
    Contact, Supported..., RFC 3261 7.3.1) each comma-separated value counts.
    One pass over the header lines, linear in their length: it is meant to
    run before anything that walks a header value by value (stripping our
    own Routes, loop detection over the Vias), so that the cost of a message
    is bounded by the cap and not by the number of values an attacker sent.

    Raises :class:`ParseError` (400, reason ``Too Many <Name> Values``, with
    *message* attached so that a request can still be answered).
    """
    entries = message.headers._entries
    raw = message._raw_head
    if raw is not None and not message.headers._dirty and len(entries) + raw.count(b",") <= limit:
        # As received: no name can have more values than there are header
        # lines plus commas (the usual message, decided by one C-level count).
        return
    counts: dict[str, int] = {}
    for key, name, value, _raw in entries:
        seen = counts.get(key, 0)
        total = seen + (count_values(value, limit - seen + 1) if key in LIST_HEADERS else 1)
        if total > limit:
            raise ParseError(f"Too Many {name} Values", message=message)
        counts[key] = total


_BARE_NUL = re.compile(r"(?<!\\)\x00")
_ECHOED = frozenset(("via", "from", "to", "call-id", "cseq"))


def _echo_safe(entries: list[_Entry]) -> bool:
    """Can a response copy the headers it echoes (RFC 3261 8.2.6.2) without carrying a bare CR, LF or NUL?"""
    return not any(key in _ECHOED and ("\r" in value or "\n" in value or _BARE_NUL.search(value)) for key, _, value, _ in entries)


def _request_from_line(line: str) -> tuple[Request, ParseError | None]:
    """RFC 3261 7.1 / 25.1: Request-Line = Method SP Request-URI SP SIP-Version CRLF."""
    parts = line.split(" ")
    req = Request.__new__(Request)
    req._uri = None
    error: ParseError | None = None
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
        loose = line.split()
        parts = loose if len(loose) == 3 else (loose + ["", "", ""])[:3]
        error = ParseError("Malformed Request-Line")
    method, uri_text, version = parts
    req.method = req._raw_method = method
    req._uri_text = uri_text
    req.version = version
    if error is not None:
        return req, error
    if method not in _METHODS and not TOKEN_RE.fullmatch(method):
        return req, ParseError("Malformed Request-Line: invalid method")
    if version != SIP_VERSION:
        if version.upper() == SIP_VERSION:
            req.version = SIP_VERSION
        elif SIP_VERSION_RE.fullmatch(version):
            return req, ParseError("SIP version not supported", status=505)
        else:
            return req, ParseError("Malformed Request-Line: invalid SIP-Version")
    if SIP_RURI_RE.fullmatch(uri_text):
        # Parsed lazily by Request.uri: the regex accepts what URI.parse accepts.
        return req, None
    try:
        uri = URI.parse(uri_text)
    except ParseError as exc:
        return req, ParseError(f"Request-URI: {exc.reason.removeprefix('URI: ')}")
    if uri.is_sip:
        # RFC 3261 19.1.5: headers are not allowed in a Request-URI.
        reason = "escaped headers not allowed" if uri.headers is not None else "malformed"
        return req, ParseError(f"Request-URI: {reason}")
    req._uri = uri
    return req, None


def _response_from_line(line: str) -> tuple[Response, ParseError | None]:
    """RFC 3261 7.2 / 25.1: Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF."""
    resp = Response.__new__(Response)
    parts = line.split(" ", 2)
    version = parts[0]
    code = parts[1] if len(parts) > 1 else ""
    reason = parts[2] if len(parts) > 2 else ""
    resp.version = version
    resp.status = int(code) if len(code) == 3 and code.isdigit() and code.isascii() else 0
    resp.reason = reason
    resp._raw_status = (resp.status, reason)
    if version != SIP_VERSION:
        if version.upper() == SIP_VERSION:
            resp.version = SIP_VERSION
        elif SIP_VERSION_RE.fullmatch(version):
            return resp, ParseError("SIP version not supported", status=505)
        else:
            return resp, ParseError("Malformed Status-Line: invalid SIP-Version")
    if not 100 <= resp.status <= 699:
        return resp, ParseError("Malformed Status-Line: invalid status code")
    return resp, None
