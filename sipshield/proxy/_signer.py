"""Record-Route values this proxy can prove it made (no open relay in dialog).

A request that comes back to us through a route set (a Route naming this
proxy) follows a dialog only if that Route is a Record-Route we inserted for
that dialog.  Each Record-Route URI we insert carries ``;ss=<token>``: an
HMAC-SHA256, keyed by a secret kept in data_dir, over the Call-ID, the
From tag of the dialog-initiating request, and the two hosts the dialog's
requests travel between: the caller's source address and the host we sent
the request to.  Either side's in-dialog requests verify against one of
their two tags (the callee's swap From and To) and against the pair (their
source, where they go next): a token seen on the wire cannot carry a
request anywhere else, from anyone else.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

__all__ = ["RecordRouteSigner", "TOKEN_PARAM"]

TOKEN_PARAM = "ss"
"""The Record-Route URI parameter holding the token (opaque to everyone else)."""

_TOKEN_BYTES = 16


class RecordRouteSigner:
    """Sign and verify the dialog token of our Record-Route URIs.

    *secret* (at least 16 bytes) keys the HMAC; give the same secret on every
    start (see :func:`sipshield.auth.load_or_create_secret`) so that dialogs
    outlive a restart.  Without one, a random secret lives as long as the
    object (tests, embedding hosts).
    """

    def __init__(self, secret: bytes | None = None) -> None:
        if secret is None:
            secret = secrets.token_bytes(32)
        if len(secret) < 16:
            raise ValueError("the Record-Route secret needs at least 16 bytes")
        self._key = bytes(secret)

    def token(self, call_id: str, from_tag: str | None, pair: tuple[str, str]) -> str:
        """The token for a dialog: hex of a truncated HMAC-SHA256 over the
        Call-ID, the initial request's From tag (empty if it had none) and
        the *pair* of hosts its requests travel between (``endpoints``: the
        caller's source address and the host we forwarded the request to)."""
        data = f"{len(call_id)}:{call_id}|{from_tag or ''}|{pair[0]}|{pair[1]}".encode("utf-8", "surrogateescape")
        return hmac.new(self._key, data, hashlib.sha256).digest()[:_TOKEN_BYTES].hex()

    def verify(self, token: str | None, call_id: str, tags: Iterable[str | None], pair: tuple[str, str]) -> bool:
        """Whether *token* was made by :meth:`token` for *call_id*, one of
        *tags* (an in-dialog request's From and To tags) and *pair* (its
        source and the host it goes to next).  Each comparison is
        constant-time; which tag matched is no secret (both are in the
        request), so the first match ends the search."""
        if not token:
            return False
        given = token.lower().encode("ascii", "replace")
        for tag in tags:
            if tag is not None and hmac.compare_digest(given, self.token(call_id, tag, pair).encode("ascii")):
                return True
        return False
