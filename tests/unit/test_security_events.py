"""Security events through the real service: a refused login is one
``auth-failure`` event on the service's sink (the default one writes a
twisted.logger event with stable fields), a successful one is none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import Proxy, proxy_service
from twisted.internet.task import Clock
from twisted.logger import Logger

from sipshield.events import AUTH_FAILURE, SCANNER, LogSecurityEvents, SecurityEvent

SOURCE = ("127.0.0.2", 40000)


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Proxy]:
    service = proxy_service(tmp_path, {"alice": ("secret", ["staff"]), "bob": ("b-secret", ["staff"])})
    yield service
    service.stop()


def fields(event: dict[str, Any]) -> tuple[Any, ...]:
    return event["security_event"], event["host"], event["transport"], event["user"], event["log_namespace"]


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
@pytest.mark.parametrize(("user", "password"), [("alice", "WRONG"), ("mallory", "secret")], ids=["wrong-password", "unknown-user"])
def test_refused_login_is_one_auth_failure_event(svc: Proxy, security_log: list[dict[str, Any]], transport: str, user: str, password: str) -> None:
    answer = svc.send_request("INVITE", "sip:bob@example.com", from_uri=f"sip:{user}@example.com", credentials=(user, password), source=SOURCE, transport=transport)
    assert answer is not None and answer.status == 407
    assert [fields(e) for e in security_log] == [(AUTH_FAILURE, SOURCE[0], transport, user, "sipshield.security")]


def test_register_with_a_wrong_password_is_an_auth_failure_event(svc: Proxy, security_log: list[dict[str, Any]]) -> None:
    answer = svc.send_request("REGISTER", "sip:example.com", from_uri="sip:alice@example.com", to="sip:alice@example.com",
                              credentials=("alice", "WRONG"), source=SOURCE, contact="sip:alice@127.0.0.2:40000")
    assert answer is not None and answer.status == 401
    assert [fields(e) for e in security_log] == [(AUTH_FAILURE, SOURCE[0], "UDP", "alice", "sipshield.security")]


def test_right_password_is_no_event(svc: Proxy, security_log: list[dict[str, Any]]) -> None:
    answer = svc.send_request("REGISTER", "sip:example.com", from_uri="sip:alice@example.com", to="sip:alice@example.com",
                      credentials=("alice", "secret"), source=SOURCE, contact="sip:alice@127.0.0.2:40000")
    assert answer is not None and answer.status == 200
    svc.send_request("REGISTER", "sip:example.com", from_uri="sip:bob@example.com", to="sip:bob@example.com",
             credentials=("bob", "b-secret"), source=("127.0.0.3", 40000), contact="sip:bob@127.0.0.3:40000")
    svc.send_request("INVITE", "sip:bob@example.com", from_uri="sip:alice@example.com", credentials=("alice", "secret"), source=SOURCE)
    assert len(svc.relayed("INVITE")) == 1
    assert security_log == []


def test_a_challenge_without_credentials_is_no_event(svc: Proxy, security_log: list[dict[str, Any]]) -> None:
    answer = svc.send_request("INVITE", "sip:bob@example.com", from_uri="sip:alice@example.com", source=SOURCE)
    assert answer is not None and answer.status == 407
    assert security_log == []


def test_default_sink_logs_one_line_per_source_and_kind_per_interval() -> None:
    """For the kinds a forged datagram can cause (auth failures are written line by line: test_log_outputs)."""
    lines: list[dict[str, Any]] = []
    clock = Clock()
    sink = LogSecurityEvents(clock, Logger(observer=lines.append))
    for source in ("192.0.2.1", "192.0.2.1", "192.0.2.2"):
        sink.emit(SecurityEvent(SCANNER, source, "UDP", "alice", "credentials refused"))
    assert [(e["host"], e["user"], e["reason"]) for e in lines] == [("192.0.2.1", "alice", "credentials refused"), ("192.0.2.2", "alice", "credentials refused")]
    assert lines[1]["suppressed"] == 1  # the repeat from 192.0.2.1, counted in the next line let through
    clock.advance(61)
    sink.emit(SecurityEvent(SCANNER, "192.0.2.1", "UDP", "alice", "credentials refused"))
    assert len(lines) == 3 and lines[-1]["host"] == "192.0.2.1"
