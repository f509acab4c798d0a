"""Alerts: ``[[alerts.rules]]`` evaluated on the reactor's clock, and the
notifiers each firing and resolving is sent to (docs/operations/alerts.md).

A rule watches one condition: a security event rate (the engine is an
observer of the service's SecurityEventBus), a metric read through a
:class:`MetricSource`, or the days until the served TLS certificate expires.
Each rule is a small state machine, ``ok -> pending -> firing -> ok``
(:data:`_TRANSITIONS` below): it sends one ``firing`` alert when its
condition has held ``for`` seconds and one ``resolved`` alert when it has
been false ``resolve_after`` seconds, so one incident is one alert and one
resolve message however often the condition flaps in between.

Memory is bounded by the configuration, never by traffic: an event-rate
rule keeps at most ``more_than + 1`` timestamps, a rate over a metric at
most ``window / interval + 2`` samples.  Alert texts hold only what the
configuration and the engine wrote (rule names, numbers): nothing a remote
sender chose reaches a webhook, a mail header or a log line through here.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from io import BytesIO
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipshield._ratelog import ThrottledLog
from sipshield.config import AlertRuleConfig, AlertsConfig, EmailNotifierConfig, WebhookNotifierConfig
from sipshield.events import SecurityEvent, printable

__all__ = ["Alert", "AlertEngine", "CounterWindow", "EmailNotifier", "LogNotifier", "MetricSource", "Notifier", "WebhookNotifier", "build_notifiers"]

FIRING = "firing"
RESOLVED = "resolved"
TICK = 1.0
"""Seconds between two evaluations of the time-driven parts (``for``, ``resolve_after``, windows sliding)."""
_T = TypeVar("_T")
MAX_IN_FLIGHT = 16
"""Deliveries one notifier may have under way; past it an alert is dropped for that notifier (and logged)."""


class MetricSource(Protocol):
    """Where ``metric`` rules read their values: the service's Prometheus
    registry (``registry.get_sample_value(name, labels)``) once metrics are
    in, or anything else that can answer."""

    def value(self, name: str, labels: Mapping[str, str]) -> float | None:
        """The sample *name* with exactly *labels* now, or None when there is none."""
        ...


@dataclass(frozen=True, slots=True)
class Alert:
    """One message about one rule: it started firing, or it resolved."""

    rule: str
    state: str
    """``firing`` or ``resolved``."""
    condition: str
    """What the rule watches, from the configuration: ``more than 20 auth-failure events in 30 s``."""
    value: float | None
    """The last value seen (events in the window, the metric or its rate, days left)."""
    since: float
    """When this incident started firing (POSIX seconds)."""
    at: float
    """When this message was made (POSIX seconds)."""

    @property
    def text(self) -> str:
        """One line: ``[FIRING] NAME: CONDITION (now VALUE)``, or ``[RESOLVED] ... after N s``."""
        value = "no value" if self.value is None else f"now {self.value:g}"
        if self.state == FIRING:
            return f"[FIRING] {self.rule}: {self.condition} ({value})"
        return f"[RESOLVED] {self.rule}: {self.condition} no longer holds ({value}, fired for {self.at - self.since:.0f} s)"

    def fields(self) -> dict[str, object]:
        """The structured form (stable names), for the webhook's JSON and the log event."""
        return {
            "rule": self.rule, "state": self.state, "condition": self.condition, "value": self.value,
            "since": _iso(self.since), "at": _iso(self.at),
        }


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class Notifier(Protocol):
    """Delivers alerts somewhere (INotifier in docs/architecture.md)."""

    name: str
    """As rules name it in ``notify``: ``log``, ``webhook:ops``, ``email:security``."""

    def notify(self, alert: Alert) -> Deferred[None]:
        """Deliver *alert*; fires when it was taken, errbacks when it was not. Never blocks."""
        ...


# -- conditions ---------------------------------------------------------------------------


