"""Stream framing for SIP over TCP/TLS (RFC 3261 18.3, RFC 5626 3.5.1).

A sans-IO receive buffer: the transport feeds whatever bytes arrive and
pulls complete messages out. The buffer is a ``bytearray`` consumed through
an offset and compacted lazily, and the search for the end of the header
section resumes where the previous search stopped, so the work is linear in
the bytes received (as in h11's ``_receivebuffer.py``).
"""

from __future__ import annotations

import re
from typing import Final

from ._errors import FramingError, ParseError
from ._message import Message, parse_message

__all__ = ["KEEPALIVE", "KeepAlive", "StreamFramer"]


class KeepAlive:
    """The RFC 5626 3.5.1 CRLFCRLF keep-alive ping (answer it with a single CRLF pong)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEPALIVE"


#: The singleton returned by :meth:`StreamFramer.next_event` for a CRLFCRLF ping.
KEEPALIVE: Final = KeepAlive()

# Content-Length (or its compact form l) at the start of a header line, with
# an optional folded value (RFC 3261 7.3.1, 7.3.3).
_CONTENT_LENGTH = re.compile(rb"\r\n(?:[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]|[Ll])[ \t]*:[ \t]*(?:\r\n[ \t]+)?([^\r\n]*)")
_DIGITS = re.compile(rb"[0-9]{1,10}")


class StreamFramer:
    """Cut a TCP/TLS byte stream into SIP messages using Content-Length (RFC 3261 18.3).

    ``feed(data)`` appends bytes; ``next_event()`` returns one complete raw
    message (bytes, to be handed to ``parse_message(..., datagram=False)``),
    :data:`KEEPALIVE` for a CRLFCRLF ping between messages, or None when more
    bytes are needed. A lone CRLF between messages is skipped. Errors raise
    :class:`FramingError`; the stream cannot be resynchronised after one and
    every later call raises it again.
    """

    def __init__(self, max_message_bytes: int = 65535, max_headers: int = 256) -> None:
        self._max = max_message_bytes
        self._max_headers = max_headers
        self._buf = bytearray()
        self._start = 0  # offset of the first unconsumed byte
        self._scan = 0  # where the next search for CRLFCRLF resumes
        self._head_end = -1  # offset of the CRLFCRLF of the current message, once found
        self._total = -1  # total length of the current message, once known
        self._error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Number of bytes received but not yet returned."""
        return len(self._buf) - self._start

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._error is not None:
            raise self._error
        self._buf += data

    def _fail(self, reason: str, status: int = 400, head: tuple[int, int] | None = None) -> FramingError:
        """Record a fatal framing error.  When the header section is complete
        (``head``), the partially parsed message rides along so that the
        transport can still answer it before closing (RFC 3261 8.2.6)."""
        message: Message | None = None
        if head is not None:
            start, end = head
            try:
                message = parse_message(bytes(self._buf[start : end + 4]), max_headers=self._max_headers)
            except ParseError as e:
                message = e.message
        self._error = FramingError(reason, status=status, message=message)
        return self._error

    def _consume(self, count: int) -> None:
        self._start += count
        self._scan = self._start
        self._head_end = -1
        self._total = -1
        # Compact lazily: only when at least half of the buffer is dead, so the
        # memmove cost is amortised over the bytes consumed.
        if self._start == len(self._buf):
            self._buf.clear()
            self._start = self._scan = 0
        elif self._start > 4096 and self._start * 2 > len(self._buf):
            del self._buf[: self._start]
            self._scan -= self._start
            self._start = 0

    def next_event(self) -> bytes | KeepAlive | None:
        """Return the next complete message, :data:`KEEPALIVE`, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        while True:
            start = self._start
            if self._head_end < 0:
                available = len(buf) - start
                if available == 0:
                    return None
                if buf[start] == 0x0D:
                    # Between messages: CRLFCRLF is a ping, a lone CRLF is skipped (RFC 5626 3.5.1, RFC 3261 7.5).
                    if buf.startswith(b"\r\n\r\n", start):
                        self._consume(4)
                        return KEEPALIVE
                    prefix = bytes(buf[start : start + 4])
                    if b"\r\n\r\n".startswith(prefix):
                        return None
                    if prefix.startswith(b"\r\n"):
                        self._consume(2)
                        continue
                end = buf.find(b"\r\n\r\n", max(self._scan, start))
                if end < 0:
                    if available > self._max:
                        raise self._fail("Message too large", 413)
                    self._scan = max(start, len(buf) - 3)
                    return None
                if end + 4 - start > self._max:
                    raise self._fail("Message too large", 413, (start, end))
                self._head_end = end
                self._total = self._frame(start, end)
            if len(buf) - start < self._total:
                return None
            message = bytes(buf[start : start + self._total])
            self._consume(self._total)
            return message

    def _frame(self, start: int, end: int) -> int:
        """Find Content-Length in the header section and return the message length."""
        buf = self._buf
        if buf.count(b"\r\n", start, end) > self._max_headers:
            raise self._fail("Too many header lines", 400, (start, end))
        found = _CONTENT_LENGTH.findall(buf, start, end + 2)
        if not found:
            raise self._fail("Content-Length: required on stream transports", 400, (start, end))
        if len(found) > 1:
            raise self._fail("Content-Length: header appears more than once", 400, (start, end))
        value = found[0].strip(b" \t")
        if not _DIGITS.fullmatch(value):
            raise self._fail("Content-Length: invalid value", 400, (start, end))
        total = end + 4 - start + int(value)
        if total > self._max:
            raise self._fail("Message too large", 413, (start, end))
        return total
