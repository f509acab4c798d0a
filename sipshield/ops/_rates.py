"""Recent activity for the admin API: message rates over the last seconds
(``GET /v1/rates``) and the sources sending the most (``GET /v1/top-talkers``).

Nothing here is on the message path.  The rates are differences of the
metrics registry's own counters, read every :data:`SAMPLE_INTERVAL` seconds
into the alerts' :class:`~sipshield.ops._alerts.CounterWindow` (one per
series, each kept :data:`MAX_WINDOW` seconds).  The talkers are the proxy
core's and the security event tally's :class:`~sipshield._tally.SourceTally`
summaries, ranked when asked; this monitor only starts their periods
(every :data:`TALKER_PERIOD` seconds), so "recently" means the current
period and the whole one before it: the last 60 to 120 seconds, the exact
start given in every answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.metrics_core import Metric
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from sipshield._tally import SourceTally
from sipshield.ops._alerts import CounterWindow

__all__ = ["DEFAULT_WINDOW", "MAX_WINDOW", "SAMPLE_INTERVAL", "TALKER_PERIOD", "ActivityMonitor", "counter_readings"]

SAMPLE_INTERVAL = 5.0
"""Seconds between two readings of the counters."""
MAX_WINDOW = 300.0
"""The longest window ``/v1/rates`` answers for."""
DEFAULT_WINDOW = 60.0
TALKER_PERIOD = 60.0
"""Seconds of one period of the talker tallies (two are ranked together)."""

_GROUPS: dict[str, Callable[[Mapping[str, str]], tuple[str, str]]] = {
    "sipshield_requests": lambda labels: ("requests", labels["method"]),
    "sipshield_responses_sent": lambda labels: ("responses", labels["code"][:1] + "xx"),
    "sipshield_auth_failures": lambda labels: ("auth_failures", labels["reason"]),
    "sipshield_drops": lambda labels: ("drops", labels["reason"]),
    "sipshield_scanner_drops": lambda labels: ("drops", "scanner"),
    "sipshield_rate_limit_hits": lambda labels: ("refused", "rate_limit"),
    "sipshield_acl_denies": lambda labels: ("refused", "acl"),
}
"""The registry's counter families ``/v1/rates`` reports, and the (group, name) each sample adds to."""
GROUPS = ("requests", "responses", "auth_failures", "drops", "refused")


def counter_readings(families: Iterable[Metric]) -> dict[tuple[str, str], float]:
    """The counters ``/v1/rates`` reports, summed by (group, name): requests
    by method (every transport), responses sent by class, auth failures by
    reason, drops by reason, refusals (rate limits, ACL) by step."""
    readings: dict[tuple[str, str], float] = {}
    for family in families:
        group = _GROUPS.get(family.name)
        if group is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = group(sample.labels)
                readings[key] = readings.get(key, 0.0) + sample.value
    return readings


class ActivityMonitor(Service):
    """Reads the counters every :data:`SAMPLE_INTERVAL` s and starts a new
    talker period every :data:`TALKER_PERIOD` s, on the reactor's clock.

    *read* gives the counters now (:func:`counter_readings` over the
    service's registry); *requests* and *auth_failures* are the talker
    tallies; *banned* says whether a host is banned now (no side effect)."""

    name = "activity"

    def __init__(
        self,
        reactor: IReactorTime,
        read: Callable[[], Mapping[tuple[str, str], float]],
        requests: SourceTally,
        auth_failures: SourceTally,
        banned: Callable[[], Callable[[str], bool]] = lambda: lambda host: False,
    ) -> None:
        self.reactor = reactor
        self.read = read
        self.requests = requests
        self.auth_failures = auth_failures
        self.banned = banned
        self.windows: dict[tuple[str, str], CounterWindow] = {}
        self._last: float | None = None
        now = reactor.seconds()
        self._period = now
        self._previous = now
        self._loop = LoopingCall(self.sample)
        self._loop.clock = reactor

    def sample(self) -> None:
        """Take one reading; start a talker period when one is over."""
        now = self.reactor.seconds()
        for key, value in self.read().items():
            window = self.windows.get(key)
            if window is None:
                window = self.windows[key] = CounterWindow(MAX_WINDOW, SAMPLE_INTERVAL)
                if self._last is not None:
                    window.add(self._last, 0.0)  # not in the last reading: nothing counted yet
            window.add(now, value)
        self._last = now
        if now - self._period >= TALKER_PERIOD:
            self.requests.rotate()
            self.auth_failures.rotate()
            self._previous, self._period = self._period, now

    def rates(self, window: float = DEFAULT_WINDOW) -> dict[str, Any]:
        """Per-second rates over the last *window* seconds, as of the last
        reading: ``seconds`` is what the readings span (less than *window*
        just after start, 0 before two readings)."""
        answer: dict[str, Any] = {group: {} for group in GROUPS}
        spanned = 0.0
        for (group, name), counter in sorted(self.windows.items()):
            rate = counter.rate(window)
            if rate is not None:
                answer[group][name] = round(rate[0], 3)
                spanned = max(spanned, rate[1])
        answer.update(window=window, seconds=round(spanned, 3), at=self._last, interval=SAMPLE_INTERVAL)
        return answer

    def talkers(self, limit: int, by: str = "requests") -> dict[str, Any]:
        """The *limit* sources with the most requests (or ``by="auth_failures"``)
        since the start of the previous talker period."""
        requests, failures = self.requests.totals(), self.auth_failures.totals()
        ranked = requests if by == "requests" else failures
        top = sorted(ranked.items(), key=lambda item: (-item[1], item[0]))[:limit]
        banned = self.banned()
        rows = [
            {"source": source, "requests": requests.get(source, 0), "auth_failures": failures.get(source, 0), "banned": banned(source)} for source, _ in top
        ]
        now = self.reactor.seconds()
        return {"by": by, "since": self._previous, "seconds": round(now - self._previous, 3), "talkers": rows}

    def startService(self) -> None:
        super().startService()
        self._loop.start(SAMPLE_INTERVAL, now=True)

    def stopService(self) -> Any:
        if self._loop.running:
            self._loop.stop()
        return super().stopService()