class _EventRate:
    """More than ``more_than`` matching events within ``window`` seconds:
    only the newest ``more_than + 1`` timestamps are kept, which is all that
    question needs."""

    def __init__(self, rule: AlertRuleConfig) -> None:
        self.rule = rule
        self._times: deque[float] = deque(maxlen=rule.more_than + 1)
        over = f" over {rule.transport}" if rule.transport else ""
        self.condition = f"more than {rule.more_than} {rule.event} events{over} in {rule.window:g} s"

    def observe(self, event: SecurityEvent, now: float) -> bool:
        """Count *event* if it matches; whether it did."""
        if event.kind != self.rule.event or (self.rule.transport is not None and event.transport != self.rule.transport):
            return False
        self._times.append(now)
        return True

    def sample(self, now: float) -> tuple[bool, float | None]:
        times = self._times
        while times and times[0] <= now - self.rule.window:
            times.popleft()
        return len(times) > self.rule.more_than, float(len(times))


class CounterWindow:
    """Readings of one counter over a sliding window: one is added every
    ``interval`` seconds or so, and only those the last ``window`` seconds
    need are kept (at most ``window / interval + 2``: the newest, and the
    newest at least ``window`` old).  A reading below the one before (the
    counter's owner restarted) starts the window again.  The ``metric``
    rules' rates, and the admin API's ``/v1/rates``, are read from these."""

    __slots__ = ("window", "_samples")

    def __init__(self, window: float, interval: float) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque(maxlen=math.ceil(window / interval) + 2)

    def add(self, now: float, value: float) -> None:
        samples = self._samples
        if samples and value < samples[-1][1]:
            samples.clear()  # a counter reset (a restart of its owner)
        samples.append((now, value))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()

    def rate(self, over: float | None = None) -> tuple[float, float] | None:
        """``(per second, seconds spanned)`` from the newest reading back to
        the newest one at least *over* seconds older than it (the oldest kept
        when none is, or *over* is None); None before two readings."""
        samples = self._samples
        if len(samples) < 2:
            return None
        t1, v1 = samples[-1]
        t0, v0 = samples[0]
        if over is not None:
            for t, v in reversed(samples):
                if t <= t1 - over:
                    t0, v0 = t, v
                    break
        return ((v1 - v0) / (t1 - t0) if t1 > t0 else 0.0), t1 - t0


class _Metric:
    """A metric (or its per-second rate over ``window``) above or below a threshold."""

    def __init__(self, rule: AlertRuleConfig, source: Callable[[], MetricSource | None], log: Logger) -> None:
        self.rule = rule
        self.source = source
        self.log = log
        self._samples = CounterWindow(rule.window, rule.interval)
        labels = ",".join(f'{k}="{v}"' for k, v in rule.labels)
        what = f"{rule.metric}{{{labels}}}" if labels else f"{rule.metric}"
        what = f"rate of {what} over {rule.window:g} s" if rule.rate else what
        bound = f"above {rule.above:g}" if rule.above is not None else f"below {rule.below:g}"
        self.condition = printable(f"{what} {bound}", 256)  # label values are the operator's, and still go into mail headers
        self._warned = False

    def sample(self, now: float) -> tuple[bool, float | None]:
        rule = self.rule
        source = self.source()
        value = None if source is None else source.value(rule.metric or "", dict(rule.labels))
        if value is None:
            if not self._warned:
                self._warned = True
                self.log.warn("alert rule {alert_rule}: no value for {metric} (no metric source, or no such sample); not firing",
                              alert_rule=rule.name, metric=rule.metric)
            return False, None
        if rule.rate:
            self._samples.add(now, value)
            rate = self._samples.rate()
            if rate is None:
                return False, None
            value = rate[0]
        holds = value > rule.above if rule.above is not None else value < (rule.below or 0.0)
        return holds, value


class _CertificateExpiry:
    """The served certificate's days left below ``below``."""

    def __init__(self, rule: AlertRuleConfig, not_after: Callable[[], float | None]) -> None:
        self.rule = rule
        self.not_after = not_after
        self.condition = f"the TLS certificate expires in under {rule.below:g} days"

    def sample(self, now: float) -> tuple[bool, float | None]:
        expires = self.not_after()
        if expires is None:
            return False, None
        days = round((expires - now) / 86400, 2)
        return days < (self.rule.below or 0.0), days


