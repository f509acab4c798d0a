"""The transactions' timers: one first-in-first-out queue per delay.

Every RFC 3261 transaction timer is one of a handful of delays (T1 and its
doublings up to T2, T4, 64*T1, Timer D), and a transaction has at most one
running at a time.  Timers of one delay started in time order also fall due
in that order, so each delay needs only a queue and ONE reactor call, for
its head: starting a timer appends a small tuple, cancelling it forgets it,
and no transaction owns an ``IDelayedCall`` (with its bound methods, its
place in the reactor's heap, and the objects the cyclic garbage collector
walks while thousands of finished transactions wait out Timer J, K, L or M).

A cancelled entry stays in its queue until it falls due and is skipped; a
queue whose every entry is cancelled is emptied at once and its reactor
call cancelled, so no timer outlives the last transaction that needs it.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["TimerEntry", "TimerQueues"]

_EARLY = 1e-6
"""Seconds a timer may fire ahead of its due time: absorbs float rounding
between ``now + delay`` and the reactor's own arithmetic."""


class _Timed(Protocol):
    """What a timer calls: the transaction whose timer it is."""

    _timer: TimerEntry | None

    def _fire(self) -> None: ...


class _Queue:
    __slots__ = ("delay", "entries", "live", "call", "running")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.entries: deque[TimerEntry] = deque()
        self.live = 0
        self.call: IDelayedCall | None = None
        self.running = False


TimerEntry = tuple[float, Any, _Queue]
"""``(due time, the transaction, its queue)``: a running timer.  The
transaction holds it in ``_timer``; it is live while it is held there."""


class TimerQueues:
    """Start and cancel one-shot transaction timers on an ``IReactorTime``."""

    __slots__ = ("_call_later", "_seconds", "_queues")

    log = Logger()

    def __init__(self, reactor: IReactorTime) -> None:
        self._call_later = reactor.callLater
        self._seconds = reactor.seconds
        self._queues: dict[float, _Queue] = {}

    def start(self, delay: float, owner: _Timed) -> TimerEntry:
        """A timer calling ``owner._fire()`` after *delay* seconds, unless
        ``owner._timer`` no longer holds the returned entry by then (the
        owner stores it there, and calls :meth:`cancel` when it drops it)."""
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = _Queue(delay)
        entry = (self._seconds() + delay, owner, queue)
        queue.entries.append(entry)
        queue.live += 1
        if queue.call is None and not queue.running:
            queue.call = self._call_later(delay, self._run, queue)
        return entry

    def cancel(self, entry: TimerEntry) -> None:
        """The owner dropped *entry* before it fired."""
        queue = entry[2]
        queue.live -= 1
        if queue.live == 0 and not queue.running:
            self._close(queue)

    def live(self) -> int:
        """Timers started and neither fired nor cancelled."""
        return sum(queue.live for queue in self._queues.values())

    def stop(self) -> None:
        """Forget every timer (the layer is shutting down)."""
        for queue in list(self._queues.values()):
            self._close(queue)

    def _close(self, queue: _Queue) -> None:
        queue.entries.clear()
        queue.live = 0
        call = queue.call
        if call is not None:
            queue.call = None
            call.cancel()
        if self._queues.get(queue.delay) is queue:
            del self._queues[queue.delay]

    def _run(self, queue: _Queue) -> None:
        queue.call = None
        queue.running = True
        entries = queue.entries
        try:
            now = self._seconds() + _EARLY
            while entries and entries[0][0] <= now:
                entry = entries.popleft()
                owner = entry[1]
                if owner._timer is entry:
                    queue.live -= 1
                    try:
                        owner._fire()
                    except Exception:
                        # One failing timer must not hold back the others in its queue.
                        self.log.failure("transaction timer of {owner!r} failed", owner=owner)
        finally:
            queue.running = False
        if queue.live == 0:
            self._close(queue)
        elif queue.call is None:
            queue.call = self._call_later(max(entries[0][0] - self._seconds(), 0.0), self._run, queue)
