"""Overload shedding: when the reactor falls behind, refuse new work by
source, the busiest sources first.

A flood the rate limits do not catch (many sources, each under its limits;
or simply more than one core can parse) shows as *lag*: the time between
when a timer was due and when it ran, and the time a datagram waited in the
kernel's receive buffer before the proxy read it (the plainer sign when
saturated: the reactor reads as fast as it can, barely late for its timers,
while the buffer's backlog grows; past SIP's T1 the phones retransmit what
waits).  :class:`ReactorLag` measures both every ``INTERVAL`` seconds on the
service's reactor (a Clock in tests), and the buffers' fill, and tells
:class:`OverloadShedding`, an admission step, when either lag goes above
``[limits] overload_lag`` (or a buffer is fuller than ``overload_queue``) at
``BEHIND`` measurements in a row (not in the first ``START_GRACE`` seconds) and
when they have stayed below for ``overload_recover`` seconds (hysteresis, so
the proxy does not flap).  Each change is one ``overload`` security event,
not one per request.

While not overloaded the step costs one attribute test per request.  While
overloaded it counts new out-of-dialog requests per source in one-second
windows (a bounded table) and refuses, statelessly (``[ratelimit] action``):

* every request of a source that sent more than its share in the last
  window (the share: ``overload_min_share`` or the window's mean per
  source, whichever is larger), and of one that goes over the share in
  this window;
* when the sources are too many to tell apart (a forged-source flood: the
  table is full, or more than a tenth of its size was seen in one window),
  every unproven request too, dropped: over UDP and without credentials
  (it would only be challenged; a forged source never answers the
  challenge, and a 503 to it would be traffic aimed at its owner).

Never refused: ACK and CANCEL (they end state), in-dialog requests along a
route set we signed (calls in progress).  Connections that carried an
authenticated request or a trunk's certificate, and the trusted sources
and allowlist (``exempt``), are never shed by source.

When no source is to blame (none over its share, no spread flood: the load
is calls from sources the proxy serves, a trunk sending more than one core
can carry), new calls are admitted at a rate, so that the calls past
capacity are refused early instead of all of them failing in a
retransmission storm: an INVITE without a To tag that
passes the rest gets a stateless 503 with Retry-After (``busy``) once the
*call rate* is spent.  The rate starts at ``CALL_RATE_FACTOR`` times the
calls a second the proxy started in its best half second lately (what it could carry,
fading a tenth a second, and a little less so that the queue drains), but no
more than one core carries at the CPU cost per call measured while it was not
overloaded (``capacity``), falls by a tenth each
measurement that is still over the threshold (but not while the datagrams'
wait is falling: the backlog drains, the rate is under capacity), rises by
``CALL_RATE_RISE`` each one under half the threshold (``CALL_RATE_RISE_IDLE``
under a quarter) and holds in between,
never below ``MIN_CALL_RATE``; tokens
for it are added at each measurement (``INTERVAL``), so the hot path pays
one comparison per new INVITE.  The calls already admitted go on: their
ACK, in-dialog requests and retransmissions are never refused.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from sipshield.config import Config
from sipshield.events import OVERLOAD, SecurityEvent, SecurityEvents
from sipshield.interfaces import IAdmissionStep, IExplainableAdmission
from sipshield.message import Request
from sipshield.proxy import DROP, Decision
from sipshield.proxy._explain import Explanation

__all__ = ["INTERVAL", "OverloadShedding", "ReactorLag", "build_overload", "overload_refusal"]

INTERVAL = 0.1
"""Seconds between two lag measurements."""

_WINDOW = 1.0
_CREDENTIALS = ("Authorization", "Proxy-Authorization")
CALL_RATE_FACTOR = 0.9
"""The new-call rate admitted on entering overload, as a share of the calls a second started just before."""
MIN_CALL_RATE = 5.0
"""New calls a second admitted at least while overloaded."""
CALL_RATE_FALL = 0.9
CALL_RATE_RISE = 1.05
"""Per measurement, the call rate's rise once the timer and the datagrams are under half ``overload_lag`` late."""
CALL_RATE_RISE_IDLE = 1.15
"""... and once they are under a quarter of it: the proxy has time to spare (the rate started low, or the demand fell)."""
DRAINING = 0.8
"""A wait in the receive buffer under this share of the last one measured is a backlog draining: the call rate holds."""
BEHIND = 2
"""Measurements in a row over the threshold that make overload: a single late one is a pause, not a load."""
WAIT_FACTOR = 2.0
"""A datagram is late when it waited more than this many times ``overload_lag`` in the receive buffer."""
START_GRACE = 1.0
"""Seconds after the service starts when no measurement enters overload (the start-up's own work makes the first ones late)."""
_CALL_BURST = 0.2
"""Seconds of the call rate that may be admitted at once."""
_OBSERVED = 0.5
"""Seconds of calls started that the call rate on entering overload is taken from."""
_COST_CALLS = 50
"""Calls the CPU cost per call is measured over at least."""
_COST_WINDOW = 1.0
"""Seconds the CPU cost per call is measured over at least."""
_COST_SPAN = 2.0
"""Seconds within which those calls must start (else the measurement starts again)."""
_COST_WEIGHT = 0.2
"""How far each new measurement moves the cost per call."""
_CARRIED_FADE = 0.99
"""Per lag measurement (0.1 s): how the best call rate carried lately fades."""


