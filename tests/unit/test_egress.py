"""The egress (toll-fraud) stage through the real service: number prefixes
per role for external routes, external calls a minute per user, 403 and a
toll-fraud event, internal calls untouched."""

from __future__ import annotations

import secrets
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


# -- concurrent external calls per user ---------------------------------------------------

GATEWAY = ("UDP", "127.0.0.1", 5090)


def call_up(proxy: Proxy, number: str) -> Any:
    """alice dials *number*; returns the INVITE as relayed to the gateway (or None if refused)."""
    status, _ = dial(proxy, number)
    return proxy.relayed("INVITE")[-1] if status == 0 else None


def bye(proxy: Proxy, invite: Any, *, from_caller: bool = True, to_tag: str = "callee5090", route: str | None = None,
        source: tuple[str, int] | None = None) -> Any:
    """A BYE of *invite*'s dialog, from the caller (alice's phone, to the
    gateway) or from the gateway (to alice), along our Record-Route; the BYE
    as relayed, or None."""
    from pipeline_support import PHONE, RecordingFlow

    from sipshield.message import parse_message

    caller_tag, call_id = invite.from_.tag, invite.call_id
    route = route or invite.headers.get("Record-Route")
    if from_caller:
        source = source or PHONE
        uri, tags = "sip:gw@127.0.0.1:5090", (caller_tag, to_tag)
    else:
        source = source or ("127.0.0.1", 5090)
        uri, tags = f"sip:alice@{PHONE[0]}:{PHONE[1]}", (to_tag, caller_tag)
    data = (
        f"BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bKbye{secrets.token_hex(4)}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:a@example.com>;tag={tags[0]}\r\nTo: <sip:b@example.com>;tag={tags[1]}\r\nCall-ID: {call_id}\r\nCSeq: 9 BYE\r\n"
        f"Route: {route}\r\nContent-Length: 0\r\n\r\n"
    )
    before = len(proxy.relayed("BYE"))
    proxy.core.message_received(parse_message(data.encode()), RecordingFlow(source))
    return proxy.relayed("BYE")[-1] if len(proxy.relayed("BYE")) > before else None


def answer(proxy: Proxy, request: Any, status: int) -> None:
    ((hop,),) = [(h,) for m, h in proxy.dispatcher.sent if m is request]
    proxy.respond(request, hop, status)


def test_concurrent_external_calls_are_capped_until_a_final_non_2xx_or_the_bye(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, max_calls_per_minute=100, max_concurrent_calls=2)
    try:
        first, second = call_up(proxy, "+12125550001"), call_up(proxy, "+12125550002")
        assert first is not None and second is not None
        assert dial(proxy, "+12125550003") == (403, "Forbidden: too many external calls at once")
        assert recorder.events[-1].kind == TOLL_FRAUD and "over 2 external calls at once" in recorder.events[-1].reason
        answer(proxy, second, 486)  # busy: no call, its slot is free again
        third = call_up(proxy, "+12125550003")
        assert third is not None
        answer(proxy, first, 200)
        answer(proxy, third, 200)
        assert dial(proxy, "+12125550004")[0] == 403  # two calls up
        relayed = bye(proxy, first)
        assert relayed is not None
        assert dial(proxy, "+12125550004")[0] == 403  # the BYE is not answered yet
        answer(proxy, relayed, 200)
        assert call_up(proxy, "+12125550004") is not None  # the BYE's 200 ended the first call
    finally:
        proxy.stop()


def test_a_bye_from_the_callee_ends_the_count_too(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, max_calls_per_minute=100, max_concurrent_calls=1)
    try:
        invite = call_up(proxy, "+12125550001")
        answer(proxy, invite, 200)
        assert dial(proxy, "+12125550002")[0] == 403
        relayed = bye(proxy, invite, from_caller=False)
        assert relayed is not None
        answer(proxy, relayed, 200)
        assert call_up(proxy, "+12125550002") is not None
    finally:
        proxy.stop()


def test_a_forged_or_refused_bye_frees_no_slot(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, max_calls_per_minute=100, max_concurrent_calls=1)
    try:
        invite = call_up(proxy, "+12125550001")
        answer(proxy, invite, 200)
        # The right Call-ID and caller tag, along our route, but another dialog's To tag: relayed, ends nothing.
        wrong_tag = bye(proxy, invite, to_tag="someone-else")
        assert wrong_tag is not None
        answer(proxy, wrong_tag, 200)
        assert dial(proxy, "+12125550002")[0] == 403
        # Without our token on the route: not relayed, nothing freed.
        assert bye(proxy, invite, route="<sip:127.0.0.1:5060;lr>") is None
        assert dial(proxy, "+12125550002")[0] == 403
        # From another source than the dialog's: the token does not verify.
        assert bye(proxy, invite, source=("127.0.0.66", 5060)) is None
        assert dial(proxy, "+12125550002")[0] == 403
        # The right BYE, refused by the gateway (the call goes on): still counted.
        refused = bye(proxy, invite)
        answer(proxy, refused, 500)
        assert dial(proxy, "+12125550002")[0] == 403
    finally:
        proxy.stop()


