"""A registration binding (RFC 3261 10.3) as the location service stores it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact bound to an address-of-record.

    ``source`` is where the REGISTER came from, ``(transport, host, port)``,
    so that requests can reach a phone behind NAT or over its own TCP/TLS
    connection (RFC 5626-style flow reuse) rather than its Contact address.
    """

    aor: str
    contact: str
    """The Contact URI as registered (without the header params)."""
    expires_at: float
    q: float = 1.0
    call_id: str = ""
    cseq: int = 0
    path: tuple[str, ...] = ()
    """Path header values (RFC 3327), top first; used as the route set towards the contact."""
    source: tuple[str, str, int] | None = None
    instance: str | None = None
    """+sip.instance (RFC 5626), when the UA sent one."""
    reg_id: int | None = None
    user_agent: str | None = None
    identity: str | None = None
    """The authenticated identity that registered it (``[registrar]
    max_bindings_per_identity`` counts across all its AORs); None when the
    REGISTER came from a trusted source without one."""
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    def expires_in(self, now: float) -> int:
        """Seconds left, never negative (for the Contact expires param in a 200)."""
        return max(0, int(round(self.expires_at - now)))


@dataclass(frozen=True, slots=True)
class BindingLimits:
    """What a REGISTER's update must respect, for a store that checks it
    atomically where the bindings live (the Redis store: the registrar's
    locks are per process, several nodes write one Redis).

    RFC 3261 10.3 step 7: a binding holding ``call_id`` with a CSeq of
    ``cseq`` or more refuses the update; ``max_bindings`` per AOR and
    ``max_bindings_per_identity`` for ``identity`` (None: not counted) as
    the registrar applies them (refreshes never refused)."""

    max_bindings: int
    max_bindings_per_identity: int
    identity: str | None
    call_id: str
    cseq: int
