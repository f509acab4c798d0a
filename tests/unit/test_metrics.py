"""``[metrics]`` through the service makeService builds, scraped through the
real resource: label values stay bounded whatever a peer sends, the counters
read what the core, the shield and the event bus saw, and the example
dashboard and alert rules name only metrics the endpoint serves."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from pipeline_support import PASSWORD, PHONE, Proxy, RecordingFlow, proxy_service
from prometheus_client.parser import text_string_to_metric_families
from twisted.web.test.requesthelper import DummyRequest

from sipshield._tally import SIP_METHODS, LatencyHistogram, StatusTally
from sipshield.config import ConfigError, parse_config
from sipshield.message import parse_message
from sipshield.ops._metrics import MetricsResource

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SOURCE = ("192.0.2.20", 5070)


def scrape(proxy: Proxy, path: bytes = b"/metrics") -> tuple[int, str]:
    """GET *path* through the resource the metrics service serves."""
    request = DummyRequest(path.strip(b"/").split(b"/"))
    request.path = path  # type: ignore[attr-defined]
    body = MetricsResource(proxy.service.metrics_registry).render(request)
    return request.responseCode or 200, body.decode()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(text: str, name: str, **labels: str) -> float:
    return sum(v for got, v in samples(text).get(name, []) if all(got.get(k) == w for k, w in labels.items()))


def send(proxy: Proxy, method: str, source: tuple[str, int] = SOURCE, transport: str = "UDP", to_user: str | None = None,
         user_agent: str = "sipshield-test") -> RecordingFlow:
    uri = "sip:example.com" if to_user is None else f"sip:{to_user}@example.com"
    data = (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {source[0]}:{source[1]};branch=z9hG4bK{secrets.token_hex(8)}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag={secrets.token_hex(4)}\r\nTo: <{uri}>\r\n"
        f"Call-ID: {secrets.token_hex(8)}@m\r\nCSeq: 1 {method}\r\nUser-Agent: {user_agent}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    flow = RecordingFlow(source, transport)
    proxy.core.message_received(parse_message(data), flow)
    return flow


@pytest.fixture
def proxy(tmp_path: Path):
    proxy = proxy_service(tmp_path)
    yield proxy
    proxy.stop()


def test_made_up_methods_count_as_other_and_add_no_label_value(proxy: Proxy) -> None:
    for i in range(300):
        send(proxy, f"XFLOOD{i}")
    send(proxy, "OPTIONS")
    code, text = scrape(proxy)
    assert code == 200
    methods = {labels["method"] for labels, _ in samples(text)["sipshield_requests_total"]}
    assert methods == {"other", "OPTIONS"}
    assert value(text, "sipshield_requests_total", method="other", transport="UDP") == 300
    assert len(proxy.core.requests_by.counts) == 2  # the table itself: two keys, not 301
    assert methods <= SIP_METHODS | {"other"}


def test_status_codes_outside_100_699_are_not_counted() -> None:
    tally = StatusTally()
    for status in (0, 99, 700, 999, -1, 10**6, 180, 180, 699):
        tally.add(status)
    assert list(tally.items()) == [(180, 2), (699, 1)]


def test_latency_buckets_are_cumulative_with_inf_last() -> None:
    histogram = LatencyHistogram((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.005, 3.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert histogram.total == pytest.approx(3.0065)


def test_requests_challenges_logins_and_failed_logins_are_counted(proxy: Proxy) -> None:
    _, before = scrape(proxy)
    assert proxy.send_request("REGISTER", "sip:example.com", from_uri="sip:alice@example.com").status == 401
    wrong = proxy.send_request("REGISTER", "sip:example.com", from_uri="sip:alice@example.com", credentials=("alice", "wrong-password-here"))
    assert wrong is not None and wrong.status == 401
    right = proxy.send_request("REGISTER", "sip:example.com", from_uri="sip:alice@example.com", to="sip:alice@example.com", credentials=("alice", PASSWORD),
                               contact="sip:alice@192.0.2.10:5070")
    assert right is not None and right.status == 200
    proxy.service.metrics.refresh()
    _, after = scrape(proxy)
    assert value(after, "sipshield_requests_total", method="REGISTER", transport="UDP") - value(before, "sipshield_requests_total", method="REGISTER") == 3
    assert value(after, "sipshield_responses_sent_total", code="401") - value(before, "sipshield_responses_sent_total", code="401") == 2
    assert value(after, "sipshield_auth_failures_total", reason="credentials") == 1
    assert value(after, "sipshield_security_events_total", kind="auth-failure") == 1
    assert value(after, "sipshield_auth_successes_total") == 1
    assert value(after, "sipshield_registered_contacts") == 1
    assert value(after, "sipshield_message_processing_seconds_count") == value(before, "sipshield_message_processing_seconds_count") + 3


def test_rate_limit_hits_acl_denies_scanner_drops_and_bans(tmp_path: Path) -> None:
    proxy = proxy_service(
        tmp_path, ratelimit={"methods": {"OPTIONS": {"rate": 0.001, "burst": 2}}},
        acl={"rules": [{"action": "deny", "networks": ["198.51.100.0/24"]}]}, bans={"max_failures": 1},
    )
    try:
        assert [send(proxy, "OPTIONS").statuses() for _ in range(5)] == [[200], [200], [503], [503], [503]]
        assert send(proxy, "OPTIONS", source=("198.51.100.7", 5060)).statuses() == [403]
        scanner = send(proxy, "OPTIONS", source=("192.0.2.79", 5060), user_agent="friendly-scanner")
        assert scanner.sent == []
        # One wrong password bans the phone (max_failures = 1; the pipeline then sends it nothing).
        proxy.send_request("REGISTER", "sip:example.com", from_uri="sip:alice@example.com", credentials=("alice", "wrong-password-here"))
        assert proxy.core.refuse_source(PHONE[0])
        assert not proxy.core.refuse_source("192.0.2.11")
        _, text = scrape(proxy)
        assert value(text, "sipshield_rate_limit_hits_total") == 3
        assert value(text, "sipshield_acl_denies_total") == 1
        assert value(text, "sipshield_scanner_drops_total") == 1
        assert value(text, "sipshield_drops_total", reason="admission") == 1  # the scanner's (the others were answered)
        assert value(text, "sipshield_drops_total", reason="banned") == 2  # the two refuse_source questions above: one yes
        assert value(text, "sipshield_bans_active") == 1
        assert value(text, "sipshield_security_events_total", kind="ban") == 1
        assert value(text, "sipshield_security_events_total", kind="rate-limit") >= 1
    finally:
        proxy.stop()


def test_other_paths_are_404(proxy: Proxy) -> None:
    for path in (b"/", b"/metrics/x", b"/admin", b"/metricsx"):
        code, body = scrape(proxy, path)
        assert code == 404, path
        assert "sipshield_" not in body


def _served(text: str) -> set[str]:
    """Every series name the endpoint declares (a family without samples yet still counts)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


