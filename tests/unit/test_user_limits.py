"""Rate limits per authenticated user (the ``ratelimit`` stage, after
``auth``) through the real service: a user's requests are counted whatever
source they come from, over the limit a 503 with Retry-After (or nothing)
and a rate-limit event naming the user; trusted sources are not limited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipeline_support import PASSWORD, EventRecorder, Proxy, proxy_service

from sipshield.config import ConfigError, parse_config
from sipshield.events import RATE_LIMIT

USERS = {"alice": (PASSWORD, ("staff",)), "carol": (PASSWORD, ("staff",))}


def make(tmp_path: Path, **ratelimit: Any) -> tuple[Proxy, EventRecorder]:
    # The source limits off: what is refused here is refused per user.
    proxy = proxy_service(tmp_path, USERS, ratelimit={"per_source": False, "methods": {}, **ratelimit},
                          auth={"trusted_sources": ["127.0.0.9/32"], "trusted_role": "staff"})
    recorder = EventRecorder()
    proxy.service.events.subscribe(recorder)
    return proxy, recorder


def call(proxy: Proxy, user: str = "alice", source: str = "127.0.0.2", method: str = "INVITE") -> int | None:
    answer = proxy.send_request(method, "sip:bob@example.com", from_uri=f"sip:{user}@example.com",
                                credentials=(user, PASSWORD), source=(source, 5070))
    return None if answer is None else answer.status


def test_a_users_requests_are_limited_from_every_source_and_refill(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, per_user={"rate": 1, "burst": 3})
    try:
        # Three sources, one user: one bucket.
        assert [call(proxy, source=f"127.0.0.{n}") for n in (2, 3, 4)] == [404] * 3
        answer = proxy.send_request("INVITE", "sip:bob@example.com", from_uri="sip:alice@example.com",
                                    credentials=("alice", PASSWORD), source=("127.0.0.5", 5070))
        assert answer is not None and (answer.status, answer.reason, answer.headers.get("Retry-After")) == (503, "Rate Limit Exceeded", "5")
        assert call(proxy, "carol") == 404  # another user: another bucket
        (event,) = [e for e in recorder.events if e.kind == RATE_LIMIT]
        assert (event.user, event.source) == ("alice@example.com", "127.0.0.5") and "requests of user" in event.reason
        proxy.clock.advance(1.0)
        assert [call(proxy), call(proxy)] == [404, 503]
    finally:
        proxy.stop()


def test_per_user_method_buckets_and_drop(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, per_user=False, per_user_methods={"INVITE": {"rate": 1, "burst": 2}}, action="drop")
    try:
        assert [call(proxy) for _ in range(3)] == [404, 404, 100]  # dropped: no final answer after the 100 Trying
        assert proxy.core.transactions.counts()["server"] <= 2  # the dropped one's transaction is gone
        assert call(proxy, method="MESSAGE") == 404  # its own (no) bucket
        assert [e.reason for e in recorder.events if e.kind == RATE_LIMIT] == ["over 1 INVITE of user/s (burst 2)"]
    finally:
        proxy.stop()


def test_trusted_sources_and_unauthenticated_requests_are_not_counted_per_user(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, per_user={"rate": 1, "burst": 1})
    try:
        for _ in range(5):
            answer = proxy.send_request("INVITE", "sip:bob@example.com", from_uri="sip:alice@example.com", source=("127.0.0.9", 5070), transport="TCP")
            assert answer is not None and answer.status == 404
        assert call(proxy) == 404
        assert call(proxy) == 503
    finally:
        proxy.stop()


def test_the_per_user_defaults_and_config_errors_name_the_key() -> None:
    limits = parse_config({}).ratelimit
    assert limits.per_user == (20.0, 60.0) and limits.per_user_methods == {}
    assert parse_config({}).stages[:3] == ("sanity", "auth", "ratelimit")
    assert parse_config({"ratelimit": {"per_user": False}}).ratelimit.per_user is None
    with pytest.raises(ConfigError, match=r"ratelimit.per_user: a table"):
        parse_config({"ratelimit": {"per_user": True}})
    with pytest.raises(ConfigError, match=r"ratelimit.per_user_methods.IN-VITE: a SIP method name"):
        parse_config({"ratelimit": {"per_user_methods": {"IN-VITE": {"rate": 1}}}})
    with pytest.raises(ConfigError, match=r"ratelimit.per_user.rate"):
        parse_config({"ratelimit": {"per_user": {"burst": 3}}})