class _Condition(Protocol):
    condition: str

    def sample(self, now: float) -> tuple[bool, float | None]: ...


# -- the rule's state machine -------------------------------------------------------------

OK, PENDING = "ok", "pending"
_TRANSITIONS: dict[tuple[str, bool], str] = {
    # (state, condition holds) -> next state, before the time checks of _Rule.update
    (OK, True): PENDING, (OK, False): OK,
    (PENDING, True): PENDING, (PENDING, False): OK,
    (FIRING, True): FIRING, (FIRING, False): FIRING,
}
"""``pending`` becomes ``firing`` once the condition has held ``for`` seconds
(at once with ``for = 0``), sending the alert; ``firing`` becomes ``ok`` once
the condition has been false ``resolve_after`` seconds, sending the resolve."""


class _Rule:
    def __init__(self, config: AlertRuleConfig, condition: _Condition) -> None:
        self.config = config
        self.condition = condition
        self.state = OK
        self.held_since = 0.0
        self.fired_at = 0.0
        self.clear_since: float | None = None
        self.next_sample = 0.0

    def update(self, now: float) -> Alert | None:
        """Sample the condition at *now*; the alert this sends, if any."""
        holds, value = self.condition.sample(now)
        previous = self.state
        self.state = _TRANSITIONS[(previous, holds)]
        if self.state == PENDING:
            if previous == OK:
                self.held_since = now
            if now - self.held_since < self.config.for_:
                return None
            self.state, self.fired_at, self.clear_since = FIRING, now, None
            return Alert(self.config.name, FIRING, self.condition.condition, value, now, now)
        if self.state == FIRING:
            if holds:
                self.clear_since = None
                return None
            if self.clear_since is None:
                self.clear_since = now
            if now - self.clear_since >= self.config.resolve_after:
                self.state = OK
                return Alert(self.config.name, RESOLVED, self.condition.condition, value, self.fired_at, now)
        return None


