"""[alerts] rules on a task.Clock: each rule fires once per incident and
resolves once, windows slide on the reactor's clock, flapping stays one
incident, ``for`` holds back a short burst, memory is bounded by the
configuration; notifiers that fail or hang never reach the proxy; the
config errors name their key."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, LogPublisher

from sipshield.config import ConfigError, parse_config
from sipshield.events import AUTH_FAILURE, BAN, SecurityEvent
from sipshield.ops import Alert, AlertEngine
from sipshield.ops._alerts import MAX_IN_FLIGHT, EmailNotifier, LogNotifier


class Recording:
    """A notifier that keeps what it was given."""

    def __init__(self, name: str = "log") -> None:
        self.name = name
        self.alerts: list[Alert] = []

    def notify(self, alert: Alert) -> defer.Deferred[None]:
        self.alerts.append(alert)
        return defer.succeed(None)

    @property
    def states(self) -> list[tuple[str, str]]:
        return [(a.rule, a.state) for a in self.alerts]


def engine(rules: list[dict[str, Any]], notifiers: Mapping[str, Any] | None = None, **kwargs: Any) -> tuple[AlertEngine, Clock, Recording]:
    """A started engine on a Clock, the log notifier a Recording; *notifiers* (NAME -> object) are
    declared as webhooks in the config, for the rules to name as webhook:NAME."""
    clock = Clock()
    webhooks = {name: {"type": "webhook", "url": "http://127.0.0.1:9/"} for name in notifiers or {}}
    config = parse_config({"alerts": {"rules": rules, "notifiers": webhooks}}).alerts
    log = Recording()
    alerts = AlertEngine(config, clock, {"log": log, **{f"webhook:{name}": n for name, n in (notifiers or {}).items()}}, **kwargs)
    alerts.startService()
    return alerts, clock, log


SURGE = {"name": "surge", "kind": "event_rate", "event": "auth-failure", "more_than": 5, "window": 30, "resolve_after": 10}


def failure(source: str = "127.0.0.2", transport: str = "UDP", kind: str = AUTH_FAILURE) -> SecurityEvent:
    return SecurityEvent(kind, source, transport, "alice", "wrong password")


def test_event_rate_fires_once_past_its_threshold_and_resolves_once() -> None:
    alerts, clock, log = engine([SURGE])
    for _ in range(5):
        alerts.emit(failure())
        clock.advance(1)
    assert log.alerts == []  # 5 is not more than 5
    alerts.emit(failure())
    assert log.states == [("surge", "firing")]
    assert log.alerts[0].value == 6 and log.alerts[0].text == "[FIRING] surge: more than 5 auth-failure events in 30 s (now 6)"
    for _ in range(20):  # the surge goes on: no second alert
        alerts.emit(failure())
        clock.advance(1)
    assert log.states == [("surge", "firing")]
    clock.pump([1] * 32)  # at most 5 in the window 25 s after the last, and clear for 10 s: t = 59
    assert log.states == [("surge", "firing")]
    clock.pump([1] * 2)
    assert log.states == [("surge", "firing"), ("surge", "resolved")]
    resolved = log.alerts[1]
    assert resolved.since == log.alerts[0].since == 5 and resolved.at == 59
    clock.pump([1] * 100)
    assert len(log.alerts) == 2


def test_the_window_slides_old_events_do_not_count() -> None:
    alerts, clock, log = engine([SURGE])
    for _ in range(12):  # one every 6 s: at most 5 in any 30 s
        alerts.emit(failure())
        clock.pump([1] * 6)
    assert log.alerts == []


def test_a_flapping_condition_is_one_incident() -> None:
    alerts, clock, log = engine([{**SURGE, "window": 5, "resolve_after": 20}])
    for _ in range(10):  # a burst every 10 s: the condition flips on and off, never clear for 20 s
        for _ in range(6):
            alerts.emit(failure())
        clock.pump([1] * 10)
    assert log.states == [("surge", "firing")]
    clock.pump([1] * 30)
    assert log.states == [("surge", "firing"), ("surge", "resolved")]
    for _ in range(6):  # a new incident later: a new alert
        alerts.emit(failure())
    assert log.states == [("surge", "firing"), ("surge", "resolved"), ("surge", "firing")]


def test_for_holds_back_a_burst_shorter_than_it() -> None:
    alerts, clock, log = engine([{**SURGE, "window": 5, "for": 10}])
    for _ in range(6):
        alerts.emit(failure())
    clock.pump([1] * 20)
    assert log.alerts == []
    for _ in range(15):  # held 10 s and more: fires
        for _ in range(3):
            alerts.emit(failure())
        clock.advance(1)
    assert log.states == [("surge", "firing")]


def test_transport_and_kind_filter_the_events() -> None:
    alerts, clock, log = engine([{**SURGE, "transport": "TLS"}])
    for _ in range(10):
        alerts.emit(failure(transport="UDP"))
        alerts.emit(failure(kind=BAN, transport="TLS"))
    assert log.alerts == []
    for _ in range(6):
        alerts.emit(failure(transport="TLS"))
    assert log.states == [("surge", "firing")]
    assert "over TLS" in log.alerts[0].condition


def test_an_event_rate_keeps_at_most_more_than_plus_one_timestamps() -> None:
    alerts, clock, log = engine([SURGE])
    for index in range(100_000):
        alerts.emit(failure(source=f"10.0.{index // 256 % 256}.{index % 256}"))
    rate = alerts._event_rules[0][0]
    assert len(rate._times) == 6
    assert log.states == [("surge", "firing")]


class Metrics:
    """A MetricSource over a dict the test changes."""

    def __init__(self) -> None:
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def value(self, name: str, labels: Mapping[str, str]) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))


INVITES = ("sipshield_requests_total", (("method", "INVITE"), ("transport", "udp")))


def test_metric_rate_above_threshold_fires_and_resolves() -> None:
    metrics = Metrics()
    rule = {"name": "invite-rate", "kind": "metric", "metric": INVITES[0], "labels": dict(INVITES[1]), "rate": True,
            "above": 200, "window": 30, "interval": 10, "resolve_after": 20}
    alerts, clock, log = engine([rule], metrics=metrics)
    total = 0.0
    for _ in range(6):  # 100/s
        metrics.samples[INVITES] = total
        clock.pump([1] * 10)
        total += 1000
    assert log.alerts == []
    for _ in range(6):  # 500/s
        metrics.samples[INVITES] = total
        clock.pump([1] * 10)
        total += 5000
    assert log.states == [("invite-rate", "firing")]
    assert log.alerts[0].value is not None and log.alerts[0].value > 200
    assert log.alerts[0].condition == 'rate of sipshield_requests_total{method="INVITE",transport="udp"} over 30 s above 200'
    for _ in range(10):  # stopped
        metrics.samples[INVITES] = total
        clock.pump([1] * 10)
    assert log.states == [("invite-rate", "firing"), ("invite-rate", "resolved")]


def test_metric_below_and_a_counter_reset() -> None:
    metrics = Metrics()
    alerts, clock, log = engine([{"name": "contacts", "kind": "metric", "metric": "sipshield_registered_contacts", "below": 10,
                                  "interval": 10, "resolve_after": 0}], metrics=metrics)
    metrics.samples[("sipshield_registered_contacts", ())] = 50
    clock.pump([1] * 30)
    assert log.alerts == []
    metrics.samples[("sipshield_registered_contacts", ())] = 3
    clock.pump([1] * 10)
    assert log.states == [("contacts", "firing")]
    metrics.samples[("sipshield_registered_contacts", ())] = 30
    clock.pump([1] * 10)
    assert log.states == [("contacts", "firing"), ("contacts", "resolved")]


def test_metric_rule_without_a_source_never_fires_and_says_so_once() -> None:
    publisher = LogPublisher()
    seen: list[dict[str, Any]] = []
    publisher.addObserver(seen.append)
    clock = Clock()
    config = parse_config({"alerts": {"rules": [{"name": "m", "kind": "metric", "metric": "x", "above": 0}]}}).alerts
    log = Recording()
    alerts = AlertEngine(config, clock, {"log": log})
    alerts.log = Logger(namespace="sipshield.alerts", observer=publisher)
    alerts.rules[0].condition.log = alerts.log  # type: ignore[attr-defined]
    alerts.startService()
    clock.pump([10] * 10)
    assert log.alerts == []
    assert [e["metric"] for e in seen] == ["x"]


def test_certificate_expiry_fires_below_its_days_and_on_reload() -> None:
    not_after = [40 * 86400.0]
    alerts, clock, log = engine([{"name": "cert", "kind": "certificate_expiry", "below": 14, "resolve_after": 0}],
                                certificate_not_after=lambda: not_after[0])
    clock.advance(25 * 86400)  # 15 days left
    assert log.alerts == []
    clock.advance(2 * 86400)  # 13 days left: the hourly check fires
    assert log.states == [("cert", "firing")]
    assert log.alerts[0].text.startswith("[FIRING] cert: the TLS certificate expires in under 14 days (now 1")
    not_after[0] = clock.seconds() + 365 * 86400  # a new certificate, reloaded
    alerts.check("certificate_expiry")
    assert log.states == [("cert", "firing"), ("cert", "resolved")]


def test_a_failing_or_raising_notifier_is_logged_throttled_and_the_others_still_get_the_alert() -> None:
    class Raising:

        def notify(self, alert: Alert) -> defer.Deferred[None]:
            raise OSError("connection refused")

    class Failing:

        def notify(self, alert: Alert) -> defer.Deferred[None]:
            return defer.fail(OSError("smtp said no"))

    publisher = LogPublisher()
    seen: list[dict[str, Any]] = []
    publisher.addObserver(seen.append)
    alerts, clock, log = engine([{**SURGE, "resolve_after": 0, "window": 1, "notify": ["webhook:broken", "log"]}], {"broken": Raising()})
    alerts._failures._log = Logger(namespace="sipshield.alerts", observer=publisher)
    for _ in range(10):  # ten incidents
        for _ in range(6):
            alerts.emit(failure())
        clock.pump([1] * 3)
    assert [s for _, s in log.states] == ["firing", "resolved"] * 10
    lines = [e for e in seen if "not delivered" in e["log_format"]]
    assert 1 <= len(lines) <= 2  # throttled (one a notifier per 5 minutes), not 20
    assert lines[0]["why"] == "connection refused"
    alerts.notifiers["webhook:broken"] = Failing()
    clock.advance(400)
    for _ in range(6):
        alerts.emit(failure())
    assert any(e.get("why") == "smtp said no" for e in seen)


def test_a_notifier_that_never_answers_holds_a_bounded_number_of_deliveries() -> None:
    class Hanging:
        def __init__(self) -> None:
            self.pending: list[defer.Deferred[None]] = []

        def notify(self, alert: Alert) -> defer.Deferred[None]:
            self.pending.append(defer.Deferred())
            return self.pending[-1]

    hanging = Hanging()
    alerts, clock, log = engine([{**SURGE, "resolve_after": 0, "window": 1, "notify": ["webhook:slow", "log"]}], {"slow": hanging})
    for _ in range(20):
        for _ in range(6):
            alerts.emit(failure())
        clock.pump([1] * 3)
    assert len(log.alerts) == 40
    assert len(hanging.pending) == MAX_IN_FLIGHT
    hanging.pending[0].callback(None)
    for _ in range(6):
        alerts.emit(failure())
    assert len(hanging.pending) == MAX_IN_FLIGHT + 1


def test_stop_stops_the_clock() -> None:
    alerts, clock, log = engine([SURGE])
    assert clock.getDelayedCalls()
    alerts.stopService()
    assert not clock.getDelayedCalls()


def test_log_notifier_writes_stable_fields_in_its_namespace() -> None:
    publisher = LogPublisher()
    seen: list[dict[str, Any]] = []
    publisher.addObserver(seen.append)
    notifier = LogNotifier(Logger(namespace="sipshield.alerts", observer=publisher))
    notifier.notify(Alert("surge", "firing", "more than 5 auth-failure events in 30 s", 6.0, 1_700_000_000.0, 1_700_000_000.0))
    (event,) = seen
    assert event["log_namespace"] == "sipshield.alerts" and event["log_level"].name == "warn"
    assert {k: event[k] for k in ("alert_rule", "alert_state", "alert_value", "alert_since")} == {
        "alert_rule": "surge", "alert_state": "firing", "alert_value": 6.0, "alert_since": "2023-11-14T22:13:20+00:00"}
    assert event["alert_text"] == "[FIRING] surge: more than 5 auth-failure events in 30 s (now 6)"


def test_email_message_headers_hold_one_line_each(tmp_path: Path) -> None:
    config = parse_config({"alerts": {"notifiers": {"sec": {"type": "email", "host": "127.0.0.1", "from": "s@example.com",
                                                            "to": ["a@example.com", "b@example.com"]}}}}).alerts
    notifier = EmailNotifier(config.notifiers[0], Clock())  # type: ignore[arg-type]
    condition = 'rate of x{a="1\\r\\nBcc: evil@example.net"} above 1'
    mail = notifier.message(Alert("r", "firing", condition, 2.0, 0.0, 0.0)).decode()
    headers = mail.split("\n\n", 1)[0]
    assert "\nBcc:" not in headers and "To: a@example.com, b@example.com" in headers
    assert "Subject: sipshield alert: [FIRING] r:" in headers


def test_metric_label_values_with_control_characters_are_escaped_in_the_condition() -> None:
    rule = {"name": "m", "kind": "metric", "metric": "x", "labels": {"a": "1\r\nBcc: evil@example.net"}, "above": 0}
    alerts, _, _ = engine([rule], metrics=Metrics())
    assert "\r" not in alerts.rules[0].condition.condition and "\n" not in alerts.rules[0].condition.condition


@pytest.mark.parametrize(("alerts", "key"), [
    ({"rules": [{"name": "a", "kind": "nope"}]}, "alerts.rules[0].kind"),
    ({"rules": [{"name": "a b", "kind": "event_rate"}]}, "alerts.rules[0].name"),
    ({"rules": [{"name": "a", "kind": "event_rate", "event": "auth-failure"}]}, "alerts.rules[0].more_than"),
    ({"rules": [{"name": "a", "kind": "event_rate", "event": "no-such", "more_than": 1}]}, "alerts.rules[0].event"),
    ({"rules": [{"name": "a", "kind": "event_rate", "event": "ban", "more_than": 1, "transport": "udp"}]}, "alerts.rules[0].transport"),
    ({"rules": [{"name": "a", "kind": "event_rate", "event": "ban", "more_than": 1, "notify": ["webhook:ops"]}]}, "alerts.rules[0].notify"),
    ({"rules": [{"name": "a", "kind": "event_rate", "event": "ban", "more_than": 1, "window": 0}]}, "alerts.rules[0].window"),
    ({"rules": [{"name": "a", "kind": "event_rate", "event": "ban", "more_than": 1, "above": 3}]}, "alerts.rules[0]"),
    ({"rules": [{"name": "a", "kind": "metric", "metric": "x"}]}, "alerts.rules[0].above"),
    ({"rules": [{"name": "a", "kind": "metric", "metric": "x y", "above": 1}]}, "alerts.rules[0].metric"),
    ({"rules": [{"name": "a", "kind": "certificate_expiry"}]}, "alerts.rules[0].below"),
    ({"rules": [{"name": "a", "kind": "certificate_expiry", "below": 14}, {"name": "a", "kind": "certificate_expiry", "below": 7}]},
     "alerts.rules[1].name"),
    ({"notifiers": {"ops": {"type": "slack"}}}, "alerts.notifiers.ops.type"),
    ({"notifiers": {"ops": {"type": "webhook", "url": "ftp://x/"}}}, "alerts.notifiers.ops.url"),
    ({"notifiers": {"ops": {"type": "webhook", "url": "https://x/", "headers": {"X-A": "1\n2"}}}}, "alerts.notifiers.ops.headers.X-A"),
    ({"notifiers": {"ops": {"type": "webhook", "url": "https://x/", "timeout": 0}}}, "alerts.notifiers.ops.timeout"),
    ({"notifiers": {"sec": {"type": "email", "host": "h", "from": "a@b", "to": []}}}, "alerts.notifiers.sec.to"),
    ({"notifiers": {"sec": {"type": "email", "host": "h", "from": "a@b", "to": ["x\n@y"]}}}, "alerts.notifiers.sec.to[0]"),
    ({"notifiers": {"sec": {"type": "email", "host": "h", "from": "a@b", "to": ["c@d"], "username": "u"}}}, "alerts.notifiers.sec.password_file"),
    ({"notifiers": {"sec": {"type": "email", "host": "h", "from": "a@b", "to": ["c@d"], "username": "u", "password_file": "/nonexistent/pw"}}},
     "alerts.notifiers.sec.password_file"),
    ({"rule": []}, "alerts"),
])  # fmt: skip
def test_config_errors_name_the_key(alerts: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"alerts": alerts}, source="s.toml")
    assert raised.value.key == key, str(raised.value)


def test_default_has_no_rules_and_email_password_is_read_from_its_file(tmp_path: Path) -> None:
    assert parse_config({}).alerts.rules == ()
    (tmp_path / "pw").write_text("s3cret\n")
    config = parse_config({"alerts": {"notifiers": {"sec": {"type": "email", "host": "h", "from": "a@b", "to": ["c@d"], "username": "u",
                                                            "password_file": "pw", "starttls": True, "port": 587}}}}, base_dir=tmp_path)
    (notifier,) = config.alerts.notifiers
    assert notifier.password == "s3cret" and "s3cret" not in repr(notifier)  # type: ignore[union-attr]


def test_check_config_posture_names_the_rules_and_notifier_hosts_not_webhook_secrets() -> None:
    config = parse_config({"alerts": {
        "notifiers": {"ops": {"type": "webhook", "url": "https://hooks.example.com/services/T0/B0/s3cret"},
                      "sec": {"type": "email", "host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"]}},
        "rules": [{**SURGE, "notify": ["webhook:ops", "email:sec", "log"]}],
    }})  # fmt: skip
    (line,) = [text for label, text in config.posture() if label == "alerts"]
    assert line == "1 rule(s) (surge), sent to email:sec (via smtp.example.com, to b@example.com), log, webhook:ops (hooks.example.com)"
    assert "s3cret" not in line
    assert "alerts" not in dict(parse_config({}).posture())


def _service(tmp_path: Path, rules: list[dict[str, Any]]) -> tuple[Any, Clock, Recording]:
    from sipshield.service import makeService

    clock = Clock()
    clock.advance(time.time())
    config = parse_config({"server": {"data_dir": str(tmp_path / "data"), "listen": ["tls:0:interface=127.0.0.1"]},
                           "admin": {"enabled": False}, "alerts": {"rules": rules}})
    service = makeService(config, clock)
    log = Recording()
    service.alerts.notifiers["log"] = log
    return service, clock, log


def test_the_service_backs_metric_rules_with_the_source_set_on_it_later(tmp_path: Path) -> None:
    service, clock, log = _service(tmp_path, [{"name": "m", "kind": "metric", "metric": "sipshield_bans_active", "above": 100, "interval": 10}])
    service.alerts.startService()
    clock.pump([10] * 3)
    assert log.alerts == []
    metrics = Metrics()
    metrics.samples[("sipshield_bans_active", ())] = 500
    service.alerts.metrics = metrics  # what the metrics registry's source will do
    clock.pump([10] * 2)
    assert log.states == [("m", "firing")] and log.alerts[0].value == 500
    service.alerts.stopService()


def test_the_service_checks_the_served_certificate_at_start_and_at_tls_reload(tmp_path: Path) -> None:
    from sipshield.transport import generate_self_signed
    from sipshield.transport._tls import SELF_SIGNED_CERT, SELF_SIGNED_KEY

    service, clock, log = _service(tmp_path, [{"name": "cert", "kind": "certificate_expiry", "below": 14, "resolve_after": 0}])
    service.alerts.check("certificate_expiry")
    assert log.alerts == []  # no TLS context yet: no value, no alert
    service._prepare_data_dir()
    files = (service.config.server.data_dir / SELF_SIGNED_CERT, service.config.server.data_dir / SELF_SIGNED_KEY)
    generate_self_signed(*files, ["example.com"], days=10)
    service._prepare_tls()  # serves the 10-day certificate
    service.alerts.startService()
    assert log.states == [("cert", "firing")]
    assert log.alerts[0].value is not None and 9.9 < log.alerts[0].value <= 10
    clock.pump([3600] * 48)  # the hourly checks see fewer days left: no new alert
    assert log.states == [("cert", "firing")]
    generate_self_signed(*files, ["example.com"], days=400)
    service.reload_tls()  # the new certificate is checked at once
    assert log.states == [("cert", "firing"), ("cert", "resolved")]
    assert log.alerts[1].value is not None and log.alerts[1].value > 397  # made 2 days of the Clock ago
    service.alerts.stopService()


def test_every_security_event_kind_can_be_named_by_a_rule() -> None:
    from sipshield import events

    kinds = {value for name, value in vars(events).items() if name.isupper() and isinstance(value, str)}
    assert events.KINDS == kinds
    for kind in sorted(kinds):
        parse_config({"alerts": {"rules": [{**SURGE, "event": kind}]}})


def test_a_reload_with_other_alert_rules_is_refused_whole(tmp_path: Path) -> None:
    service, _, _ = _service(tmp_path, [SURGE])
    changed = parse_config({"server": {"data_dir": str(tmp_path / "data"), "listen": ["tls:0:interface=127.0.0.1"]},
                            "admin": {"enabled": False}, "alerts": {"rules": [{**SURGE, "more_than": 50}]}})
    with pytest.raises(ConfigError, match="changing alerts needs a restart"):
        service.reload(changed)
    assert service.config.alerts.rules[0].more_than == 5
