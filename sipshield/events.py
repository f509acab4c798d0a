"""Security events: what the stages report, and the sink they report it to.

Stages and the core emit a typed :class:`SecurityEvent` on a
:class:`SecurityEvents` sink (given to stage factories in the
StageEnvironment); logging, metrics and alerts subscribe to the sink rather
than being imported by the code that decides, as twisted.logger observers
subscribe to a publisher.  The default sink, :class:`LogSecurityEvents`,
writes one twisted.logger event per security event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipshield._ratelog import ThrottledLog

__all__ = [
    "ACL_DENY", "AUTH_DOWNGRADE", "AUTH_FAILURE", "BAN", "BEARER_REFUSED", "EVERY_LINE", "KINDS", "OVERLOAD", "RATE_LIMIT", "SCANNER", "SIPS_REFUSED",
    "SRTP_PLAIN", "SRTP_REFUSED", "TLS_HANDSHAKE_FAILURE", "TOLL_FRAUD", "UNBAN", "LogSecurityEvents", "SecurityEvent", "SecurityEventBus", "SecurityEvents", "printable",
]

AUTH_FAILURE = "auth-failure"
"""Credentials were checked and refused: a wrong password or an unknown user
(the two are one answer on the wire, and one kind here).  Emitted only for
an answer to a nonce this proxy issued to the request's source address, so
the source has proven its return path (a forged address cannot)."""
BEARER_REFUSED = "bearer-refused"
"""A bearer token was refused over UDP (not counted towards a ban: the source may be forged;
over TCP/TLS a refused token is an ``auth-failure``)."""
TOLL_FRAUD = "toll-fraud"
"""An external call was refused by the egress policy (a destination the caller's roles may not
dial, or more external calls a minute than allowed)."""
ACL_DENY = "acl-deny"
"""A request was refused by an ``[acl]`` rule (or its default)."""
SCANNER = "scanner-drop"
"""A request was dropped as a scanner's (its User-Agent, or a proven source probing many users)."""
RATE_LIMIT = "rate-limit"
"""A source went over one of its request rates ([ratelimit]); refused with 503 or dropped."""
OVERLOAD = "overload"
"""The reactor fell behind (``[limits] overload_lag``) and new requests are shed by source, or it
caught up and shedding stopped: one event each way (source and transport ``-``), none per request."""
BAN = "ban"
"""A source was banned (its traffic is dropped before parsing until the ban ends)."""
UNBAN = "unban"
"""A ban was lifted by an operator before it ended."""
SRTP_REFUSED = "srtp-refused"
"""An offer or answer failed ``[media] srtp = "mandatory"`` (plain RTP, SRTP without its key or
fingerprint, SDES keys over a non-TLS hop, an SDP that cannot be read): the request got 488, or
the answer was not relayed."""
SRTP_PLAIN = "srtp-plain"
"""An offer or answer that ``mandatory`` would refuse, let through under ``[media] srtp = "prefer"``."""
SIPS_REFUSED = "sips-refused"
"""A ``sips:`` request came over a hop that was not TLS, or would have gone out over one (RFC 5630)."""
TLS_HANDSHAKE_FAILURE = "tls-handshake-failure"
"""A TLS handshake on an inbound connection failed (OpenSSL's reason: ``no shared cipher``,
``certificate verify failed``, ``http request`` or ``wrong version number`` for a client that
does not speak TLS...); the event carries the source ``port`` and the ``sni`` the client sent, if
any.  Anyone who can open a TCP connection causes one, so it is rate-limited per source."""

AUTH_DOWNGRADE = "auth-downgrade"
"""A right MD5 answer for a user who has logged in with SHA-2 before (the MD5
downgrade lock): refused as a wrong password is, on the wire."""


EVERY_LINE = frozenset((AUTH_FAILURE, AUTH_DOWNGRADE, BAN, UNBAN, TOLL_FRAUD, OVERLOAD))
"""Kinds logged line by line (see LogSecurityEvents): their sources proved their addresses
(``overload``: the proxy's own, one on entering and one on leaving, with hysteresis between)."""
KINDS = frozenset((
    AUTH_FAILURE, AUTH_DOWNGRADE, BEARER_REFUSED, TOLL_FRAUD, ACL_DENY, SCANNER, RATE_LIMIT, BAN, UNBAN, SRTP_REFUSED, SRTP_PLAIN, SIPS_REFUSED, OVERLOAD,
    TLS_HANDSHAKE_FAILURE,
))
"""Every kind above (what an ``[[alerts.rules]]`` ``event`` may name)."""




