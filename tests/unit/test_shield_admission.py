"""The shield's admission steps through the real service: scanners dropped
by User-Agent (banned only when the source is proven, over TCP/TLS), proven
sources probing many users banned, and token-bucket rate limits per source
and per method with a stateless 503 (or a drop), before the auth stage's
challenge and before any transaction."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import Proxy, RecordingFlow, proxy_service

from sipshield.config import ConfigError, parse_config
from sipshield.events import RATE_LIMIT, SCANNER, SecurityEvent
from sipshield.message import parse_message

SOURCE = ("127.0.0.5", 5070)


class Recorder:
    def __init__(self) -> None:
        self.events: list[SecurityEvent] = []

    def emit(self, event: SecurityEvent) -> None:
        self.events.append(event)


def shielded(tmp_path: Path, **sections: Any) -> tuple[Proxy, Recorder]:
    proxy = proxy_service(tmp_path, **sections)
    recorder = Recorder()
    proxy.service.events.subscribe(recorder)
    return proxy, recorder


def send(proxy: Proxy, method: str = "OPTIONS", *, to_user: str | None = "bob", user_agent: str | None = None,
         source: tuple[str, int] = SOURCE, transport: str = "UDP") -> RecordingFlow:
    """One new out-of-dialog request from *source* (to_user None: to the proxy
    itself); the flow it came in on (what was sent back)."""
    uri = "sip:example.com" if to_user is None else f"sip:{to_user}@example.com"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {f'[{source[0]}]' if ':' in source[0] else source[0]}:{source[1]};branch=z9hG4bK{secrets.token_hex(8)}",
        "Max-Forwards: 70", f"From: <sip:probe@example.com>;tag={secrets.token_hex(4)}", f"To: <{uri}>",
        f"Call-ID: {secrets.token_hex(8)}@x", f"CSeq: 1 {method}",
    ]
    if user_agent is not None:
        lines.append(f"User-Agent: {user_agent}")
    flow = RecordingFlow(source, transport)
    proxy.core.message_received(parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()), flow)
    return flow


@pytest.mark.parametrize("user_agent", ["friendly-scanner", "sipvicious 0.3.4", "VaxSIPUserAgent/3.1", "SIPScan", "sundayddr", "iWar"])
def test_scanner_user_agents_are_dropped_unanswered_and_over_udp_nobody_is_banned(tmp_path: Path, user_agent: str) -> None:
    proxy, recorder = shielded(tmp_path)
    try:
        flow = send(proxy, "REGISTER", user_agent=user_agent)
        assert flow.sent == [] and proxy.core.transactions.counts()["server"] == 0
        assert [e.kind for e in recorder.events] == [SCANNER]
        assert not proxy.core.refuse_source(SOURCE[0])  # a forged UDP source is one datagram away
        assert send(proxy, "REGISTER", user_agent="Linphone/5.1").statuses() == [401]
    finally:
        proxy.stop()


def test_a_scanner_over_tcp_is_banned(tmp_path: Path) -> None:
    proxy, _ = shielded(tmp_path)
    try:
        assert send(proxy, "OPTIONS", user_agent="friendly-scanner", transport="TCP").sent == []
        assert proxy.core.refuse_source(SOURCE[0])
    finally:
        proxy.stop()


def test_a_proven_source_probing_many_users_is_banned_a_udp_one_never(tmp_path: Path) -> None:
    proxy, recorder = shielded(tmp_path, scanners={"max_users": 5})
    try:
        for n in range(5):
            assert send(proxy, "REGISTER", to_user=f"10{n}", source=("127.0.0.7", 5070)).statuses() == [401]
            assert send(proxy, "REGISTER", to_user=f"10{n}", transport="TCP").statuses() == [401]
        send(proxy, "REGISTER", to_user="100", transport="TCP")  # the same users again: no new probe
        assert not proxy.core.refuse_source(SOURCE[0])
        assert send(proxy, "REGISTER", to_user="106", transport="TCP").sent == []
        assert proxy.core.refuse_source(SOURCE[0])
        assert any(e.kind == SCANNER and "6 distinct users" in e.reason for e in recorder.events)
        for n in range(30):
            send(proxy, "REGISTER", to_user=f"20{n}", source=("127.0.0.7", 5070))
        assert not proxy.core.refuse_source("127.0.0.7")
    finally:
        proxy.stop()


def test_over_the_method_rate_a_source_gets_a_stateless_503_then_refills(tmp_path: Path) -> None:
    proxy, recorder = shielded(tmp_path, ratelimit={"methods": {"INVITE": {"rate": 2, "burst": 4}}, "per_source": False})
    try:
        statuses = [send(proxy, "INVITE").statuses() for _ in range(6)]
        assert statuses == [[407]] * 4 + [[503]] * 2
        refused = send(proxy, "INVITE").messages()[-1]
        assert (refused.status, refused.reason, refused.headers.get("Retry-After")) == (503, "Rate Limit Exceeded", "5")
        assert proxy.core.transactions.counts()["server"] == 0  # stateless
        assert send(proxy, "OPTIONS", to_user=None).statuses() == [200]  # another method: its own bucket (none here)
        assert send(proxy, "INVITE", source=("127.0.0.8", 5070)).statuses() == [407]  # another source
        proxy.clock.advance(1.0)
        assert [send(proxy, "INVITE").statuses() for _ in range(3)] == [[407], [407], [503]]
        assert sum(e.kind == RATE_LIMIT for e in recorder.events) == 4
    finally:
        proxy.stop()


def test_the_per_source_rate_covers_every_method_and_drop_sends_nothing(tmp_path: Path) -> None:
    proxy, _ = shielded(tmp_path, ratelimit={"per_source": {"rate": 1, "burst": 3}, "methods": {}, "action": "drop"})
    try:
        answered = [bool(send(proxy, method).sent) for method in ("OPTIONS", "REGISTER", "INVITE", "MESSAGE", "OPTIONS")]
        assert answered == [True, True, True, False, False]
        assert proxy.core.counters["admission_drops"] == 2
    finally:
        proxy.stop()


def test_a_tcp_source_that_keeps_exceeding_is_banned_trusted_sources_are_not_limited(tmp_path: Path) -> None:
    proxy, _ = shielded(
        tmp_path, ratelimit={"per_source": {"rate": 1, "burst": 1}, "methods": {}, "ban_after": 3},
        auth={"trusted_sources": ["127.0.0.9/32"], "trusted_role": "staff"},
    )
    try:
        for _ in range(4):
            send(proxy, "OPTIONS", transport="TCP")
        assert proxy.core.refuse_source(SOURCE[0])
        for _ in range(4):
            send(proxy, "OPTIONS", source=("127.0.0.6", 5070))  # over UDP: refused, never banned
        assert not proxy.core.refuse_source("127.0.0.6")
        trusted = [send(proxy, "OPTIONS", to_user=None, source=("127.0.0.9", 5070), transport="TCP").statuses() for _ in range(10)]
        assert trusted == [[200]] * 10
        # Trusted over TCP only: its UDP requests are limited like anyone's.
        assert [send(proxy, "OPTIONS", to_user=None, source=("127.0.0.9", 5070)).statuses() for _ in range(2)] == [[200], [503]]
    finally:
        proxy.stop()


def test_shield_config_errors_name_the_key() -> None:
    for bad, key in [
        ({"ratelimit": {"action": "reject"}}, "ratelimit.action"),
        ({"ratelimit": {"per_source": {"burst": 3}}}, "ratelimit.per_source.rate"),
        ({"ratelimit": {"methods": {"INVITE": {"rate": 1, "per": 2}}}}, "ratelimit.methods.INVITE"),
        ({"ratelimit": {"allowlist": ["x"]}}, r"ratelimit.allowlist\[0\]"),
        ({"scanners": {"user_agents": [""]}}, "scanners.user_agents"),
    ]:
        with pytest.raises(ConfigError, match=key):
            parse_config(bad)
    config = parse_config({"scanners": {"enabled": False}, "ratelimit": {"enabled": False}})
    assert not config.scanners.enabled and not config.ratelimit.enabled
