"""Via branches for forwarded requests (RFC 3261 16.6 step 8, 16.3 step 4)."""

from __future__ import annotations

import hashlib
import secrets

from sipshield.message import Request

BRANCH_COOKIE = "z9hG4bK"


def loop_hash(request: Request) -> str:
    """The loop-detection part of our branch: a hash of what stays the same
    when a request comes back unchanged (Request-URI, tags, Call-ID, CSeq
    number, Proxy-Require, Proxy-Authorization, Route).

    RFC 3261 16.6 step 8 also lists the topmost Via, but a looped request
    arrives with a different topmost Via than it left with, so including it
    would hide exactly the loops this is for (the flaw RFC 5393 discusses).
    A spiral changes the Request-URI and so gets a new hash.
    """
    headers = request.headers
    parts = (
        str(request.uri),
        request.to.tag or "",
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.seq),
        ",".join(headers.get_all("Proxy-Require")),
        ",".join(headers.get_all("Proxy-Authorization")),
        ",".join(headers.get_all("Route")),
    )
    return hashlib.blake2s("\x00".join(parts).encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def new_branch(request: Request) -> str:
    """A unique branch whose first part (after the cookie) is the loop hash."""
    return f"{BRANCH_COOKIE}{loop_hash(request)}.{secrets.token_hex(5)}"


def is_loop(request: Request, is_own_sent_by: object) -> bool:
    """RFC 3261 16.3 step 4: a Via of ours whose branch carries the loop hash
    this request would get means the request has looped (482); a Via of
    ours with another hash is a legitimate spiral."""
    own = [via for via in request.vias if is_own_sent_by(via.host, via.port)]  # type: ignore[operator]
    if not own:
        return False
    wanted = BRANCH_COOKIE + loop_hash(request) + "."
    return any((via.branch or "").startswith(wanted) for via in own)
