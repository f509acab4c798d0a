"""Errors raised by the SIP message layer.

A :class:`ParseError` carries what a server should answer (RFC 3261 21.4.1
400 Bad Request, 21.4.12 413, 21.5.7 505) so the transport can reply and keep
serving, in the manner of h11's ``error_status_hint``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._message import Message

__all__ = ["ParseError", "FramingError"]

_MAX_REASON = 100


def _clean_reason(text: str) -> str:
    """Make *text* usable as a SIP Reason-Phrase: one line of printable ASCII."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > _MAX_REASON:
        cleaned = cleaned[: _MAX_REASON - 3] + "..."
    return cleaned or "Bad Request"


class ParseError(ValueError):
    """A SIP message (or one of its parts) could not be parsed.

    ``status`` is the response code to send (400 unless stated otherwise:
    505 for an unsupported SIP-Version, RFC 3261 8.2.2 / 21.5.7; 413 when too
    large). ``reason`` is a short printable-ASCII text usable directly as the
    Reason-Phrase. ``message`` is the partially parsed message when the
    start line and header lines could be split, so that a server can still
    build a response from the raw Via/From/To/Call-ID/CSeq values
    (RFC 3261 8.2.6.2).
    """

    status: int
    reason: str
    message: Message | None

    def __init__(self, reason: str, status: int = 400, message: Message | None = None) -> None:
        reason = _clean_reason(reason)
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.reason


class FramingError(ParseError):
    """A stream transport (TCP, TLS) received bytes that cannot be framed.

    After a framing error the connection cannot be resynchronised (RFC 3261
    18.3): the transport should answer if it can and close the connection.
    """