class AlertEngine(Service):
    """The ``[alerts]`` rules of one service: a SecurityEvents observer (give
    it to ``service.events.subscribe``) and a child service whose clock
    evaluates the rules every second while it runs.

    *metrics* (the attribute ``metrics``, settable later) backs the ``metric``
    rules (None: they never fire, logged once);
    *certificate_not_after* says when the served certificate expires (POSIX
    seconds; None: no certificate).  Alert timestamps are the reactor's ``seconds()``."""

    name = "alerts"
    log = Logger(namespace="sipshield.alerts")

    def __init__(
        self, config: AlertsConfig, reactor: IReactorTime, notifiers: Mapping[str, Notifier], *,
        metrics: MetricSource | None = None, certificate_not_after: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.reactor = reactor
        self.notifiers = dict(notifiers)
        self.metrics = metrics
        """What ``metric`` rules read; may be set after construction (the metrics registry's source)."""
        self._failures = ThrottledLog(self.log, reactor, interval=300.0, per_kind=5)
        self._in_flight: dict[str, int] = {}
        self._event_rules: list[tuple[_EventRate, _Rule]] = []
        self.rules: list[_Rule] = []
        for rule in config.rules:
            condition: _Condition
            if rule.kind == "event_rate":
                rate = _EventRate(rule)
                condition = rate
            elif rule.kind == "metric":
                condition = _Metric(rule, lambda: self.metrics, self.log)
            else:
                condition = _CertificateExpiry(rule, certificate_not_after)
            state = _Rule(rule, condition)
            self.rules.append(state)
            if rule.kind == "event_rate":
                self._event_rules.append((rate, state))
        self._loop = LoopingCall(self.tick)
        self._loop.clock = reactor

    # -- a SecurityEvents observer

    def emit(self, event: SecurityEvent) -> None:
        """Count *event* for the rules it matches; a rule it takes over its threshold fires now."""
        now = self.reactor.seconds()
        for rate, rule in self._event_rules:
            if rate.observe(event, now) and rule.state != FIRING:
                self._update(rule, now)

    # -- evaluation

    def tick(self) -> None:
        """Evaluate every rule that is due (event rules each tick, the others every ``interval``)."""
        now = self.reactor.seconds()
        for rule in self.rules:
            if rule.config.kind == "event_rate" or now >= rule.next_sample:
                rule.next_sample = now + rule.config.interval
                self._update(rule, now)

    def check(self, kind: str) -> None:
        """Evaluate the rules of *kind* now (``certificate_expiry`` after a TLS reload)."""
        now = self.reactor.seconds()
        for rule in self.rules:
            if rule.config.kind == kind:
                self._update(rule, now)

    def _update(self, rule: _Rule, now: float) -> None:
        alert = rule.update(now)
        if alert is not None:
            self._send(rule.config.notify, alert)

    def _send(self, targets: Sequence[str], alert: Alert) -> None:
        for target in targets:
            notifier = self.notifiers.get(target)
            if notifier is None:
                continue
            if self._in_flight.get(target, 0) >= MAX_IN_FLIGHT:
                self._failures.warn(target, "", "alert {alert_rule} {alert_state} not sent to {notifier}: {count} deliveries still under way",
                                    alert_rule=alert.rule, alert_state=alert.state, notifier=target, count=MAX_IN_FLIGHT)
                continue
            self._in_flight[target] = self._in_flight.get(target, 0) + 1
            d = defer.maybeDeferred(notifier.notify, alert)
            d.addErrback(self._failed, target, alert)
            d.addBoth(self._delivered, target)

    def _failed(self, failure: Failure, target: str, alert: Alert) -> None:
        self._failures.warn(target, "", "alert {alert_rule} {alert_state} not delivered to {notifier}: {why}",
                            alert_rule=alert.rule, alert_state=alert.state, notifier=target, why=failure.getErrorMessage()[:200])

    def _delivered(self, _: object, target: str) -> None:
        self._in_flight[target] -= 1

    # -- a child service

    def startService(self) -> None:
        super().startService()
        if self.rules:
            self._loop.start(TICK, now=True)

    def stopService(self) -> Deferred[None] | None:
        if self._loop.running:
            self._loop.stop()
        return super().stopService()


# -- notifiers ----------------------------------------------------------------------------


class LogNotifier:
    """``log``: one twisted.logger event per alert in the ``sipshield.alerts``
    namespace, a warning when firing and info when resolved, with the fields
    ``alert_rule``, ``alert_state``, ``alert_condition``, ``alert_value``,
    ``alert_since`` and ``alert_at``, and the alert's one-line text."""

    name = "log"

    def __init__(self, log: Logger | None = None) -> None:
        self.log = log if log is not None else Logger(namespace="sipshield.alerts")

    def notify(self, alert: Alert) -> Deferred[None]:
        emit = self.log.warn if alert.state == FIRING else self.log.info
        emit("alert {alert_text}", alert_text=alert.text, **{f"alert_{key}": value for key, value in alert.fields().items()})
        return defer.succeed(None)


class WebhookError(Exception):
    """The webhook answered with a status other than 2xx."""


class WebhookNotifier:
    """``webhook:NAME``: the alert POSTed as Slack-compatible JSON,
    ``{"text": "...", "alert": {...}}``, with treq; a non-2xx answer, a
    connection failure or no answer within ``timeout`` seconds (the whole
    exchange, body included) is a failure.  Redirects are not followed."""

    def __init__(self, config: WebhookNotifierConfig, reactor: IReactorTime) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool

        self.name = f"webhook:{config.name}"
        self.config = config
        self.reactor = reactor
        self._agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))  # type: ignore[arg-type]
        parts = urlsplit(config.url)
        self._where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        """The URL's scheme and host for messages: its path is often its secret (Slack's are)."""

    def notify(self, alert: Alert) -> Deferred[None]:
        import treq
        from treq.response import _Response

        headers: dict[bytes | str, bytes | str] = {"User-Agent": "sipshield-alerts", **dict(self.config.headers)}
        payload = {"text": alert.text, "alert": alert.fields()}
        d = treq.post(self.config.url, json=payload, headers=headers, agent=self._agent, allow_redirects=False)

        def answered(response: _Response) -> Deferred[None]:
            drained: Deferred[None] = treq.collect(response, lambda _: None)
            if 200 <= response.code < 300:
                return drained

            def refused(_: object) -> None:
                raise WebhookError(f"HTTP {response.code} from {self._where}")

            return drained.addCallback(refused)

        done: Deferred[None] = d.addCallback(answered)
        return _within(done, self.config.timeout, self.reactor, f"no answer from {self._where}")


