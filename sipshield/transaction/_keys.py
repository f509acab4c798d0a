"""Transaction matching keys (RFC 3261 17.1.3, 17.2.3), built so that a lookup is one dict hit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sipshield.message import Request, Via

MAGIC_COOKIE = "z9hG4bK"
"""RFC 3261 8.1.1.7: a branch that starts with this was made by an RFC 3261 element."""

_RFC2543 = "rfc2543"

_METHODS = {method: method for method in ("INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "INFO", "UPDATE", "PRACK", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH")}


def shared_method(method: str) -> str:
    """The one str object of a standard method (RFC 3261 27.4 and the SIP
    extensions' methods), else *method*: the parser makes a new str per
    message, and each finished transaction would keep its own copy in its
    key and its ``method`` for up to 64*T1."""
    return _METHODS.get(method, method)


def server_key(branch: str, host: str, port: int | None, method: str) -> str:
    """RFC 3261 17.2.3 for a branch with the magic cookie: the branch, the
    sent-by of the top Via and the method (ACK matching INVITE), as ONE str.

    A finished server transaction keeps its key for up to 64*T1; one str of
    the four parts is about half of a tuple holding the branch, host and port
    objects of the parsed Via.  The host, the port and the method never hold
    a NUL (a host, a number, a token), so the last three NULs split the key
    back into its parts whatever the branch holds: distinct parts, distinct
    keys.
    """
    return f"{branch}\0{host}\0{port}\0{method}"


def rfc2543_key(request: Request, method: str, to_tag: str | None) -> tuple[Any, ...]:
    """RFC 3261 17.2.3 for requests without the magic cookie.

    Each field compares by its own rule: the Request-URI by RFC 3261 19.1.4
    (URI objects hash and compare that way), the top Via by its parsed
    parts with parameter names case-folded, tags and Call-ID exactly.
    For an ACK the caller passes method ``ACK`` and the To tag of the final
    response the INVITE transaction sent (see ``ack_alias``).
    """
    via = request.top_via
    return (
        _RFC2543,
        request.uri,
        to_tag,
        request.from_.tag,
        request.call_id,
        request.cseq.seq,
        method,
        _via_identity(via),
    )


def _via_identity(via: Via) -> tuple[Any, ...]:
    return (via.protocol, via.transport, via.host, via.port, frozenset(via.params.items()))
