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


def test_a_trunk_and_an_allowlisted_source_are_not_limited_per_user(tmp_path: Path) -> None:
    from cert_support import make_ca, make_leaf, write_pem
    from cryptography import x509
    from pipeline_support import RecordingFlow

    ca = make_ca()
    leaf, _ = make_leaf("trunk", [x509.UniformResourceIdentifier("sip:trunk.example.net")], ca)
    write_pem(tmp_path / "ca.pem", ca[0])

    class TrunkFlow(RecordingFlow):
        def peer_certificate(self) -> Any:  # type: ignore[override]
            return leaf

    proxy = proxy_service(
        tmp_path, USERS, ratelimit={"per_source": False, "methods": {}, "per_user": {"rate": 1, "burst": 1}, "allowlist": ["127.0.0.8/32"]},
        tls={"client_ca": str(tmp_path / "ca.pem")},
        auth={"tls": {"trunks": [{"identity": "sip:trunk.example.net", "name": "carrier", "roles": ["trunk"]}]}},
    )
    try:
        from sipshield.message import parse_message

        statuses = []
        for n in range(3):
            data = (
                f"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.7:5061;branch=z9hG4bKtrunk{n}\r\nMax-Forwards: 70\r\n"
                f"From: <sip:+12125550100@trunk.example.net>;tag=t{n}\r\nTo: <sip:bob@example.com>\r\nCall-ID: trunk{n}\r\nCSeq: 1 INVITE\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            flow = TrunkFlow(("127.0.0.7", 5061), "TLS")
            proxy.core.message_received(parse_message(data.encode()), flow)
            statuses.append(flow.statuses()[-1])
        assert statuses == [404] * 3  # authenticated as the trunk, never 503
        assert [call(proxy, source="127.0.0.8") for _ in range(3)] == [404] * 3  # alice, from the allowlist
        assert [call(proxy), call(proxy)] == [404, 503]  # alice from anywhere else
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


def test_the_posture_says_the_limits_and_a_pipeline_without_their_stages() -> None:
    posture = dict(parse_config({}).posture())
    assert posture["rate limits"] == "per source 50/s (burst 100), per source and method: INVITE, MESSAGE, OPTIONS, REGISTER, SUBSCRIBE; per user 20/s (burst 60)"
    assert posture["egress"] == "per user 10 external calls a minute, 4 at once; number prefixes for 0 role(s)"
    assert posture["overload"].endswith("when the reactor is over 0.05 s behind")
    stages = ["sanity", "auth", "options", "rbac", "dialog", "registrar", "location", "routes", "final"]
    posture = dict(parse_config({"pipeline": {"stages": stages}, "limits": {"overload_lag": 0}}).posture())
    assert posture["rate limits"].endswith('per user: none (no "ratelimit" stage in the pipeline)')
    assert posture["egress"].startswith('none (no "egress" stage')
    assert posture["overload"] == "off (never shed on reactor lag)"


def test_a_reload_applies_new_per_user_limits_and_keeps_the_overload_step_first(tmp_path: Path) -> None:
    from dataclasses import replace

    from sipshield.security import OverloadShedding

    proxy, _ = make(tmp_path, per_user={"rate": 1, "burst": 5})
    try:
        assert [call(proxy) for _ in range(2)] == [404, 404]
        service = proxy.service
        ratelimit = replace(service.config.ratelimit, per_user=(1.0, 1.0), allowlist=("127.0.0.8/32",))
        assert service.reload(replace(service.config, ratelimit=ratelimit)) == ["ratelimit"]
        proxy.clock.advance(0.01)  # the next refill caps the tokens carried over in the shared state at the new burst
        assert [call(proxy), call(proxy)] == [404, 503]
        assert [call(proxy, source="127.0.0.8") for _ in range(2)] == [404, 404]  # the new allowlist
        assert isinstance(service.core.admission[0], OverloadShedding) and service.core.admission[0] is service.overload
        assert service.overload.exempt("127.0.0.8", "UDP")
    finally:
        proxy.stop()
