"""``sipshield explain`` through the real service (``SIPShieldService.explain``,
the walk of sipshield/proxy/_explain.py): each step names the rule that
decides, explaining changes no state (no token taken, no failure counted, no
nonce, no event, nothing sent or stored), and what it says agrees with what
the real pipeline then does with the same request from the same source."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import PASSWORD, EventRecorder, Proxy, proxy_service
from zope.interface.verify import verifyObject

from sipshield.interfaces import IExplainable, IExplainableAdmission
from sipshield.message import parse_message
from sipshield.proxy import CONTINUE

USERS = {"alice": (PASSWORD, ("staff",)), "carol": (PASSWORD, ("boss",))}
ROLES = {"staff": ["register", "call"], "boss": ["register", "call", "call:external"], "edge": ["call"]}
ROUTES = [{"match_user_prefix": "+49", "target": "sip:127.0.0.1:5090;transport=udp", "external": True}]
ACL = {"rules": [{"action": "deny", "networks": ["203.0.113.0/24"], "methods": ["INVITE"]}]}


def make(tmp_path: Path, **sections: Any) -> tuple[Proxy, EventRecorder]:
    defaults: dict[str, Any] = {"acl": ACL, "routes": ROUTES, "roles": ROLES, "egress": {"roles": {"boss": {"deny": ["+49900"]}}, "max_calls_per_minute": 2}}
    proxy = proxy_service(tmp_path, USERS, **{**defaults, **sections})
    recorder = EventRecorder()
    proxy.service.events.subscribe(recorder)
    return proxy, recorder


def explain(proxy: Proxy, line: str, source: str, user: str | None = None, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    found: list[Any] = []
    proxy.service.explain(line, source, user, list(headers)).addBoth(found.append)
    (result,) = found  # the memory stores and the inline pool answer at once
    assert isinstance(result, dict), result
    return result


def decisive(result: dict[str, Any]) -> dict[str, Any]:
    (step,) = [s for s in result["steps"] if s["decides"]]
    assert step is result["steps"][-1]  # the walk stops where it is decided
    return step


def state(proxy: Proxy) -> Any:
    """Everything explaining must leave as it was."""
    service = proxy.service
    shield = service.shield_state
    auth = next(stage for stage in service.pipeline.stages if stage.name == "auth")
    counts = [(s.name, getattr(s, "denied", 0), getattr(s, "dropped", 0), getattr(s, "refused", 0), getattr(s, "shed", 0)) for s in service.core.admission]
    found: list[Any] = []
    service.location.count().addCallback(found.append)
    return (
        [(k, list(v)) for k, v in shield._hits.items()], [(k, list(v)) for k, v in shield._buckets.items()], dict(shield._bans),
        [(k, (c.owner, c.until, c.tag)) for k, c in shield._calls.items()], shield.evicted, dict(service.core.counters), counts,
        len(proxy.dispatcher.sent), found, len(auth.unanswered), auth.logins, service.bans.dropped, service.transactions.server_load(""),
    )  # fmt: skip


def real(proxy: Proxy, line: str, source: tuple[str, int], transport: str = "UDP", user: str | None = None, headers: tuple[str, ...] = ()) -> str:
    """The same request through the real pipeline (with a right digest answer
    for *user*): ``answer STATUS``, ``forward`` or ``drop``."""
    method, ruri, _ = line.split()
    from_uri = f"sip:{user}@example.com" if user else "sip:anonymous@example.com"
    lines = [
        line, f"Via: SIP/2.0/{transport} {source[0]}:{source[1]};branch=z9hG4bK{secrets.token_hex(8)};rport", "Max-Forwards: 70",
        f"From: <{from_uri}>;tag={secrets.token_hex(4)}", f"To: <{from_uri if method == 'REGISTER' else ruri}>", f"Call-ID: {secrets.token_hex(8)}@real", f"CSeq: 1 {method}", *headers,
    ]  # fmt: skip
    if user:
        header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
        lines.append(f"{header}: {proxy.digest(method, ruri, user, PASSWORD, source=source[0])}")
        if method == "REGISTER":
            lines.append(f"Contact: <sip:{user}@{source[0]}:{source[1]}>")
    from pipeline_support import RecordingFlow

    flow = RecordingFlow(source, transport)
    before = len(proxy.dispatcher.sent)
    proxy.core.message_received(parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()), flow)
    if len(proxy.dispatcher.sent) > before:
        return "forward"
    finals = [m for m in flow.messages() if m.status >= 200]
    return f"answer {finals[-1].status}" if finals else "drop"


def expected(step: dict[str, Any]) -> str:
    verdict = step["verdict"]
    if verdict.startswith("forward to"):
        return "forward"
    if verdict == "register":
        return "answer 200"
    return " ".join(verdict.split()[:2])


def test_an_acl_deny_is_named_with_its_rule_and_nothing_is_counted(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path)
    before = state(proxy)
    result = explain(proxy, "INVITE sip:+4930123@example.com SIP/2.0", "udp 203.0.113.5:5060")
    step = decisive(result)
    assert (step["phase"], step["stage"], step["verdict"]) == ("admission", "acl", "answer 403 Forbidden: Not Allowed From This Source")
    assert "rule 0 (deny 203.0.113.0/24 INVITE)" in step["reason"]
    assert [s["stage"] for s in result["steps"]] == ["bans", "overload", "acl"]
    assert state(proxy) == before and recorder.events == []
    assert real(proxy, "INVITE sip:+4930123@example.com SIP/2.0", ("203.0.113.5", 5060)) == "answer 403"
    assert recorder.events and state(proxy) != before  # the real request was counted: the comparison can tell


def test_a_banned_source_is_named_with_its_ban_and_the_ban_counts_no_drop(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path)
    proxy.service.bans.ban("198.51.100.7", "operator: seen in the SIEM", 600, transport="admin")
    recorder.events.clear()
    before = state(proxy)
    result = explain(proxy, "REGISTER sip:example.com SIP/2.0", "tcp 198.51.100.7:5060", user="alice")
    assert [(s["phase"], s["stage"], s["verdict"], s["decides"]) for s in result["steps"]] == [("transport", "bans", "drop", True)]
    assert "198.51.100.7 is banned for 600 s more: operator: seen in the SIEM" in result["steps"][0]["reason"]
    assert result["outcome"].startswith("drop (transport step bans:")
    assert state(proxy) == before and recorder.events == []
    assert proxy.core.refuse_source("198.51.100.7")  # the real check agrees
    other = explain(proxy, "REGISTER sip:example.com SIP/2.0", "udp 198.51.100.8:5060")
    assert other["steps"][0] == {"phase": "transport", "stage": "bans", "verdict": "pass", "reason": "198.51.100.8 is not banned", "decides": False}


def test_a_trusted_source_is_not_challenged_and_acts_with_its_role(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, auth={"trusted_sources": ["10.0.0.0/8"], "trusted_role": "edge"})
    result = explain(proxy, "INVITE sip:bob@example.com SIP/2.0", "tcp 10.1.2.3:5060", user="alice")
    auth = [s for s in result["steps"] if s["stage"] == "auth"]
    assert [s["verdict"] for s in auth] == ["pass", "pass"]
    assert auth[1]["reason"] == "a trusted source ([auth] trusted_sources): not challenged, acting with role edge"  # the user is not assumed
    rbac = next(s for s in result["steps"] if s["stage"] == "rbac")
    assert rbac["verdict"] == "pass" and "a trusted source: needs call; roles edge grant call" in rbac["reason"]
    assert (
        decisive(result)["verdict"] == "answer 404 Not Found" and real(proxy, "INVITE sip:bob@example.com SIP/2.0", ("10.1.2.3", 5060), "TCP") == "answer 404"
    )
    # Over UDP the same network is not trusted (a forged source is one datagram away): challenged.
    udp = decisive(explain(proxy, "INVITE sip:bob@example.com SIP/2.0", "udp 10.1.2.3:5060"))
    assert (udp["stage"], udp["verdict"]) == ("auth", "answer 407 Proxy Authentication Required")


def test_without_a_user_the_auth_stage_challenges_with_the_algorithms_of_the_source_and_issues_no_nonce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, recorder = make(tmp_path, auth={"profiles": [{"name": "legacy", "networks": ["192.0.2.0/24"], "algorithms": ["SHA-256", "MD5"]}]})
    issued: list[str] = []
    issue = proxy.service.nonces.issue
    monkeypatch.setattr(proxy.service.nonces, "issue", lambda realm, source: issued.append(source) or issue(realm, source))
    before = state(proxy)
    step = decisive(explain(proxy, "REGISTER sip:example.com SIP/2.0", "udp 198.51.100.5:5060"))
    assert (step["phase"], step["stage"], step["verdict"]) == ("admission", "auth", "answer 401 Unauthorized")
    assert step["reason"] == "no credentials: challenged in realm example.com with SHA-256, SHA-512-256 (default)"
    legacy = decisive(explain(proxy, "INVITE sip:bob@example.com SIP/2.0", "udp 192.0.2.10:5060"))
    assert legacy["verdict"] == "answer 407 Proxy Authentication Required" and "with SHA-256, MD5 (profile legacy)" in legacy["reason"]
    assert issued == [] and state(proxy) == before and recorder.events == []
    assert real(proxy, "REGISTER sip:example.com SIP/2.0", ("198.51.100.5", 5060)) == "answer 401" and issued == ["198.51.100.5"]


def test_with_a_user_the_roles_come_from_the_user_store_and_rbac_names_the_missing_permission(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path)
    before = state(proxy)
    result = explain(proxy, "INVITE sip:+4930123@example.com SIP/2.0", "udp 198.51.100.5:5060", user="alice")
    auth = [s for s in result["steps"] if s["stage"] == "auth"]
    assert auth[0]["reason"] == "credentials assumed (verified in the pipeline); no challenge"
    assert auth[1]["reason"].startswith("user alice@example.com authenticated (assumed), roles staff (roles from ")
    step = decisive(result)
    assert (step["stage"], step["verdict"]) == ("rbac", "answer 403 Forbidden: missing permission call:external")
    assert "needs call and call:external (an external route would carry it); roles staff grant call, register" in step["reason"]
    assert state(proxy) == before and recorder.events == []
    assert real(proxy, "INVITE sip:+4930123@example.com SIP/2.0", ("198.51.100.5", 5060), user="alice") == "answer 403"
    unknown = explain(proxy, "INVITE sip:bob@example.com SIP/2.0", "udp 198.51.100.5:5060", user="mallory")
    (assumed,) = [s for s in unknown["steps"] if s["stage"] == "auth" and s["phase"] == "pipeline"]
    assert assumed["reason"] == "user mallory@example.com authenticated (assumed), roles none (mallory@example.com not found in the user stores: no roles)"
    assert decisive(unknown)["verdict"] == "answer 403 Forbidden: missing permission call"


def test_egress_reads_the_calls_of_the_minute_without_counting_one(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path)
    line, source = "INVITE sip:+4930123@example.com SIP/2.0", ("198.51.100.5", 5060)
    first = explain(proxy, line, "udp 198.51.100.5:5060", user="carol")
    egress = next(s for s in first["steps"] if s["stage"] == "egress")
    assert egress["reason"] == "+4930123 allowed for roles boss; call 1 of 2 this minute, 0 of 4 up at once"
    assert decisive(first)["verdict"] == "forward to sip:127.0.0.1:5090;transport=udp" and "external" in decisive(first)["reason"]
    assert explain(proxy, line, "udp 198.51.100.5:5060", user="carol") == {**first}  # nothing was counted: the same answer again
    for _ in range(2):
        assert real(proxy, line, source, user="carol") == "forward"
    before = state(proxy)
    recorder.events.clear()
    step = decisive(explain(proxy, line, "udp 198.51.100.5:5060", user="carol"))
    assert (step["stage"], step["verdict"]) == ("egress", "answer 403 Forbidden: external call limit reached")
    assert step["reason"] == "over 2 external calls a minute: this would be call 3"
    denied = decisive(explain(proxy, "INVITE sip:+49900555@example.com SIP/2.0", "udp 198.51.100.5:5060", user="carol"))
    assert denied["verdict"] == "answer 403 Forbidden: destination not allowed for your role" and "+49900555 is not allowed for roles boss" in denied["reason"]
    assert state(proxy) == before and recorder.events == []
    assert real(proxy, line, source, user="carol") == "answer 403"


def test_rate_limit_tokens_are_read_not_taken(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, ratelimit={"per_source": {"rate": 0.01, "burst": 2}, "methods": {}})
    line = "OPTIONS sip:bob@example.com SIP/2.0"
    for _ in range(5):
        step = next(s for s in explain(proxy, line, "udp 198.51.100.5:5060")["steps"] if s["stage"] == "ratelimit")
        assert step == {
            "phase": "admission",
            "stage": "ratelimit",
            "verdict": "pass",
            "reason": "within its limits: requests: 2.0 of 2 tokens left (0.01/s)",
            "decides": False,
        }
    assert recorder.events == []
    assert [real(proxy, line, ("198.51.100.5", 5060)) for _ in range(2)] == ["answer 407", "answer 407"]
    before = state(proxy)
    step = decisive(explain(proxy, line, "udp 198.51.100.5:5060"))
    assert (step["stage"], step["verdict"]) == ("ratelimit", "answer 503 Rate Limit Exceeded")
    assert step["reason"].startswith("over 0.01 requests/s (burst 2): 0.0")
    assert state(proxy) == before
    assert real(proxy, line, ("198.51.100.5", 5060)) == "answer 503"
    bye = next(s for s in explain(proxy, "BYE sip:bob@example.com SIP/2.0", "udp 198.51.100.5:5060")["steps"] if s["stage"] == "ratelimit")
    assert bye["verdict"] == "answer 503 Rate Limit Exceeded"  # every method shares the per-source bucket


def test_a_scanner_user_agent_is_dropped_and_over_tcp_would_be_banned(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path)
    before = state(proxy)
    step = decisive(explain(proxy, "OPTIONS sip:100@example.com SIP/2.0", "tcp 198.51.100.5:5060", headers=("User-Agent: friendly-scanner",)))
    assert (step["stage"], step["verdict"]) == ("scanners", "drop")
    assert step["reason"] == "User-Agent 'friendly-scanner' names a scanner: dropped and bans the source (proven over TCP/TLS)"
    assert state(proxy) == before and recorder.events == [] and not proxy.service.bans.bans()
    assert real(proxy, "OPTIONS sip:100@example.com SIP/2.0", ("198.51.100.5", 5060), "TCP", headers=("User-Agent: friendly-scanner",)) == "drop"
    assert [b.key for b in proxy.service.bans.bans()] == ["198.51.100.5"]


class _Unexplained:
    name = "custom"

    def process(self, context: Any) -> Any:
        return CONTINUE


def test_a_stage_that_cannot_explain_itself_is_listed_and_the_walk_goes_on(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    stages = proxy.service.pipeline.stages
    proxy.service.pipeline.stages = (*stages[:-1], _Unexplained(), stages[-1])
    result = explain(proxy, "INVITE sip:bob@example.com SIP/2.0", "udp 198.51.100.5:5060", user="alice")
    custom = next(s for s in result["steps"] if s["stage"] == "custom")
    assert custom == {
        "phase": "pipeline",
        "stage": "custom",
        "verdict": "not explained",
        "reason": "this step cannot explain itself; it would run here",
        "decides": False,
    }
    assert decisive(result)["stage"] == "final"


def test_a_registered_user_is_forwarded_to_its_contacts(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    proxy.register("bob", "sip:bob@192.0.2.77:5070")
    step = decisive(explain(proxy, "INVITE sip:bob@example.com SIP/2.0", "udp 198.51.100.5:5060", user="alice"))
    assert (step["stage"], step["verdict"], step["reason"]) == (
        "location",
        "forward to sip:bob@192.0.2.77:5070",
        "1 registered contact(s) of sip:bob@example.com",
    )


# Each request, explained and then sent for real from the same source: the decisive step's verdict is what happens.
AGREEMENT = [
    ("INVITE sip:+4930123@example.com SIP/2.0", ("203.0.113.5", 5060), "UDP", None, ()),
    ("INVITE sip:bob@example.com SIP/2.0", ("198.51.100.5", 5060), "UDP", None, ()),
    ("INVITE sip:+4930123@example.com SIP/2.0", ("198.51.100.5", 5060), "UDP", "alice", ()),
    ("INVITE sip:+4930123@example.com SIP/2.0", ("198.51.100.6", 5060), "UDP", "carol", ()),
    ("INVITE sip:+49900123@example.com SIP/2.0", ("198.51.100.6", 5060), "UDP", "carol", ()),
    ("INVITE sip:+4930124@example.com SIP/2.0", ("198.51.100.6", 5060), "UDP", "carol", ()),
    ("INVITE sip:+4930125@example.com SIP/2.0", ("198.51.100.6", 5060), "UDP", "carol", ()),
    ("INVITE sip:bob@example.com SIP/2.0", ("198.51.100.5", 5060), "UDP", "alice", ()),
    ("INVITE sip:bob@elsewhere.example.net SIP/2.0", ("198.51.100.5", 5060), "UDP", "alice", ()),
    ("OPTIONS sip:127.0.0.1:5060 SIP/2.0", ("198.51.100.5", 5060), "UDP", None, ()),
    ("REGISTER sip:example.com SIP/2.0", ("198.51.100.5", 5060), "UDP", "alice", ()),
    ("INVITE sips:bob@example.com SIP/2.0", ("198.51.100.5", 5060), "UDP", None, ()),
    ("INVITE tel:+4930123 SIP/2.0", ("198.51.100.5", 5060), "UDP", None, ()),
    ("MESSAGE sip:bob@example.com SIP/2.0", ("198.51.100.5", 5060), "UDP", "alice", ("Proxy-Require: foo",)),
    ("OPTIONS sip:100@example.com SIP/2.0", ("198.51.100.9", 5060), "TCP", None, ("User-Agent: sipvicious",)),
]


def test_the_explanation_agrees_with_what_the_real_pipeline_then_does(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    seen = set()
    for line, source, transport, user, headers in AGREEMENT:
        result = explain(proxy, line, f"{transport.lower()} {source[0]}:{source[1]}", user, headers)
        step = decisive(result)
        assert real(proxy, line, source, transport, user, headers) == expected(step), (line, user, result["steps"])
        seen.add(step["stage"])
    assert seen >= {"acl", "auth", "rbac", "egress", "routes", "final", "options", "registrar", "sips", "sanity", "scanners"}


def test_bad_input_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    for line, source, why in (
        ("INVITE sip:bob@example.com", "udp 198.51.100.5", "request: 'METHOD URI SIP/2.0'"),
        ("INVITE sip:bob@example.com SIP/3.0", "udp 198.51.100.5", "request: 'METHOD URI SIP/2.0'"),
        ("INVITE sip:bob@example.com\r\nX: y SIP/2.0", "udp 198.51.100.5", "request: one request line"),
        ("INVITE sip:bob@example.com SIP/2.0", "udp 198.51.100.5:99999", "source: port '99999' is not 1-65535"),
        ("INVITE sip:bob@example.com SIP/2.0", "ws 198.51.100.5", "source: transport 'ws' is not one of udp, tcp, tls"),
        ("INVITE sip:bob@example.com SIP/2.0", "udp pbx.example.com:5060", "source: 'pbx.example.com' is not an IP address"),
        ("INVITE sip:bob@example.com SIP/2.0", "udp [2001:db8::1", "source: '[2001:db8::1' is not [IPv6]:PORT"),
        ("INVITE sip:bob@example.com SIP/2.0", "udp [pbx]:5060", "source: 'pbx' is not an IP address"),
        ("CANCEL sip:bob@example.com SIP/2.0", "udp 198.51.100.5", "request: a CANCEL is not admitted"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=f"^{__import__('re').escape(why)}"):
            proxy.service.explain(line, source)
    assert explain(proxy, "INVITE sip:bob@example.com SIP/2.0", "tls [2001:db8::1]:5061")["source"] == "tls [2001:db8::1]:5061"


def test_the_built_in_steps_provide_the_explain_interfaces(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    admission = [step for step in proxy.service.core.admission if hasattr(step, "explain_admission")]
    assert [s.name for s in admission] == ["overload", "acl", "scanners", "ratelimit", "sips", "sanity", "auth", "options"]
    for step in admission:
        verifyObject(IExplainableAdmission, step)
    for stage in proxy.service.pipeline.stages:
        verifyObject(IExplainable, stage)


def test_the_transaction_caps_are_read_from_the_live_load(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, limits={"max_transactions_per_source": 1})
    line, source = "INVITE sip:+4930123@example.com SIP/2.0", ("198.51.100.6", 5060)
    caps = next(s for s in explain(proxy, line, "udp 198.51.100.6:5060", user="carol")["steps"] if s["stage"] == "transaction caps")
    assert caps == {"phase": "admission", "stage": "transaction caps", "verdict": "pass", "decides": False,
                    "reason": "0 live server transactions (at most 100000; 1 per source)"}  # fmt: skip
    assert real(proxy, line, source, user="carol") == "forward"  # its INVITE transaction is live until answered
    before = state(proxy)
    step = decisive(explain(proxy, line, "udp 198.51.100.6:5060", user="carol"))
    assert (step["stage"], step["verdict"]) == ("transaction caps", "answer 503 Service Unavailable")
    assert step["reason"] == "1 live server transactions (at most 100000; 1 per source): over limits.max_transactions_per_source"
    assert state(proxy) == before
    assert real(proxy, line, source, user="carol") == "answer 503"


def test_after_a_reload_the_new_rules_are_the_ones_explained(tmp_path: Path) -> None:
    from dataclasses import replace

    from sipshield.config import parse_config

    proxy, _ = make(tmp_path)
    line = "INVITE sip:bob@example.com SIP/2.0"
    assert decisive(explain(proxy, line, "udp 198.51.100.5:5060"))["stage"] == "auth"
    acl = parse_config({"acl": {"rules": [{"action": "deny", "networks": ["198.51.100.0/24"]}]}}).acl
    assert proxy.service.reload(replace(proxy.service.config, acl=acl)) == ["acl"]
    step = decisive(explain(proxy, line, "udp 198.51.100.5:5060"))
    assert (step["stage"], step["verdict"]) == ("acl", "answer 403 Forbidden: Not Allowed From This Source")
    assert "rule 0 (deny 198.51.100.0/24)" in step["reason"]
    assert real(proxy, line, ("198.51.100.5", 5060)) == "answer 403"
