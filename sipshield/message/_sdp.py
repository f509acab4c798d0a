"""Reading the media sections of SDP bodies (RFC 4566/8866), sans-IO.

Only what a media policy needs is read: per media section (``m=`` line)
its media type, port and transport protocol, and whether it carries an
SDES key (``a=crypto``, media level only, RFC 4568 5.1) or a DTLS
certificate fingerprint (``a=fingerprint``, media or session level,
RFC 8122 5).  The SDP is found in the body of a SIP message as its
Content-Type says: ``application/sdp`` itself, or every ``application/sdp``
part of a ``multipart/*`` body (RFC 2046 5.1, nested multiparts too, to
:data:`MAX_DEPTH`).

The work is bounded: at most :data:`MAX_PARTS` body parts,
:data:`MAX_SDP_LINES` lines of SDP in all and :data:`MAX_MEDIA` media
sections in all are looked at; past a bound, or on a body that cannot be
read (a multipart without its boundary or its closing delimiter, a
Content-Transfer-Encoding or Content-Encoding other than the identity
ones, an SDP without ``v=0`` or with a malformed ``m=`` line), the reader
raises :class:`SDPError`, and nothing else, whatever the bytes: a policy
then decides (``mandatory`` refuses, failing closed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_DEPTH", "MAX_MEDIA", "MAX_PARTS", "MAX_SDP_LINES", "MediaSection", "SDPError", "media_sections", "parse_content_type"]

MAX_DEPTH = 3
"""How deep multipart bodies may nest (a multipart inside a multipart is depth 2)."""
MAX_PARTS = 16
"""Body parts looked at in all, over every level."""
MAX_SDP_LINES = 512
"""Lines of SDP looked at in all."""
MAX_MEDIA = 32
"""Media sections (m= lines) in all."""

_IDENTITY_ENCODINGS = frozenset(("7bit", "8bit", "binary", "identity"))
_SRTP_UNSAFE_PARAMS = frozenset(("UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP"))


class SDPError(ValueError):
    """The body holds SDP (or may) that cannot be inspected; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MediaSection:
    """One ``m=`` line of an SDP and what its section says about keys."""

    media: str
    """The media type, lower case: ``audio``, ``video``, ``image``, ``application``, ``text``..."""
    port: int
    """0: the stream is declined or disabled (RFC 3264 5.1, 6)."""
    proto: str
    """The transport protocol as given (``RTP/AVP``, ``RTP/SAVP``, ``UDP/TLS/RTP/SAVPF``...)."""
    crypto: bool
    """A usable ``a=crypto`` line in this section (RFC 4568): a tag, a suite that is not
    a NULL one, an ``inline:`` key, and none of the session parameters that turn
    encryption or authentication off (UNENCRYPTED_SRTP, UNENCRYPTED_SRTCP, UNAUTHENTICATED_SRTP)."""
    fingerprint: bool
    """An ``a=fingerprint`` (hash function and value) in this section or at session level (RFC 8122)."""


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` in lower case and its parameters (names in lower case,
    quoted values unquoted) from a Content-Type value (RFC 2045 5.1, RFC 3261 20.15).
    Raises SDPError when it is not of that form, or names a parameter twice
    (RFC 2045 5.1 allows each once; readers disagree on which one counts, so
    a ``boundary`` given twice would split the body differently for a phone)."""
    media, _, rest = value.partition(";")
    media = media.strip().lower()
    kind, slash, sub = media.partition("/")
    if not slash or not kind or not sub or len(media.split()) != 1:
        raise SDPError(f"Content-Type {value[:40]!r} is not type/subtype")
    params: dict[str, str] = {}
    while rest:
        name, eq, rest = rest.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            if name:
                raise SDPError(f"Content-Type parameter {name[:20]!r} has no value")
            break
        if name in params:
            raise SDPError(f"Content-Type parameter {name[:20]!r} given twice")
        rest = rest.lstrip()
        if rest.startswith('"'):
            chars: list[str] = []
            i = 1
            while i < len(rest) and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < len(rest):
                    i += 1
                chars.append(rest[i])
                i += 1
            if i >= len(rest):
                raise SDPError(f"Content-Type parameter {name[:20]!r} has an unterminated quoted value")
            params[name] = "".join(chars)
            rest = rest[i + 1 :]
            junk, _, rest = rest.partition(";")
            if junk.strip():
                raise SDPError(f"Content-Type parameter {name[:20]!r}: text after the quoted value")
        else:
            token, _, rest = rest.partition(";")
            params[name] = token.strip()
    return f"{kind}/{sub}", params


def media_sections(body: bytes, content_type: str | Sequence[str] | None, content_encoding: str | Sequence[str] | None = None) -> tuple[MediaSection, ...] | None:
    """Every media section of the SDP in a message body, or None when the
    body holds no SDP at all (empty, or of another type).

    *content_type* and *content_encoding* are the message's header values:
    one string, or every header line of that name (``Headers.get_all``).
    Content-Type is single-valued (RFC 3261 20.15): a body with two is
    refused, as readers differ on which one they believe.
    Raises :class:`SDPError` (only that) when SDP is there, or may be, and
    cannot be read within the bounds.
    """
    if not body:
        return None
    encodings = [content_encoding] if isinstance(content_encoding, str) else list(content_encoding or ())
    for encoding in encodings:
        if encoding.strip().lower() not in ("", "identity"):
            raise SDPError(f"Content-Encoding {encoding[:20]!r} cannot be inspected")
    types = [content_type] if isinstance(content_type, str) else list(content_type or ())
    if not types:
        # RFC 3261 20.15: a body must have a Content-Type; one without is not trusted to be anything.
        raise SDPError("a body without Content-Type")
    if len(types) > 1:
        raise SDPError("more than one Content-Type")
    reader = _Reader()
    reader.entity(body, types[0], 1)
    return tuple(reader.sections) if reader.found else None


class _Reader:
    """Walks one body, counting against the bounds."""

    __slots__ = ("sections", "found", "parts", "lines")

    def __init__(self) -> None:
        self.sections: list[MediaSection] = []
        self.found = False
        self.parts = 0
        self.lines = 0

    def entity(self, body: bytes, content_type: str, depth: int) -> None:
        media, params = parse_content_type(content_type)
        if media == "application/sdp":
            self.found = True
            self.sdp(body)
        elif media.startswith("multipart/"):
            if depth > MAX_DEPTH:
                raise SDPError(f"multipart nested deeper than {MAX_DEPTH}")
            boundary = params.get("boundary")
            if not boundary or len(boundary) > 70:
                raise SDPError("multipart without a valid boundary parameter")
            for headers, part in _split_multipart(body, boundary.encode("utf-8", "surrogateescape")):
                self.parts += 1
                if self.parts > MAX_PARTS:
                    raise SDPError(f"more than {MAX_PARTS} body parts")
                self.part(headers, part, depth)

    def part(self, head: bytes, body: bytes, depth: int) -> None:
        types: list[str] = []
        encodings: list[str] = []
        for line in _unfold(head.decode("utf-8", "replace")):
            name, colon, value = line.partition(":")
            if not colon:
                raise SDPError("a body part header line without a colon")
            name = name.strip().lower()
            # SIP stacks read part headers with their SIP header parser, so
            # the compact forms (RFC 3261 7.3.3) name the same headers there.
            if name in ("content-type", "c"):
                types.append(value.strip())
            elif name in ("content-transfer-encoding", "content-encoding", "e"):
                encodings.append(value.strip().lower())
        if len(types) > 1 or len(encodings) > 1:
            raise SDPError("a body part with its Content-Type or encoding given twice")
        content_type = types[0] if types else "text/plain"  # RFC 2046 5.1: a part without Content-Type
        encoding = encodings[0] if encodings else "7bit"
        media, _ = parse_content_type(content_type)
        if encoding not in _IDENTITY_ENCODINGS and (media == "application/sdp" or media.startswith("multipart/")):
            raise SDPError(f"Content-Transfer-Encoding {encoding[:20]!r} cannot be inspected")
        self.entity(body, content_type, depth + 1)

    def sdp(self, body: bytes) -> None:
        text = body.decode("utf-8", "replace")
        lines = text.split("\n", MAX_SDP_LINES - self.lines)
        if len(lines) > MAX_SDP_LINES - self.lines:
            if lines[-1].strip():
                raise SDPError(f"SDP longer than {MAX_SDP_LINES} lines")
            lines.pop()
        self.lines += len(lines)
        lines = [line.rstrip("\r") for line in lines]
        while lines and not lines[-1]:
            lines.pop()
        if not lines or lines[0].strip() != "v=0":
            raise SDPError("SDP does not start with v=0")
        session_fingerprint = False
        current: list[str] | None = None  # the m= line's fields
        crypto = fingerprint = False
        for line in lines[1:]:
            if line[1:2] != "=":
                raise SDPError(f"SDP line {line[:30]!r} is not type=value")
            kind, value = line[0], line[2:]
            if kind == "m":
                if current is not None:
                    self._add(current, crypto, fingerprint or session_fingerprint)
                current = value.split()
                crypto = fingerprint = False
            elif kind == "a":
                name, _, attr = value.partition(":")
                name = name.strip().lower()
                if name == "fingerprint" and len(attr.split()) >= 2:
                    if current is None:
                        session_fingerprint = True
                    else:
                        fingerprint = True
                elif name == "crypto" and current is not None and _usable_crypto(attr):
                    crypto = True
        if current is not None:
            self._add(current, crypto, fingerprint or session_fingerprint)

    def _add(self, fields: list[str], crypto: bool, fingerprint: bool) -> None:
        if len(fields) < 3:
            raise SDPError("SDP m= line without media, port and proto")
        port_text = fields[1].partition("/")[0]
        if not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5 or int(port_text) > 65535:
            raise SDPError(f"SDP m= line port {fields[1][:12]!r} is not a port")
        if len(self.sections) >= MAX_MEDIA:
            raise SDPError(f"more than {MAX_MEDIA} media sections")
        self.sections.append(MediaSection(fields[0].lower(), int(port_text), fields[2], crypto, fingerprint))


def _usable_crypto(value: str) -> bool:
    """``a=crypto:<tag> <suite> inline:<key>... [session params]`` (RFC 4568 9.1)
    with a real suite and no parameter that switches SRTP's protection off."""
    fields = value.split()
    if len(fields) < 3 or not fields[0].isdigit() or not fields[2].lower().startswith("inline:"):
        return False
    if "NULL" in fields[1].upper():
        return False  # NULL_HMAC_SHA1_80 (no encryption), AES_CM_128_NULL_AUTH (no authentication)
    return not any(f.upper() in _SRTP_UNSAFE_PARAMS for f in fields[3:])


def _unfold(head: str) -> list[str]:
    """MIME header lines with folded continuations joined (RFC 5322 2.2.3)."""
    lines: list[list[str]] = []  # each line's pieces, joined once (appending to a str is quadratic)
    for raw in head.replace("\r\n", "\n").split("\n"):
        if not raw:
            continue
        if raw[0] in " \t" and lines:
            lines[-1].append(raw.strip())
        else:
            lines.append([raw])
    return [" ".join(pieces) for pieces in lines]


def _split_multipart(body: bytes, boundary: bytes) -> list[tuple[bytes, bytes]]:
    """The (headers, body) of each part of a multipart body (RFC 2046 5.1.1):
    delimiters are ``--boundary`` at the start of a line (the CRLF before
    one belongs to it), the last one ``--boundary--``; preamble and epilogue
    are ignored.  Bare LF line ends are taken too."""
    delimiter = b"--" + boundary
    line_start = b"\n" + delimiter  # searched for as such: one find per delimiter, not per look-alike in the content
    positions: list[int] = []
    start = 0
    while True:
        if start == 0 and body.startswith(delimiter):
            at = 0
        else:
            found = body.find(line_start, start)
            if found < 0:
                raise SDPError("multipart body without its closing delimiter")
            at = found + 1
        start = at + len(delimiter)
        positions.append(at)
        if len(positions) > MAX_PARTS + 1:
            raise SDPError(f"more than {MAX_PARTS} body parts")
        if body[start : start + 2] == b"--":
            if _delimiter_line(body, delimiter, start):
                # RFC 2046 5.1.1: the epilogue is to be ignored, but a reader
                # that does not stop at the close delimiter would find more parts.
                raise SDPError("a multipart delimiter after the close delimiter")
            break
    parts = []
    for begin, end in zip(positions, positions[1:], strict=False):
        line_end = body.find(b"\n", begin)
        if line_end < 0 or line_end >= end:
            raise SDPError("multipart delimiter line without its line end")
        if body[begin + len(delimiter) : line_end].strip(b" \t\r"):
            raise SDPError("text after a multipart delimiter")
        content = body[line_end + 1 : end]
        # The line end before the next delimiter is the delimiter's.
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        head_end, sep_len = _blank_line(content)
        if head_end < 0:
            parts.append((content, b""))
        else:
            parts.append((content[:head_end], content[head_end + sep_len :]))
    return parts


def _delimiter_line(body: bytes, delimiter: bytes, start: int) -> bool:
    """Does a line after *start* begin with *delimiter*?"""
    return body.find(b"\n" + delimiter, start) >= 0


def _blank_line(content: bytes) -> tuple[int, int]:
    """Where the part's headers end, and the length of the blank line there
    (a part may have no headers at all: it then starts with the blank line)."""
    if content.startswith(b"\r\n"):
        return 0, 2
    if content.startswith(b"\n"):
        return 0, 1
    crlf = content.find(b"\r\n\r\n")
    lf = content.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return crlf, 4
    return lf, 2 if lf >= 0 else 0