def printable(text: str, limit: int = 128) -> str:
    """*text* safe for one log line: control characters (a terminal's escape
    sequences, a newline forging a second line) and anything else not
    printable shown as ``\\xNN`` / ``\\uNNNN``, cut at *limit* characters.
    Remote input (a digest username, a User-Agent) goes through this before
    it is logged or kept."""
    if text.isprintable() and len(text) <= limit:
        return text
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One security decision worth telling an operator about."""

    kind: str
    """What happened, a stable name: ``auth-failure``, ``auth-downgrade``."""
    source: str
    """The host (IP address) the request came from."""
    transport: str
    """``UDP``, ``TCP`` or ``TLS``."""
    user: str | None
    """The user the request claimed or proved (the digest username), if any."""
    reason: str
    """A short human-readable why."""
    port: int | None = None
    """The source port, for the kinds about one connection (``tls-handshake-failure``); else None."""
    sni: str | None = None
    """The server name the client asked for in its TLS ClientHello (``tls-handshake-failure``), if any."""


class SecurityEvents(Protocol):
    """The event sink: where stages and the core report security events."""

    def emit(self, event: SecurityEvent) -> None:
        """Take one event; never raises into the caller, never blocks."""
        ...


class LogSecurityEvents:
    """The default sink: one twisted.logger event per security event, in the
    ``sipshield.security`` namespace, with the fields ``security_event``
    (the kind), ``host`` (the source), ``transport``, ``user`` and
    ``reason`` (and ``log_kind``, the kind again, as every rate-limited line has);
    an event with a ``port`` adds ``port`` and ``sni``.

    The text form is stable, for fail2ban and the like (examples/fail2ban/):
    ``security event KIND from HOST over TRANSPORT (user USER): REASON``,
    the address before anything the sender chose, so no user name can move
    it; with a port, `` (port PORT, SNI NAME)`` follows (``SNI None`` when
    the client sent none).

    Remote input causes these events, so they go through a ThrottledLog.
    The kinds in :data:`EVERY_LINE` come only from sources that proved their
    address (an answer to a nonce sent to it, a TCP/TLS connection) or from
    an operator, and a ban follows a few of them: each is written (fail2ban
    and a SIEM must see every failed login), within a budget of
    ``every_line_budget`` lines a second per kind.  The others (a forged
    datagram can cause them) get one line per source and kind a minute, and
    a bounded number per kind; the lines held back are counted in the next
    one let through.
    """

    def __init__(self, reactor: IReactorTime, log: Logger | None = None, every_line_budget: int = 200) -> None:
        log = log if log is not None else Logger(namespace="sipshield.security")
        self._lines = ThrottledLog(log, reactor)
        self._every = ThrottledLog(log, reactor, interval=1.0, per_kind=every_line_budget, per_source=False)

    def emit(self, event: SecurityEvent) -> None:
        lines = self._every if event.kind in EVERY_LINE else self._lines
        held = lines.admit(event.kind, event.source)
        if held is None:
            return  # held back (counted): nothing to format
        text = "security event {security_event} from {host} over {transport} (user {user}): {reason}"
        fields: dict[str, object] = {}
        if event.port is not None:
            text += " (port {port}, SNI {sni})"
            fields.update(port=event.port, sni=None if event.sni is None else printable(event.sni, 253))
        lines.write(
            event.kind, held, text, security_event=event.kind, host=event.source, transport=event.transport,
            user=None if event.user is None else printable(event.user, 64), reason=printable(event.reason, 256), **fields,
        )


class SecurityEventBus:
    """A sink that hands every event to each of its observers, in order
    (each is itself a :class:`SecurityEvents`: the log, the ban policy,
    later the metrics).  An observer that raises is logged and skipped:
    the others still get the event, and the stage that emitted it never
    sees the error."""

    log = Logger()

    def __init__(self, observers: Iterable[SecurityEvents] = ()) -> None:
        self.observers: list[SecurityEvents] = list(observers)

    def subscribe(self, observer: SecurityEvents) -> None:
        self.observers.append(observer)

    def emit(self, event: SecurityEvent) -> None:
        for observer in self.observers:
            try:
                observer.emit(event)
            except Exception:
                self.log.failure("security event observer {observer!r} failed on {kind}", observer=observer, kind=event.kind)
