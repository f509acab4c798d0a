"""Log lines caused by remote input, rate-limited so that a flood cannot fill the disk.

Any sender can make the proxy log (a malformed datagram, a refused connection);
with forged source addresses every datagram can claim a new source.  So each
kind of line has two budgets per interval: one line per source, and at most
``per_kind`` lines in all.  What the budgets hold back is counted and reported
in the next line of that kind that is let through.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["ThrottledLog"]


class ThrottledLog:
    """``warn(kind, source, format, **fields)`` through *log*, within budgets.

    Tables are bounded: at most ``max_sources`` sources are remembered per
    interval (the oldest are forgotten first), so the limiter itself costs
    no memory an attacker can grow.
    """

    __slots__ = ("_log", "_seconds", "interval", "per_kind", "max_sources", "per_source", "_kinds")

    def __init__(
        self, log: Logger, reactor: IReactorTime, interval: float = 60.0, per_kind: int = 20, max_sources: int = 1024, per_source: bool = True,
    ) -> None:
        """With ``per_source=False`` only the budget per kind holds: every
        line is written until ``per_kind`` lines of that kind in one
        ``interval``, whatever their sources."""
        self.per_source = per_source
        self._log = log
        self._seconds = reactor.seconds
        self.interval = interval
        self.per_kind = per_kind
        self.max_sources = max_sources
        self._kinds: dict[str, _KindBudget] = {}

    def warn(self, kind: str, source: str, format: str, **fields: Any) -> bool:
        """Log one line of *kind* caused by *source*; False when it was held back."""
        held = self.admit(kind, source)
        if held is None:
            return False
        self.write(kind, held, format, **fields)
        return True

    def admit(self, kind: str, source: str) -> int | None:
        """Take a line of *kind* from *source* out of the budgets: None when
        it is held back (counted), else how many lines of that kind were held
        back since the last one written, for :meth:`write`.  Lets a caller
        whose fields cost something to format (escaping remote text) do that
        only for the lines that are written."""
        now = self._seconds()
        budget = self._kinds.get(kind)
        if budget is None or now - budget.started >= self.interval:
            held = budget.held + budget.held_before if budget is not None else 0
            budget = self._kinds[kind] = _KindBudget(now)
            budget.held_before = held
        if budget.lines >= self.per_kind or (self.per_source and source in budget.sources):
            budget.held += 1
            return None
        if self.per_source:
            if len(budget.sources) >= self.max_sources:
                budget.sources.pop(next(iter(budget.sources)))
            budget.sources[source] = None
        budget.lines += 1
        held = budget.held_before + budget.held
        budget.held_before = budget.held = 0
        return held

    def write(self, kind: str, held: int, format: str, **fields: Any) -> None:
        """Write the line :meth:`admit` let through (*held*: what it returned)."""
        if held:
            format += " ({suppressed} similar lines held back in the last {interval:g} s)"
            fields.update(suppressed=held, interval=self.interval)
        self._log.warn(format, log_kind=kind, **fields)


class _KindBudget:
    __slots__ = ("started", "lines", "held", "held_before", "sources")

    def __init__(self, started: float) -> None:
        self.started = started
        self.lines = 0
        self.held = 0
        self.held_before = 0
        self.sources: dict[str, None] = {}
