"""Hot-path tallies: plain integers the metrics read at scrape time.

The transports, the transaction layer and the proxy core count what passes
through them here, with a list or dict increment and nothing else; the
Prometheus collector (sipshield/ops/_metrics.py) turns them into metric
families only when it is scraped.  Every table is bounded whatever a peer
sends: methods outside :data:`SIP_METHODS` count as ``other``, status codes
outside 100-699 are not counted.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

__all__ = ["LATENCY_BUCKETS", "SIP_METHODS", "LatencyHistogram", "MethodTally", "SourceTally", "StatusTally"]

SIP_METHODS = frozenset((
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
))
"""The methods counted by name (RFC 3261 and its extensions); any other is ``other``."""


class StatusTally:
    """Messages counted by status code, 100 to 699 (a fixed list: a peer
    choosing codes cannot grow it)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * 600

    def add(self, status: int) -> None:
        if 100 <= status <= 699:
            self.counts[status - 100] += 1

    def items(self) -> Iterator[tuple[int, int]]:
        """``(status, count)`` for every code seen at least once."""
        for index, count in enumerate(self.counts):
            if count:
                yield index + 100, count


class MethodTally:
    """Requests counted by method and transport: at most
    ``(len(SIP_METHODS) + 1) * transports`` keys."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, method: str, transport: str) -> None:
        try:
            self.counts[method, transport] += 1  # a method seen before: one dict update
        except KeyError:
            key = (method if method in SIP_METHODS else "other", transport)
            self.counts[key] = self.counts.get(key, 0) + 1


LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Upper bounds in seconds (a message the core handles synchronously takes
tens of microseconds; the top buckets catch a stalled reactor)."""


class LatencyHistogram:
    """A Prometheus-style histogram kept as plain numbers: one bisect and
    two additions an observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus buckets are: cumulative, +Inf last."""
        out = []
        running = 0
        for bound, count in zip((*(repr(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class SourceTally:
    """The sources sending the most, in at most ``capacity`` counters per
    period whatever the number of sources (a forged address per datagram
    included): the Misra-Gries heavy-hitters summary.

    A known source costs one dict read and one write, a new one an insert
    while there is room; when the table is full, a new source and every
    counter lose one, and the counters at zero make room (a rebuild of
    the table, at most once per ``capacity + 1`` counts: amortised O(1)).
    Every source sending more than ``1 / (capacity + 1)`` of a period's
    messages is in the table, its count low by at most ``discounted``.

    :meth:`rotate` (the admin API's activity monitor, every period) starts
    a new period and keeps the one before; :meth:`top` ranks both together.
    """

    __slots__ = ("capacity", "counts", "discounted", "previous", "previous_discounted")

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.discounted = 0
        """What each counter of this period may be low by (the rebuilds so far)."""
        self.previous: dict[str, int] = {}
        self.previous_discounted = 0

    def add(self, source: str) -> None:
        counts = self.counts
        count = counts.get(source)
        if count is not None:
            counts[source] = count + 1
        elif len(counts) < self.capacity:
            counts[source] = 1
        else:
            self.counts = {key: n - 1 for key, n in counts.items() if n > 1}
            self.discounted += 1

    def rotate(self) -> None:
        """End the period: the current counts become the previous ones."""
        self.previous, self.previous_discounted = self.counts, self.discounted
        self.counts, self.discounted = {}, 0

    def totals(self) -> dict[str, int]:
        """Counts of this period and the previous one, by source."""
        merged = dict(self.previous)
        for source, count in self.counts.items():
            merged[source] = merged.get(source, 0) + count
        return merged

    def top(self, limit: int) -> list[tuple[str, int]]:
        """The *limit* sources counted most over this period and the previous one, most first."""
        return sorted(self.totals().items(), key=lambda item: (-item[1], item[0]))[:limit]