@implementer(IAdmissionStep, IExplainableAdmission)
class OverloadShedding:
    """The admission step (see the module docstring)."""

    name = "overload"

    def __init__(
        self, *, min_share: int = 20, max_sources: int = 10_000, refusal: Decision = DROP,
        exempt: Callable[[str, str], bool] | None = None, in_dialog: Callable[[Request, Any], bool] | None = None,
        events: SecurityEvents | None = None, calls_started: Callable[[], int] | None = None, busy: Decision | None = None,
        cpu_time: Callable[[], float] | None = None,
    ) -> None:
        self.min_share = min_share
        self.max_sources = max_sources
        self.refusal = refusal
        self.exempt = exempt
        self.in_dialog = in_dialog
        self.events = events
        self.overloaded = False
        self.shed = 0
        """Requests refused while overloaded (since the service started)."""
        self._counts: dict[str, int] = {}
        self._heavy: frozenset[str] = frozenset()
        self._share = float(min_share)
        self._spread = False
        self._uncounted = 0
        self._window_start = 0.0
        self._shed_at_enter = 0
        self.calls_started = calls_started
        """How many calls the proxy has started (the core's counter), sampled at each lag measurement; None: no call rate."""
        self.busy = busy if busy is not None else refusal
        """What a new call over the call rate gets (a 503 with Retry-After: it comes from a source we admitted)."""
        self.call_rate: float | None = None
        """New calls a second admitted while overloaded (None: not limited)."""
        self.calls_refused = 0
        """New calls refused over the call rate (since the service started)."""
        self._tokens = 0.0
        self._blamed = False
        """A request was shed for its source in this window (a culprit is known)."""
        self._carried = 0.0
        """The most calls a second the proxy started lately while not overloaded (see :meth:`sample`)."""
        self._ceiling = 0.0
        """Twice what was carried before the overload: the call rate may rise to it, or to twice the calls starting now."""
        self._samples: deque[tuple[float, int]] = deque(maxlen=round(_OBSERVED / INTERVAL) + 1)
        self.cpu_time = cpu_time
        """The process's CPU seconds so far (all its threads), sampled at each measurement; None: no capacity estimate."""
        self._cpu: tuple[float, int, float] | None = None
        self.call_cost: float | None = None
        """CPU seconds per call started lately while not overloaded (a moving mean; None: not known yet)."""

    # -- the hot path -----------------------------------------------------------------

    def admission(self, request: Request, flow: Any) -> Decision | None:
        if not self.overloaded:
            return None
        return self._screen(request, flow)

    def _screen(self, request: Request, flow: Any) -> Decision | None:
        if self.unshed(request, flow) is not None:
            return self._new_call(request)
        source = flow.remote[0]
        counts = self._counts
        count = counts.get(source)
        if count is not None:
            count = counts[source] = count + 1
        elif len(counts) < self.max_sources:
            count = counts[source] = 1
        else:
            self._uncounted += 1
            count = 1
        decision = self._shedding(source, count, request, flow)
        if decision is not None:
            self.shed += 1
            self._blamed = True
            return decision
        return self._new_call(request)

    def _new_call(self, request: Request) -> Decision | None:
        """An INVITE that starts a call, within the call rate; the busy answer past it.

        Not while sources are being shed for their share or a spread flood:
        then they are what overloads the proxy, and calls from the sources
        within their share are what it is there for."""
        if self.call_rate is None or request.method != "INVITE" or request.to.tag is not None:
            return None
        if self._blamed or self._heavy or self._spread or self._uncounted or len(self._counts) > self.max_sources // 10:
            return None
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        self.calls_refused += 1
        self.shed += 1
        return self.busy

    def unshed(self, request: Request, flow: Any) -> str | None:
        """Why this request is never shed, or None when its source's share decides."""
        if request.method in ("ACK", "CANCEL"):
            return "ACK and CANCEL are never shed"
        if flow.authenticated:
            return "the connection carried an authenticated request"
        if flow.secure and flow.peer_certificate() is not None:
            return "a TLS client certificate (a trunk) is never shed"
        if self.exempt is not None and self.exempt(flow.remote[0], flow.transport_name):
            return "the source is exempt ([ratelimit] allowlist or a trusted source)"
        if request.to.tag is not None and self.in_dialog is not None and self.in_dialog(request, flow):
            return "in a dialog on our route set"
        return None

    def _shedding(self, source: str, count: int, request: Request, flow: Any) -> Decision | None:
        """The refusal for the *count*-th request from *source* in this window, or None."""
        if source in self._heavy or count > self._share:
            return self.refusal
        if (self._spread or self._uncounted) and not flow.reliable and not any(h in request.headers for h in _CREDENTIALS):
            # Dropped, whatever the action: most of these sources are forged,
            # and a 503 to each would be traffic aimed at their owners.
            return DROP
        return None

    def explain_admission(self, context: Any) -> Explanation:
        request, flow = context.request, context.flow
        if not self.overloaded:
            return Explanation.passes(self.name, "not overloaded (the reactor keeps up)")
        why = self.unshed(request, flow)
        calls = "" if self.call_rate is None else f"; new calls admitted at {self.call_rate:.0f}/s ({self._tokens:.0f} may start now)"
        if why is not None:
            if self.call_rate is not None and request.method == "INVITE" and request.to.tag is None and self._tokens < 1.0:
                return Explanation.of(self.name, self.busy, f"overloaded, {why}, but a new call over the call rate{calls}")
            return Explanation.passes(self.name, f"overloaded, but {why}{calls}")
        source = flow.remote[0]
        count = self._counts.get(source, 0) + 1
        decision = self._shedding(source, count, request, flow)
        share = f"overloaded: request {count} from {source} this window, share {self._share:g}" + (" (a heavy source)" if source in self._heavy else "")
        return Explanation.of(self.name, decision, share + ("" if decision is not None else ": within it"))

    # -- what ReactorLag tells it -----------------------------------------------------

    def enter(self, lag: float, now: float, queue: float | None = None, wait: float | None = None) -> None:
        """The reactor is *lag* seconds behind (or a receive buffer *queue* full, or datagrams *wait* seconds in it): start shedding."""
        self.overloaded = True
        self._counts = {}
        self._heavy = frozenset()
        self._share = float(self.min_share)
        self._spread = False
        self._uncounted = 0
        self._window_start = now
        self._shed_at_enter = self.shed
        self._blamed = False
        calls = ""
        if self.calls_started is not None:
            carried = max(self._carried, self._observed_call_rate())
            capacity = self.capacity()
            if capacity is not None:
                # What one core carries at that cost: the calls started lately
                # overstate it when a backlog of INVITEs was just read at once.
                carried = min(carried, capacity) if carried else capacity
            self.call_rate = max(MIN_CALL_RATE, CALL_RATE_FACTOR * carried)
            self._ceiling = 2 * carried if capacity is None else min(2 * carried, capacity)
            self._tokens = self._burst(self.call_rate)
            calls = f"; new calls admitted at {self.call_rate:.0f}/s"
        full = "" if queue is None else f" and a UDP receive buffer {queue * 100:.0f} % full"
        waits = "" if wait is None else f", datagrams waiting {wait * 1000:.0f} ms to be read"
        self._report(f"overloaded: the reactor is {lag * 1000:.0f} ms behind{full}{waits}; shedding new requests by source, the busiest first{calls}")

    def leave(self, lag: float, now: float) -> None:
        """The lag has stayed low: stop shedding."""
        self.overloaded = False
        self._counts = {}
        self._heavy = frozenset()
        self.call_rate = None
        self._report(f"recovered: the reactor is {lag * 1000:.0f} ms behind; {self.shed - self._shed_at_enter} request(s) shed while overloaded")

    def sample(self, now: float, pressed: bool, rise: float) -> None:
        """At each lag measurement: note the calls started so far and, while
        overloaded, move the call rate (down a tenth while *pressed*: the
        reactor behind or a receive buffer filling; up by the factor *rise*;
        held with a *rise* of 1) and add its tokens for the next ``INTERVAL``."""
        if self.calls_started is None:
            return
        started = self.calls_started()
        self._samples.append((now, started))
        if self.cpu_time is not None:
            self._note_cost(now, started, self.overloaded)
        if not self.overloaded:
            # What the proxy has carried lately: the best half second of calls
            # started, fading by a tenth a second so that it follows the machine.
            self._carried = max(self._carried * _CARRIED_FADE, self._observed_call_rate())
        rate = self.call_rate
        if rate is None:
            return
        if pressed:
            rate *= CALL_RATE_FALL
        elif rise > 1.0:
            # Up, but not past twice what calls really start: a rate far above
            # the demand would take seconds to come down once pressed again.
            ceiling = max(self._ceiling, 2 * self._observed_call_rate())
            capacity = self.capacity()
            if capacity is not None:
                ceiling = min(ceiling, capacity / CALL_RATE_FACTOR)  # never past what the core can start
            rate = min(rate * rise, max(rate, ceiling))
        rate = self.call_rate = max(MIN_CALL_RATE, rate)
        self._tokens = min(self._burst(rate), self._tokens + rate * INTERVAL)

    def _observed_call_rate(self) -> float:
        """Calls started a second over the samples of the last ``_OBSERVED`` seconds.

        The mean, not the best tenth of a second: read in turns of 256 KB, a
        backlog of INVITEs starts hundreds of calls in one tenth (2400/s seen
        where the core carries 800)."""
        if len(self._samples) < 2:
            return 0.0
        (first, started), (last, now_started) = self._samples[0], self._samples[-1]
        return (now_started - started) / (last - first) if last > first else 0.0

    def capacity(self) -> float | None:
        """The calls a second one core carries at the cost per call measured lately (None: not known)."""
        cost = self.call_cost
        return None if not cost else 1.0 / cost

    def _note_cost(self, now: float, started: int, overloaded: bool) -> None:
        """Move the CPU cost per call toward what the calls since the last note cost.

        Over at least ``_COST_WINDOW`` seconds (a tenth of a second that read a
        backlog of INVITEs starts many calls whose other messages come later)
        and ``_COST_CALLS`` calls started within ``_COST_SPAN`` seconds (quiet
        minutes would charge the timers' and the expiry loops' CPU to a few
        calls), and only while not overloaded (shedding costs CPU that calls
        do not account for)."""
        assert self.cpu_time is not None
        cpu = self.cpu_time()
        base = self._cpu
        if base is None or overloaded or now - base[2] > _COST_SPAN:
            self._cpu = (cpu, started, now)
            return
        spent, counted = cpu - base[0], started - base[1]
        if counted < _COST_CALLS or now - base[2] < _COST_WINDOW:
            return
        self._cpu = (cpu, started, now)
        cost = spent / counted
        self.call_cost = cost if self.call_cost is None else self.call_cost + _COST_WEIGHT * (cost - self.call_cost)

    @staticmethod
    def _burst(rate: float) -> float:
        return max(1.0, rate * _CALL_BURST)

    def roll(self, now: float) -> None:
        """Start a new counting window if the current one is over: the
        sources over their share in it are the heavy ones of the next."""
        if not self.overloaded or now - self._window_start < _WINDOW:
            return
        counts = self._counts
        total = sum(counts.values()) + self._uncounted
        share = max(float(self.min_share), total / (len(counts) + self._uncounted)) if total else float(self.min_share)
        self._heavy = frozenset(source for source, count in counts.items() if count > share)
        self._share = share
        self._spread = self._uncounted > 0 or len(counts) > self.max_sources // 10
        self._counts = {}
        self._uncounted = 0
        self._blamed = False
        self._window_start = now

    def _report(self, reason: str) -> None:
        if self.events is not None:
            self.events.emit(SecurityEvent(OVERLOAD, "-", "-", None, reason))


