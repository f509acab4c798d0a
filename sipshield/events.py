"""Security events: what the stages report, and the sink they report it to.

Stages and the core emit a typed :class:`SecurityEvent` on a
:class:`SecurityEvents` sink (given to stage factories in the
StageEnvironment); logging, metrics and alerts subscribe to the sink rather
than being imported by the code that decides, as twisted.logger observers
subscribe to a publisher.  The default sink, :class:`LogSecurityEvents`,
writes one twisted.logger event per security event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sipshield._ratelog import ThrottledLog

__all__ = ["AUTH_FAILURE", "LogSecurityEvents", "SecurityEvent", "SecurityEvents"]

AUTH_FAILURE = "auth-failure"
"""Credentials were checked and refused: a wrong password or an unknown user
(the two are one answer on the wire, and one kind here)."""


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One security decision worth telling an operator about."""

    kind: str
    """What happened, a stable name: ``auth-failure``."""
    source: str
    """The host (IP address) the request came from."""
    transport: str
    """``UDP``, ``TCP`` or ``TLS``."""
    user: str | None
    """The user the request claimed or proved (the digest username), if any."""
    reason: str
    """A short human-readable why."""


class SecurityEvents(Protocol):
    """The event sink: where stages and the core report security events."""

    def emit(self, event: SecurityEvent) -> None:
        """Take one event; never raises into the caller, never blocks."""
        ...


class LogSecurityEvents:
    """The default sink: one twisted.logger event per security event, in the
    ``sipshield.security`` namespace, with the fields ``security_event``
    (the kind), ``host`` (the source), ``transport``, ``user`` and
    ``reason`` (and ``log_kind``, the kind again, as every rate-limited line has).

    Remote input causes these events, so they go through a ThrottledLog: one
    line per source and kind per interval, and a bounded number per kind; the
    lines held back are counted in the next one let through.
    """

    def __init__(self, reactor: IReactorTime, log: Logger | None = None) -> None:
        self._lines = ThrottledLog(log if log is not None else Logger(namespace="sipshield.security"), reactor)

    def emit(self, event: SecurityEvent) -> None:
        self._lines.warn(
            event.kind, event.source, "security event {security_event} from {host} over {transport} (user {user}): {reason}",
            security_event=event.kind, host=event.source, transport=event.transport, user=event.user, reason=event.reason,
        )