_NAME = re.compile(r"\b((?:sipshield|process)_[a-z0-9_]+)\b")
PROMETHEUS_OWN = {"up"}
"""Series Prometheus makes itself for each target (the alert on a proxy that is down)."""


def _expressions() -> list[tuple[str, str]]:
    dashboard = json.loads((EXAMPLES / "grafana" / "sipshield-dashboard.json").read_text())
    found = [("dashboard: " + panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    found += [(f"dashboard: variable {v['name']}", v["query"]) for v in dashboard["templating"]["list"] if v["type"] == "query"]
    rules = yaml.safe_load((EXAMPLES / "prometheus" / "alerts.yml").read_text())
    found += [("alerts: " + rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]
    return found


def test_the_dashboard_and_the_alerts_name_only_metrics_the_endpoint_serves(proxy: Proxy) -> None:
    proxy.service.metrics.refresh()
    _, text = scrape(proxy)
    served = _served(text)
    expressions = _expressions()
    assert len(expressions) >= 20
    referenced = {name for _, expr in expressions for name in _NAME.findall(expr)}
    assert {"sipshield_auth_failures_total", "sipshield_tls_certificate_expiry_seconds", "process_cpu_seconds_total",
            "process_resident_memory_bytes", "sipshield_message_processing_seconds_bucket"} <= referenced
    for where, expr in expressions:
        for name in _NAME.findall(expr):
            assert name in served, f"{where} names {name}, which the endpoint does not serve"
    alerts = {rule: expr for rule, expr in expressions if rule.startswith("alerts: ")}
    assert set(alerts) == {"alerts: SipshieldFailedLoginSurge", "alerts: SipshieldInviteRateHigh", "alerts: SipshieldCertificateExpiresSoon",
                           "alerts: SipshieldDown"}
    assert any(own + "{" in alerts["alerts: SipshieldDown"] for own in PROMETHEUS_OWN)


def test_metrics_config_keys() -> None:
    config = parse_config({})
    assert config.metrics.enabled and config.metrics.listen.port == 9060 and config.metrics.listen.interface == "127.0.0.1"
    assert not [w for w in config.warnings() if w.startswith("metrics")]
    assert ("metrics", "http://127.0.0.1:9060/metrics") in config.posture()
    exposed = parse_config({"metrics": {"listen": "tcp:9100:interface=0.0.0.0"}})
    assert [w for w in exposed.warnings() if w.startswith("metrics.listen: ")]
    assert ("metrics", "off") in parse_config({"metrics": {"enabled": False}}).posture()
    assert not [w for w in parse_config({"metrics": {"enabled": False, "listen": "tcp:9100:interface=0.0.0.0"}}).warnings() if w.startswith("metrics")]
    for section, key in (({"listen": "udp:9060"}, "metrics.listen"), ({"listen": "tcp:x"}, "metrics.listen"), ({"refresh": 0}, "metrics.refresh"),
                         ({"enabled": "yes"}, "metrics.enabled"), ({"port": 1}, "metrics")):
        with pytest.raises(ConfigError) as raised:
            parse_config({"metrics": section})
        assert key in str(raised.value)


def test_disabled_metrics_serve_nothing(tmp_path: Path) -> None:
    proxy = proxy_service(tmp_path, metrics={"enabled": False})
    try:
        assert proxy.service.metrics is None
        assert "metrics" not in [s.name for s in proxy.service]
    finally:
        proxy.stop()


def test_a_reload_replacing_the_admission_steps_keeps_their_counters_monotonic(tmp_path: Path) -> None:
    proxy = proxy_service(tmp_path, ratelimit={"methods": {"OPTIONS": {"rate": 0.001, "burst": 1}}})
    try:
        for _ in range(3):
            send(proxy, "OPTIONS")
        _, text = scrape(proxy)
        assert value(text, "sipshield_rate_limit_hits_total") == 2
        send(proxy, "OPTIONS")  # counted by the old RateLimiter after the last scrape, before the reload
        service = proxy.service
        new = parse_config({"ratelimit": {"methods": {"OPTIONS": {"rate": 0.001, "burst": 1}, "INFO": {"rate": 1, "burst": 1}}}}).ratelimit
        assert service.reload(replace(service.config, ratelimit=new)) == ["ratelimit"]
        send(proxy, "OPTIONS")  # the new limiter's bucket is the shared one: still empty
        _, text = scrape(proxy)
        assert value(text, "sipshield_rate_limit_hits_total") == 4
    finally:
        proxy.stop()
