"""Next hops the proxy cannot use (a clear answer instead of a transport error)."""

from __future__ import annotations

from sipshield.message import ip_version
from sipshield.transport import unusable_destination

__all__ = ["UNUSABLE_HOP_STATUS", "unusable_hop"]

UNUSABLE_HOP_STATUS = 502
"""The proxy's own answer for a branch whose next hop it cannot use
(docs/security.md).  Not 503: RFC 3261 16.7 step 6 turns a lone 503 into
500, and the caller could not tell a bad Route or Contact from a crash.
The reason phrase says why: ``Bad Gateway: port 0``."""


def unusable_hop(hop: tuple[str, str, int], outbound: tuple[str, int] | None) -> str | None:
    """Why the branch to *hop* cannot be sent (*outbound*: the address of
    the listener that would send it, None when there is none), or None."""
    transport, host, port = hop
    why = unusable_destination(host, port)
    if why is not None or outbound is not None:
        return why
    if transport not in ("UDP", "TCP", "TLS"):
        return "unsupported transport"
    return f"no {transport} listener for IPv6" if ip_version(host) == 6 else f"no {transport} listener"
