"""The egress (toll-fraud) stage through the real service: number prefixes
per role for external routes, external calls a minute per user, 403 and a
toll-fraud event, internal calls untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipeline_support import PASSWORD, EventRecorder, Proxy, proxy_service

from sipshield.config import ConfigError, parse_config
from sipshield.events import TOLL_FRAUD

ROUTES = [{"match_domain": "pstn.example.com", "target": "sip:127.0.0.1:5090;transport=udp", "external": True}]
ROLES = {"staff": ["register", "call", "call:external"], "manager": ["register", "call", "call:external"]}


def make(tmp_path: Path, user_roles: tuple[str, ...] = ("staff",), **egress: Any) -> tuple[Proxy, EventRecorder]:
    proxy = proxy_service(tmp_path, {"alice": (PASSWORD, user_roles)}, routes=ROUTES, roles=ROLES, egress=egress)
    recorder = EventRecorder()
    proxy.service.events.subscribe(recorder)
    return proxy, recorder


def dial(proxy: Proxy, number: str) -> tuple[int | None, str | None]:
    before = len(proxy.relayed("INVITE"))
    answer = proxy.send_request("INVITE", f"sip:{number}@pstn.example.com", from_uri="sip:alice@example.com", credentials=("alice", PASSWORD))
    if len(proxy.relayed("INVITE")) > before:
        return 0, "relayed"
    return (None, None) if answer is None else (answer.status, answer.reason)


def test_a_role_may_dial_only_its_allowed_prefixes_and_none_of_its_denied(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, roles={"staff": {"allow": ["+1", "+44"], "deny": ["+1900", "+1976"]}})
    try:
        assert dial(proxy, "+12125551234") == (0, "relayed")
        assert dial(proxy, "+442071234567") == (0, "relayed")
        assert dial(proxy, "+19005551234") == (403, "Forbidden: destination not allowed for your role")
        assert dial(proxy, "%2B19765550000") == (403, "Forbidden: destination not allowed for your role")  # escaped: the same number
        assert dial(proxy, "+88216000000") == (403, "Forbidden: destination not allowed for your role")  # not in allow
        assert [e.kind for e in recorder.events] == [TOLL_FRAUD] * 3
        assert recorder.events[0].user == "alice@example.com" and "+19005551234" in recorder.events[0].reason
    finally:
        proxy.stop()


def test_a_user_with_an_unrestricted_role_too_may_dial_what_any_restricted_role_allows(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, ("staff", "manager"), roles={"staff": {"deny": ["00"]}, "manager": {"allow": ["00"]}})
    try:
        assert dial(proxy, "0044207123") == (0, "relayed")  # manager allows it
    finally:
        proxy.stop()


def test_external_calls_a_minute_per_user_are_capped_and_the_window_slides(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, max_calls_per_minute=2)
    try:
        assert [dial(proxy, f"+1212555000{n}")[0] for n in range(3)] == [0, 0, 403]
        assert dial(proxy, "+12125550009") == (403, "Forbidden: external call limit reached")
        assert recorder.events[-1].kind == TOLL_FRAUD and "over 2 external calls a minute" in recorder.events[-1].reason
        proxy.clock.advance(61)
        assert dial(proxy, "+12125550010") == (0, "relayed")
    finally:
        proxy.stop()


def test_internal_calls_are_not_counted(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, max_calls_per_minute=1)
    try:
        proxy.register("bob", "sip:bob@127.0.0.5:5070")
        for _ in range(3):
            proxy.send_request("INVITE", "sip:bob@example.com", from_uri="sip:alice@example.com", credentials=("alice", PASSWORD))
        assert len(proxy.relayed("INVITE")) == 3
        assert dial(proxy, "+12125550001") == (0, "relayed")
    finally:
        proxy.stop()


def test_egress_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"egress.roles.intern"):
        parse_config({"egress": {"roles": {"intern": {"deny": ["00"]}}}})
    with pytest.raises(ConfigError, match=r"egress.roles.staff: unknown key"):
        parse_config({"egress": {"roles": {"staff": {"block": ["00"]}}}})
    with pytest.raises(ConfigError, match=r"egress.max_calls_per_minute"):
        parse_config({"egress": {"max_calls_per_minute": -1}})
    assert parse_config({}).egress.max_calls_per_minute == 10 and "egress" in parse_config({}).stages
