"""Challenges nobody answers: one log line per source and user, saying what was offered.

A phone that supports none of the offered digest algorithms, or is set up
for another realm, gives up after the 401/407 without a word; the operator
sees nothing but a phone that "does not register".  So each challenge is
remembered per (source address, user), the user being the From (the To of a
REGISTER) user of the challenged request, unescaped (RFC 3261 19.1.4); an
authenticated answer from that source and user forgets it, and one still
there when the nonce lifetime has passed is logged once, rate-limited
(``ThrottledLog``), naming the realm and the algorithms offered.

Any sender can be challenged, from any forged address, so the table is
bounded: at most ``max_entries`` pending (source, user) pairs, the oldest
evicted first and counted (``dropped``, and in the next line logged).
Time is the reactor's (task.Clock in tests): one delayed call, for the
oldest entry, at any time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sipshield._ratelog import ThrottledLog

__all__ = ["UnansweredChallenges", "printable"]

_KIND = "unanswered-challenge"


def printable(text: str, limit: int = 64) -> str:
    """*text* (a remote value) safe for one log line: control characters and
    backslashes escaped (no CR/LF injection), at most *limit* characters kept."""
    cut = text[:limit]
    safe = cut.encode("unicode_escape").decode("ascii") if not cut.isprintable() or "\\" in cut else cut
    return safe + ("..." if len(text) > limit else "")


class _Pending:
    __slots__ = ("deadline", "transport", "realm", "algorithms", "challenges", "refused")

    def __init__(self, deadline: float, transport: str, realm: str, algorithms: tuple[str, ...]) -> None:
        self.deadline = deadline
        self.transport = transport
        self.realm = realm
        self.algorithms = algorithms
        self.challenges = 1
        self.refused = 0


class UnansweredChallenges:
    """The pending challenges, by (source host, user); see the module docstring."""

    log = Logger(namespace="sipshield.auth")

    def __init__(self, reactor: IReactorTime, lifetime: float, *, max_entries: int = 10000, log: Logger | None = None) -> None:
        self.reactor = reactor
        self.lifetime = lifetime
        self.max_entries = max_entries
        self.dropped = 0
        """Entries evicted unreported since the start, the table being full."""
        self._dropped_unsaid = 0
        self._pending: dict[tuple[str, str], _Pending] = {}  # insertion order = deadline order
        self._call: IDelayedCall | None = None
        self._lines = ThrottledLog(log if log is not None else self.log, reactor)

    def __len__(self) -> int:
        return len(self._pending)

    def challenged(self, source: str, user: str | None, transport: str, realm: str, algorithms: Sequence[str]) -> None:
        """A challenge for *realm* offering *algorithms* was sent to *source* for *user*."""
        key = (source, user or "")
        entry = self._pending.get(key)
        if entry is not None:
            entry.challenges += 1  # the first challenge's deadline stands: a retrying client is still reported
            return
        if len(self._pending) >= self.max_entries:
            self._pending.pop(next(iter(self._pending)))
            self.dropped += 1
            self._dropped_unsaid += 1
        self._pending[key] = _Pending(self.reactor.seconds() + self.lifetime, transport, realm, tuple(algorithms))
        if self._call is None:
            self._call = self.reactor.callLater(self.lifetime, self._expire)

    def answered(self, source: str, user: str | None) -> None:
        """An authenticated answer came from *source* for *user*: not a client that gave up."""
        self._pending.pop((source, user or ""), None)

    def refused(self, source: str, user: str | None) -> None:
        """An answer from *source* for *user* was checked and refused (wrong password)."""
        entry = self._pending.get((source, user or ""))
        if entry is not None:
            entry.refused += 1

    def stop(self) -> None:
        """Forget everything and cancel the timer (nothing is logged)."""
        self._pending.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _expire(self) -> None:
        self._call = None
        now = self.reactor.seconds()
        pending = self._pending
        while pending:
            key = next(iter(pending))
            entry = pending[key]
            if entry.deadline > now:
                self._call = self.reactor.callLater(entry.deadline - now, self._expire)
                return
            del pending[key]
            self._report(key, entry)

    def _report(self, key: tuple[str, str], entry: _Pending) -> None:
        source, user = key
        fields: dict[str, Any] = {
            "host": source, "user": printable(user) if user else "(none)", "transport": entry.transport, "realm": printable(entry.realm),
            "algorithms": ", ".join(entry.algorithms), "challenges": entry.challenges, "refused": entry.refused, "lifetime": self.lifetime,
            "dropped": self._dropped_unsaid,
        }
        text = (
            "no authenticated answer from {host} over {transport} for user {user} within {lifetime:g} s of {challenges} challenge(s) "
            "for realm {realm} offering {algorithms} ({refused} answer(s) refused); a client that supports none of these "
            "algorithms, or is set up for another realm, gives up without a word"
        )
        if self._dropped_unsaid:
            text += " ({dropped} other challenged source(s) and user(s) were dropped unreported: the table was full)"
        if self._lines.warn(_KIND, source, text, **fields):
            self._dropped_unsaid = 0