def test_a_cancelled_call_and_one_answered_by_the_proxy_free_their_slot(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, max_calls_per_minute=100, max_concurrent_calls=1)
    try:
        invite = call_up(proxy, "+12125550001")
        answer(proxy, invite, 180)
        from pipeline_support import PHONE, RecordingFlow

        from sipshield.message import parse_message

        original = [m for m, _ in proxy.dispatcher.sent if m is invite]
        assert original
        via = invite.headers.get_values("Via")[-1]  # alice's Via, as she sent it
        cancel = (
            f"CANCEL {invite.uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {invite.headers.get('From')}\r\n"
            f"To: {invite.headers.get('To')}\r\nCall-ID: {invite.call_id}\r\nCSeq: {invite.cseq.seq} CANCEL\r\nContent-Length: 0\r\n\r\n"
        )
        proxy.core.message_received(parse_message(cancel.encode()), RecordingFlow(PHONE))
        (sent_cancel,) = proxy.relayed("CANCEL")
        answer(proxy, sent_cancel, 200)
        answer(proxy, invite, 487)
        assert call_up(proxy, "+12125550002") is not None
        # A call the pipeline refuses after egress (a pre-loaded Route: the dialog stage's 403) is not counted.
        answer(proxy, proxy.relayed("INVITE")[-1], 486)
        header = "Route: <sip:127.0.0.1:5090;lr>"
        for _ in range(2):
            status = send_with(proxy, "+12125550003", header)
            assert status == 403
        assert call_up(proxy, "+12125550004") is not None
    finally:
        proxy.stop()


def send_with(proxy: Proxy, number: str, extra: str = "", call_id: str | None = None, tag: str | None = None) -> int | None:
    from pipeline_support import PHONE, RecordingFlow

    from sipshield.message import parse_message

    ruri = f"sip:{number}@pstn.example.com"
    data = (
        f"INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK{secrets.token_hex(8)}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag={tag or secrets.token_hex(4)}\r\nTo: <{ruri}>\r\nCall-ID: {call_id or secrets.token_hex(8)}@t\r\n"
        f"CSeq: 1 INVITE\r\nProxy-Authorization: {proxy.digest('INVITE', ruri, 'alice', PASSWORD, source=PHONE[0])}\r\n"
        + (f"{extra}\r\n" if extra else "") + "Content-Length: 0\r\n\r\n"
    )
    flow = RecordingFlow(PHONE)
    proxy.core.message_received(parse_message(data.encode()), flow)
    statuses = [s for s in flow.statuses() if s >= 200]
    return statuses[-1] if statuses else None


def test_one_dialog_id_cannot_carry_two_counted_calls(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, max_calls_per_minute=100, max_concurrent_calls=4)
    try:
        assert send_with(proxy, "+12125550001", call_id="same", tag="t1") is None  # relayed: no final answer yet
        assert send_with(proxy, "+12125550002", call_id="same", tag="t1") == 403  # the same Call-ID and From tag, counted
        assert send_with(proxy, "+12125550002", call_id="same", tag="t2") is None  # another dialog
    finally:
        proxy.stop()


def test_a_lost_bye_frees_the_slot_after_max_call_duration(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, max_calls_per_minute=100, max_concurrent_calls=1, max_call_duration=600)
    try:
        answer(proxy, call_up(proxy, "+12125550001"), 200)
        assert dial(proxy, "+12125550002")[0] == 403
        proxy.clock.advance(601)
        assert call_up(proxy, "+12125550002") is not None
    finally:
        proxy.stop()


def test_concurrent_call_config() -> None:
    egress = parse_config({}).egress
    assert (egress.max_concurrent_calls, egress.max_call_duration) == (4, 4 * 3600.0)
    with pytest.raises(ConfigError, match=r"egress.max_call_duration: 1 is out of range"):
        parse_config({"egress": {"max_call_duration": 1}})
    with pytest.raises(ConfigError, match=r"egress.max_concurrent_calls"):
        parse_config({"egress": {"max_concurrent_calls": "2"}})