class EmailNotifier:
    """``email:NAME``: one mail per alert through the SMTP relay (twisted.mail's
    ESMTP client), the alert's text as subject and body; STARTTLS required
    when ``starttls = true`` (the relay's certificate checked against the
    system CAs for ``host``), AUTH when a username is set; no retries, the
    whole exchange within ``timeout`` seconds."""

    def __init__(self, config: EmailNotifierConfig, reactor: IReactorTime) -> None:
        self.name = f"email:{config.name}"
        self.config = config
        self.reactor = reactor

    def message(self, alert: Alert) -> bytes:
        """The mail, as sent."""
        message = EmailMessage()
        message["From"] = self.config.sender
        message["To"] = ", ".join(self.config.to)
        message["Subject"] = f"sipshield alert: {alert.text}"[:200]
        message["Date"] = datetime.fromtimestamp(alert.at, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
        body = [alert.text, ""] + [f"{key}: {value}" for key, value in alert.fields().items()]
        message.set_content("\n".join(body) + "\n")
        return message.as_bytes()

    def notify(self, alert: Alert) -> Deferred[None]:
        from twisted.internet.ssl import optionsForClientTLS
        from twisted.mail.smtp import ESMTPSenderFactory

        config = self.config
        sent: Deferred[object] = Deferred()
        tls = optionsForClientTLS(config.host) if config.starttls else None
        factory = ESMTPSenderFactory(
            config.username and config.username.encode(), config.password and config.password.encode(), config.sender, list(config.to),
            BytesIO(self.message(alert)), sent, retries=0, timeout=int(config.timeout), contextFactory=tls,
            requireAuthentication=config.username is not None, requireTransportSecurity=config.starttls,
        )
        factory.noisy = False
        connector = self.reactor.connectTCP(config.host, config.port, factory, timeout=config.timeout)  # type: ignore[attr-defined]

        def stop(reason: object) -> object:
            connector.disconnect()
            return reason

        done: Deferred[None] = _within(sent, config.timeout, self.reactor, f"no answer from {config.host}:{config.port}").addBoth(stop).addCallback(
            lambda _: None)
        return done


def _within(d: Deferred[_T], timeout: float, reactor: IReactorTime, what: str) -> Deferred[_T]:
    """*d*, cancelled after *timeout* seconds with a TimeoutError saying *what*
    (whatever the cancelled operation errbacked with)."""

    def timed_out(result: object, seconds: float) -> _T:
        raise defer.TimeoutError(f"{what} within {seconds:g} s")

    return d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)  # type: ignore[arg-type]


def build_notifiers(config: AlertsConfig, reactor: IReactorTime) -> dict[str, Notifier]:
    """The built-in ``log`` and one notifier per ``[alerts.notifiers.NAME]``, by the name rules use."""
    notifiers: list[Notifier] = [LogNotifier()]
    for notifier in config.notifiers:
        if isinstance(notifier, WebhookNotifierConfig):
            notifiers.append(WebhookNotifier(notifier, reactor))
        else:
            notifiers.append(EmailNotifier(notifier, reactor))
    return {n.name: n for n in notifiers}
