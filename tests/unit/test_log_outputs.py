"""[logging]: the RFC 5424 form of log events, the JSON lines file, the
security events' text form and which of them are written line by line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from syslog_support import parse_syslog
from twisted.internet import task
from twisted.logger import Logger, LogLevel, LogPublisher

from sipshield.config import ConfigError, LoggingConfig, parse_config
from sipshield.events import AUTH_FAILURE, SCANNER, LogSecurityEvents, SecurityEvent
from sipshield.ops import LogOutputs, SyslogObserver, format_rfc5424


def security_log_event(**overrides: Any) -> dict[str, Any]:
    """The twisted.logger event LogSecurityEvents writes for one auth failure."""
    published: list[dict[str, Any]] = []
    publisher = LogPublisher(published.append)
    sink = LogSecurityEvents(task.Clock(), Logger(namespace="sipshield.security", observer=publisher))
    fields = dict(kind=AUTH_FAILURE, source="192.0.2.7", transport="UDP", user='al"ice] \\x', reason="wrong password")
    fields.update(overrides)
    sink.emit(SecurityEvent(**fields))
    (event,) = published
    event["log_time"] = 1764777600.25  # 2025-12-03T16:00:00.25Z
    return event


def test_a_security_event_is_an_rfc5424_message_with_its_fields_as_structured_data() -> None:
    message = format_rfc5424(security_log_event(), facility=16, hostname="edge1", app_name="sipshield", procid="4242")
    parsed = parse_syslog(message)
    assert int(parsed["pri"]) == 16 * 8 + 4  # local0, warning
    assert parsed["timestamp"] == "2025-12-03T16:00:00.250000Z"
    assert (parsed["hostname"], parsed["app"], parsed["procid"], parsed["msgid"]) == ("edge1", "sipshield", "4242", "auth-failure")
    assert parsed["params"] == {"kind": "auth-failure", "src": "192.0.2.7", "transport": "UDP", "user": 'al"ice] \\x', "reason": "wrong password"}
    assert parsed["msg"].startswith("security event auth-failure from 192.0.2.7 over UDP (user ")
    assert message.count(b"\n") == 0


def test_an_ordinary_event_has_no_structured_data_and_its_level_sets_the_severity() -> None:
    published: list[dict[str, Any]] = []
    Logger(namespace="sipshield.test", observer=LogPublisher(published.append)).error("disk {what}\nfull", what="is")
    parsed = parse_syslog(format_rfc5424(published[0], facility=4, hostname="h", app_name="a", procid="1"))
    assert int(parsed["pri"]) == 4 * 8 + 3  # auth, error
    assert (parsed["msgid"], parsed["sd"]) == ("-", "-")
    assert parsed["msg"] == "disk is\\nfull"  # one message, one line: a newline cannot forge a second record


def test_the_syslog_observer_drops_events_below_its_level_and_never_raises() -> None:
    sent: list[bytes] = []
    observer = SyslogObserver(sent.append, level=LogLevel.warn, hostname="h")
    log = Logger(namespace="t", observer=observer)
    log.info("quiet")
    log.warn("loud")
    assert [parse_syslog(m)["msg"] for m in sent] == ["loud"]

    def broken(message: bytes) -> None:
        raise OSError("collector gone")

    SyslogObserver(broken, hostname="h")({"log_format": "x", "log_level": LogLevel.warn})  # no exception


def test_auth_failures_are_written_line_by_line_forgeable_kinds_once_per_source() -> None:
    """fail2ban must see every failed login (a proven source's); a kind that
    a forged datagram can cause stays at one line per source a minute."""
    published: list[dict[str, Any]] = []
    sink = LogSecurityEvents(task.Clock(), Logger(namespace="sipshield.security", observer=LogPublisher(published.append)))
    for _ in range(5):
        sink.emit(SecurityEvent(AUTH_FAILURE, "192.0.2.7", "UDP", "alice", "wrong password"))
        sink.emit(SecurityEvent(SCANNER, "192.0.2.8", "UDP", None, "scanner User-Agent"))
    kinds = [e["security_event"] for e in published]
    assert kinds.count(AUTH_FAILURE) == 5
    assert kinds.count(SCANNER) == 1


def test_line_by_line_kinds_still_have_a_budget_per_second() -> None:
    clock = task.Clock()
    published: list[dict[str, Any]] = []
    sink = LogSecurityEvents(clock, Logger(namespace="sipshield.security", observer=LogPublisher(published.append)), every_line_budget=10)
    for n in range(50):
        sink.emit(SecurityEvent(AUTH_FAILURE, f"192.0.2.{n}", "TCP", "alice", "wrong password"))
    assert len(published) == 10
    clock.advance(1.0)
    sink.emit(SecurityEvent(AUTH_FAILURE, "192.0.2.99", "TCP", "alice", "wrong password"))
    assert len(published) == 11 and published[-1]["suppressed"] == 40


def test_the_json_file_gets_every_event_with_the_security_fields(tmp_path: Path) -> None:
    publisher = LogPublisher()
    path = tmp_path / "logs" / "sipshield.json"
    outputs = LogOutputs(LoggingConfig(json_file=path), task.Clock(), publisher)
    outputs.startService()
    sink = LogSecurityEvents(task.Clock(), Logger(namespace="sipshield.security", observer=publisher))
    sink.emit(SecurityEvent(AUTH_FAILURE, "2001:db8::7", "TLS", "bob", "wrong password"))
    Logger(namespace="sipshield.test", observer=publisher).debug("below the level")
    outputs.stopService()
    Logger(namespace="sipshield.test", observer=publisher).warn("after the stop")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 1
    event = lines[0]
    assert (event["security_event"], event["host"], event["transport"], event["user"], event["reason"]) == (
        AUTH_FAILURE, "2001:db8::7", "TLS", "bob", "wrong password")
    assert event["log_namespace"] == "sipshield.security" and event["log_level"]["name"] == "warn"


@pytest.mark.parametrize(("table", "key"), [
    ({"level": "loud"}, "logging.level"),
    ({"json_file": ""}, "logging.json_file"),
    ({"syslog": {"address": "udp:127.0.0.1"}}, "logging.syslog.address"),
    ({"syslog": {"address": "tcp:[::1]:99999"}}, "logging.syslog.address"),
    ({"syslog": {"address": "unix:dev/log"}}, "logging.syslog.address"),
    ({"syslog": {"address": "http://collector"}}, "logging.syslog.address"),
    ({"syslog": {"facility": "local9"}}, "logging.syslog.facility"),
    ({"syslog": {"app_name": "sip shield"}}, "logging.syslog.app_name"),
    ({"syslog": {"adress": "udp:127.0.0.1:514"}}, "logging.syslog: unknown key(s): adress"),
    ({"sislog": {}}, "logging: unknown key(s): sislog"),
])  # fmt: skip
def test_bad_logging_settings_are_config_errors_naming_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"logging": table})
    assert key in str(raised.value)


def test_logging_settings_parse(tmp_path: Path) -> None:
    config = parse_config({"logging": {"level": "warn", "json_file": "log/s.json", "syslog": {"address": "tcp:[::1]:6514", "facility": "auth"}}},
                          base_dir=tmp_path)
    assert config.logging.level == "warn" and config.logging.json_file == tmp_path / "log" / "s.json"
    assert config.logging.syslog is not None and (config.logging.syslog.address, config.logging.syslog.facility) == ("tcp:[::1]:6514", "auth")
    assert parse_config({}).logging == LoggingConfig()