class ReactorLag(Service):
    """Measure how late the reactor runs a timer due every ``INTERVAL``
    seconds; above *threshold*, *shedding* enters overload; once the lag has
    stayed at or below it for *recover* seconds, it leaves."""

    name = "reactor-lag"

    def __init__(
        self, reactor: IReactorTime, shedding: OverloadShedding, threshold: float, recover: float = 5.0,
        queue: Callable[[], float | None] | None = None, queue_threshold: float = 0.0, delay: Callable[[], float | None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.shedding = shedding
        self.threshold = threshold
        self.recover = recover
        self.queue = queue
        """The fullest UDP listener's receive buffer, 0 to 1 (None: unknown), read at each measurement."""
        self.queue_threshold = queue_threshold
        """Above this share of a receive buffer in use the proxy is overloaded too, however little the reactor lags (0: not asked)."""
        self.delay = delay
        """How long the first datagram read since the last measurement waited in a UDP receive buffer (None: none read, or unknown)."""
        self.wait: float | None = None
        """The last such wait, in seconds: over *threshold* is overload as the lag is."""
        self.lag = 0.0
        """The last lag measured, in seconds."""
        self._due = 0.0
        self._calm_since: float | None = None
        self._behind = 0
        """Measurements in a row that found the proxy behind: one alone (a pause of the
        machine, a burst of start-up work) is not overload; ``BEHIND`` in a row is."""
        self._settled_at = 0.0
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        now = self.reactor.seconds()
        self._settled_at = now + START_GRACE
        self._schedule(now)

    def stopService(self) -> Any:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return super().stopService()

    def _schedule(self, now: float) -> None:
        self._due = now + INTERVAL
        self._call = self.reactor.callLater(INTERVAL, self._tick)

    def _tick(self) -> None:
        now = self.reactor.seconds()
        self.lag = lag = max(0.0, now - self._due)
        shedding = self.shedding
        threshold = self.threshold
        # The kernel's buffer fills before the reactor shows it: saturated, the
        # reactor runs turns of up to 256 KB of datagrams and is only 30-60 ms late
        # while each datagram waits longer in the buffer.
        share = self.queue() if self.queue_threshold and self.queue is not None else None
        filling = share is not None and share > self.queue_threshold
        wait = self.delay() if self.delay is not None else None
        # A datagram waits a turn of the reactor's reading at least (up to
        # 256 KB of datagrams: ~60 ms near saturation) before it is late.
        late = max(lag, (wait or 0.0) / WAIT_FACTOR)
        waiting = wait is not None and wait > WAIT_FACTOR * threshold
        behind = lag > threshold or filling or waiting
        # The call rate falls while the backlog grows or holds, not while it
        # drains (it is under capacity then: falling further would only
        # refuse calls it could carry), and rises once the datagrams wait
        # less than half the threshold; in between it holds.
        draining = waiting and self.wait is not None and wait is not None and wait < DRAINING * self.wait
        rise = 1.0 if filling or late > threshold / 2 else CALL_RATE_RISE if late > threshold / 4 else CALL_RATE_RISE_IDLE
        self.wait = wait
        shedding.sample(now, behind and not draining, rise)
        self._behind = self._behind + 1 if behind else 0
        if behind:
            self._calm_since = None
            if not shedding.overloaded and self._behind >= BEHIND and now >= self._settled_at:
                shedding.enter(lag, now, share if filling and lag <= threshold else None, wait if waiting else None)
        elif shedding.overloaded:
            if self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= self.recover:
                self._calm_since = None
                shedding.leave(lag, now)
        shedding.roll(now)
        self._schedule(now)


def build_overload(
    config: Config, reactor: IReactorTime, events: SecurityEvents, exempt: Callable[[str, str], bool] | None,
    in_dialog: Callable[[Request, Any], bool] | None, calls_started: Callable[[], int] | None = None,
    queue: Callable[[], float | None] | None = None, delay: Callable[[], float | None] | None = None,
) -> tuple[OverloadShedding, ReactorLag] | None:
    """The shedding step and its lag monitor ``[limits]`` asks for (None
    with ``overload_lag = 0``); refused requests get what ``[ratelimit]
    action`` says: a 503 with Retry-After, or nothing."""
    limits = config.limits
    if not limits.overload_lag:
        return None
    shedding = OverloadShedding(
        min_share=limits.overload_min_share, refusal=overload_refusal(config), exempt=exempt, in_dialog=in_dialog, events=events,
        calls_started=calls_started, busy=_busy(config), cpu_time=time.process_time,
    )
    return shedding, ReactorLag(reactor, shedding, limits.overload_lag, limits.overload_recover, queue, limits.overload_queue, delay)


def overload_refusal(config: Config) -> Decision:
    """What a source shed as the busiest gets, per ``[ratelimit] action``:
    a stateless 503 with Retry-After, or nothing."""
    rates = config.ratelimit
    return DROP if rates.action == "drop" else _busy(config)


def _busy(config: Config) -> Decision:
    """A stateless 503 with ``[ratelimit] retry_after``."""
    return Decision.reply(503, "Service Unavailable: Overloaded", [("Retry-After", str(config.ratelimit.retry_after))])
