"""Prometheus metrics over twisted.web (``[metrics]``, docs/operations/metrics.md).

Everything is read at scrape time: the proxy core, the transaction layer, the
transports and the shield keep plain integers (sipshield/_tally.py and their
own counters) and :class:`ProxyCollector` turns them into metric families
when Prometheus asks, so the hot path pays a list or dict increment and no
prometheus_client call.  Security events are counted by
:class:`SecurityEventTally`, an observer of the service's event bus.  The
registry belongs to the service (two services in one process each have
their own), never prometheus_client's global one.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from sipshield._tally import SourceTally
from sipshield.config import MetricsConfig
from sipshield.events import (
    ACL_DENY,
    AUTH_DOWNGRADE,
    AUTH_FAILURE,
    BAN,
    BEARER_REFUSED,
    RATE_LIMIT,
    SCANNER,
    SRTP_PLAIN,
    SRTP_REFUSED,
    TLS_HANDSHAKE_FAILURE,
    TOLL_FRAUD,
    UNBAN,
    SecurityEvent,
)
from sipshield.ops._http import listen_http
from sipshield.security._admission import AccessList, RateLimiter, ScannerBlock

if TYPE_CHECKING:
    from sipshield.auth._stages import DigestAuthStage
    from sipshield.proxy import ProxyCore
    from sipshield.security import BanPolicy
    from sipshield.transaction import TransactionLayer
    from sipshield.transport._stream import SIPStreamFactory

__all__ = ["MetricSources", "MetricsService", "ProxyCollector", "SecurityEventTally", "metrics_registry"]

EVENT_KINDS = (ACL_DENY, AUTH_DOWNGRADE, AUTH_FAILURE, BAN, BEARER_REFUSED, RATE_LIMIT, SCANNER, SRTP_PLAIN, SRTP_REFUSED, TLS_HANDSHAKE_FAILURE, TOLL_FRAUD, UNBAN)
"""The kinds counted by name; a kind a third-party stage makes up counts as ``other``."""
AUTH_FAILURE_REASONS = ("credentials", "algorithm", "bearer", "other")


def auth_failure_reason(event: SecurityEvent) -> str:
    """The bounded reason label of an auth failure (the event's reason is free text)."""
    if event.kind == BEARER_REFUSED or event.reason.startswith("bearer"):
        return "bearer"
    if event.reason == "credentials refused":
        return "credentials"  # a wrong password, an unknown user, the MD5 downgrade lock: one answer
    if "not offered" in event.reason:
        return "algorithm"
    return "other"


class SecurityEventTally:
    """A :class:`~sipshield.events.SecurityEvents` observer: events by kind,
    and auth failures (``auth-failure``, ``bearer-refused``) by reason."""

    def __init__(self) -> None:
        self.kinds = dict.fromkeys((*EVENT_KINDS, "other"), 0)
        self.auth_failures = dict.fromkeys(AUTH_FAILURE_REASONS, 0)
        self.auth_failures_from = SourceTally()
        """Auth failures by source host, the heaviest only (the admin API's top talkers)."""

    def emit(self, event: SecurityEvent) -> None:
        kind = event.kind if event.kind in self.kinds else "other"
        self.kinds[kind] += 1
        if event.kind in (AUTH_FAILURE, BEARER_REFUSED):
            self.auth_failures[auth_failure_reason(event)] += 1
            self.auth_failures_from.add(event.source)


@dataclass(frozen=True)
class MetricSources:
    """What the collector reads, handed over by the service (typed, not the service itself)."""

    core: ProxyCore
    """Its ``transactions`` (the TransactionLayer) is read at scrape time too."""
    events: SecurityEventTally
    admission: Callable[[], Iterable[object]]
    """The admission steps now (AccessList, ScannerBlock, RateLimiter, those configured; a reload replaces them)."""
    bans: BanPolicy | None
    auth: Callable[[], DigestAuthStage | None]
    stream_factories: Callable[[], Iterable[SIPStreamFactory]]
    """The TCP and TLS listeners' factories (connection tables, TLS handshakes)."""
    certificates: Callable[[], Iterable[tuple[str, datetime.datetime]]]
    """``(file, not-after)`` of each TLS certificate served."""
    contacts: Callable[[], int | None]
    """Registered contacts, the last reading (None before the first)."""
    now: Callable[[], float]
    """The reactor's clock (seconds since the epoch)."""


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


ADMISSION_COUNTS = ("rate_limit", "acl", "scanner")


def _step_counts(step: object) -> tuple[str, int] | None:
    """Which shield counter an admission step keeps, and its value (None: not a shield step)."""
    if isinstance(step, RateLimiter):
        return "rate_limit", step.refused
    if isinstance(step, AccessList):
        return "acl", step.denied
    if isinstance(step, ScannerBlock):
        return "scanner", step.dropped
    return None


class ProxyCollector(Collector):
    """Reads :class:`MetricSources` at scrape time (see the module docstring)."""

    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources
        self._steps: tuple[object, ...] = ()
        self._retired = dict.fromkeys(ADMISSION_COUNTS, 0)

    def admission_counts(self) -> dict[str, int]:
        """The admission steps' counters, kept monotonic across reloads: the
        counts of steps a reload replaced (as they ended: the collector kept
        them since the scrape before) are added to the new ones'."""
        live = tuple(self.sources.admission())
        for step in self._steps:
            counted = _step_counts(step)
            if counted is not None and not any(step is other for other in live):
                self._retired[counted[0]] += counted[1]
        self._steps = live
        totals = dict(self._retired)
        for step in live:
            counted = _step_counts(step)
            if counted is not None:
                totals[counted[0]] += counted[1]
        return totals

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        core = s.core
        transactions: TransactionLayer = core.transactions
        requests = CounterMetricFamily("sipshield_requests", "SIP requests received, by method (unknown methods: other) and transport",
                                       labels=("method", "transport"))
        for (method, transport), count in sorted(core.requests_by.counts.items()):
            requests.add_metric((method, transport), count)
        yield requests
        received = CounterMetricFamily("sipshield_responses_received", "SIP responses received from next hops, by status code", labels=("code",))
        for status, count in core.responses_by.items():
            received.add_metric((str(status),), count)
        yield received
        sent = CounterMetricFamily("sipshield_responses_sent", "SIP responses sent (proxied and our own, retransmissions not counted), by status code",
                                   labels=("code",))
        by_status = dict(transactions.sent.items())
        for status, count in core.stateless_sent.items():
            by_status[status] = by_status.get(status, 0) + count
        for status in sorted(by_status):
            sent.add_metric((str(status),), by_status[status])
        yield sent
        counters = core.counters
        yield _counter("sipshield_calls_started", "INVITEs relayed to at least one target (re-INVITEs included)", counters["calls_started"])
        yield _counter("sipshield_calls_answered", "INVITEs answered with a 2xx (re-INVITEs included)", transactions.invites_answered)
        auth = s.auth()
        yield _counter("sipshield_auth_successes", "Credentials verified by the auth stage (digest or bearer)", auth.logins if auth else 0)
        failures = CounterMetricFamily("sipshield_auth_failures", "Credentials refused, by reason", labels=("reason",))
        for reason, count in s.events.auth_failures.items():
            failures.add_metric((reason,), count)
        yield failures
        events = CounterMetricFamily("sipshield_security_events", "Security events emitted, by kind", labels=("kind",))
        for kind, count in s.events.kinds.items():
            events.add_metric((kind,), count)
        yield events
        counts = transactions.counts()
        yield _gauge("sipshield_server_transactions", "Live server transactions", counts["server"])
        yield _gauge("sipshield_client_transactions", "Live client transactions", counts["client"])
        yield _gauge("sipshield_proxy_contexts", "Requests being proxied (response contexts waiting for a final answer)", len(core.contexts))
        contacts = s.contacts()
        if contacts is not None:
            yield _gauge("sipshield_registered_contacts", "Registered contacts in the location store (last reading)", contacts)
        bans = s.bans
        yield _gauge("sipshield_bans_active", "Sources banned now", len(bans.bans()) if bans is not None else 0)
        drops = CounterMetricFamily("sipshield_drops", "Messages dropped without an answer, by reason", labels=("reason",))
        drops.add_metric(("banned",), bans.dropped if bans is not None else 0)
        drops.add_metric(("admission",), counters["admission_drops"])
        drops.add_metric(("amplification",), counters["amplification_drops"])
        drops.add_metric(("stray_response",), counters["stray_responses"])
        yield drops
        yield _counter("sipshield_malformed_messages", "Messages that did not parse (answered 400 when a request, else dropped)", counters["malformed"])
        yield _counter("sipshield_transaction_cap_refusals", "Requests refused with 503 by [limits] max_transactions(_per_source)",
                       counters["transaction_cap_refusals"])
        admission = self.admission_counts()
        yield _counter("sipshield_rate_limit_hits", "Requests over a [ratelimit] rate (503 or dropped)", admission["rate_limit"])
        yield _counter("sipshield_acl_denies", "Requests denied by an [acl] rule or its default", admission["acl"])
        yield _counter("sipshield_scanner_drops", "Requests dropped as a scanner's", admission["scanner"])
        factories = list(s.stream_factories())
        yield _counter("sipshield_tls_handshakes", "TLS handshakes completed", sum(f.tls_handshakes for f in factories))
        yield _counter("sipshield_tls_handshake_failures", "TLS handshakes that failed", sum(f.tls_handshake_failures for f in factories))
        yield _gauge("sipshield_connections", "Open TCP and TLS connections", sum(len(f.connections) for f in factories))
        expiry = GaugeMetricFamily("sipshield_tls_certificate_expiry_seconds", "Seconds until the TLS certificate's notAfter", labels=("certificate",))
        now = s.now()
        for name, not_after in s.certificates():
            expiry.add_metric((name,), not_after.timestamp() - now)
        yield expiry
        latency = core.latency
        histogram = HistogramMetricFamily(
            "sipshield_message_processing_seconds", "Time the proxy core spends on one parsed message, up to its decision or forwarding",
            buckets=latency.cumulative(), sum_value=latency.total,
        )
        yield histogram


def metrics_registry(sources: MetricSources) -> CollectorRegistry:
    """A registry of the service's own: the proxy's collector and the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(sources))
    ProcessCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """``GET /metrics`` in Prometheus' text format; any other path 404."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: metrics are at /metrics\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class _QuietSite(Site):
    """No access-log line per scrape."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class MetricsService(Service):
    """Serves the registry on ``[metrics] listen`` and keeps the readings a
    scrape must not wait for (registered contacts) fresh every ``refresh`` s."""

    name = "metrics"
    log = Logger()

    def __init__(self, config: MetricsConfig, registry: CollectorRegistry, reactor: Any, count_contacts: Callable[[], Any]) -> None:
        self.config = config
        self.registry = registry
        self.reactor = reactor
        self.count_contacts = count_contacts
        self.contacts: int | None = None
        self.port: IListeningPort | None = None
        self._loop: LoopingCall | None = None
        self._count_failing = False

    @property
    def address(self) -> tuple[str, int] | None:
        if self.port is None:
            return None
        host = self.port.getHost()
        return host.host, host.port  # type: ignore[attr-defined]

    def startService(self) -> None:
        super().startService()
        listen = self.config.listen
        if self.port is None:
            # Metrics are for the operator: a busy port costs the scrapes, not the calls.
            self.port = listen_http(self.reactor, listen.interface, listen.port, lambda: _QuietSite(MetricsResource(self.registry)), "metrics", "/metrics")
        # The first reading once the stores are up (the service calls refresh), then one every ``refresh`` s.
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self.reactor
        self._loop.start(self.config.refresh, now=False)

    def refresh(self) -> None:
        """Read the registered contacts again (the store answers with a Deferred)."""
        d = self.count_contacts()
        d.addCallbacks(self._counted, self._count_failed)

    def _counted(self, count: int) -> None:
        self.contacts = count
        self._count_failing = False

    def _count_failed(self, failure: Failure) -> None:
        if not self._count_failing:  # one line per outage, not one per refresh
            self.log.warn("metrics: cannot count registered contacts: {why}", why=failure.getErrorMessage())
        self._count_failing = True

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


class RegistryMetricSource:
    """The alerts' MetricSource (sipshield/ops/_alerts.py) over the service's
    registry: one collection per reading, every ``[[alerts.rules]] interval``
    seconds of a ``metric`` rule, never on the request path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def value(self, name: str, labels: Mapping[str, str]) -> float | None:
        return self.registry.get_sample_value(name, dict(labels))
