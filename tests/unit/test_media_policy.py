"""The SRTP media policy ([media] srtp) through the real service: the
``media`` stage on INVITE, re-INVITE, UPDATE and PRACK offers, its response
filter on provisional and 2xx answers, 488 with a Warning, the events."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import PASSWORD, PHONE, EventRecorder, Proxy, RecordingFlow, proxy_service

from sipshield.config import ConfigError, parse_config
from sipshield.events import SRTP_PLAIN, SRTP_REFUSED
from sipshield.message import Request, Response, parse_message
from sipshield.proxy import endpoints
from sipshield.security import MediaRefusal, srtp_refusal

KEY = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
FP = "sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF"
HEAD = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
PLAIN = HEAD + "m=audio 49170 RTP/AVP 0\r\n"
SDES = HEAD + f"m=audio 49170 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY}\r\n"
DTLS = HEAD + f"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:{FP}\r\na=setup:actpass\r\na=ice-ufrag:F7gI\r\na=candidate:1 1 udp 2130706431 192.0.2.1 9 typ host\r\n"
SDP = "application/sdp"


def make(tmp_path: Path, srtp: str, bob: str = "sip:bob@127.0.0.5:5070", **sections: Any) -> tuple[Proxy, EventRecorder]:
    proxy = proxy_service(tmp_path, media={"srtp": srtp}, **sections)
    recorder = EventRecorder()
    proxy.service.events.subscribe(recorder)
    proxy.register("bob", bob)
    return proxy, recorder


def offer(proxy: Proxy, body: str, content_type: str = SDP, transport: str = "UDP", method: str = "INVITE",
          extra: str = "") -> tuple[RecordingFlow, list[Request]]:
    """*method* with *body* from alice (digest over a nonce issued to her phone) over *transport*."""
    before = len(proxy.relayed(method))
    uri = "sip:bob@example.com"
    lines = [
        f"{method} {uri} SIP/2.0", f"Via: SIP/2.0/{transport} {PHONE[0]}:{PHONE[1]};branch=z9hG4bK{secrets.token_hex(8)};rport",
        "Max-Forwards: 70", "From: <sip:alice@example.com>;tag=a1", f"To: <{uri}>", f"Call-ID: {secrets.token_hex(8)}@media",
        f"CSeq: 1 {method}", f"Contact: <sip:alice@{PHONE[0]}:{PHONE[1]}>",
        f"Proxy-Authorization: {proxy.digest(method, uri, 'alice', PASSWORD, source=PHONE[0])}",
    ]
    if body:
        lines.append(f"Content-Type: {content_type}")
    data = "\r\n".join(lines) + f"\r\n{extra}Content-Length: {len(body.encode())}\r\n\r\n{body}"
    flow = RecordingFlow(PHONE, transport)
    proxy.core.message_received(parse_message(data.encode()), flow)
    return flow, proxy.relayed(method)[before:]


def answer(proxy: Proxy, forwarded: Request, status: int, body: str = "", hop: tuple[str, str, int] | None = None) -> None:
    """The callee answers *forwarded* (with SDP *body*), on the flow it was sent on."""
    response = forwarded.make_response(status, to_tag="callee1")
    response.headers.add("Contact", "<sip:bob@127.0.0.5:5070>")
    if body:
        response.headers.add("Content-Type", SDP)
        response.body = body.encode()
    if hop is None:
        ((hop,),) = [[h for m, h in proxy.dispatcher.sent if m is forwarded]]
    proxy.core.message_received(parse_message(response.serialise()), proxy.dispatcher.flows[hop])


def forwarded_context_gone(proxy: Proxy) -> bool:
    return not proxy.core.contexts


def upstream(flow: RecordingFlow) -> list[Response]:
    return flow.messages()


def test_mandatory_refuses_a_plain_rtp_invite_with_488_and_a_warning(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, "mandatory")
    try:
        flow, relayed = offer(proxy, PLAIN)
        assert relayed == []
        last = upstream(flow)[-1]
        assert (last.status, last.reason) == (488, "Not Acceptable Here")
        assert last.headers.get("Warning") == '302 127.0.0.1:5060 "SRTP required: m=audio uses RTP/AVP"'
        (event,) = recorder.events
        assert (event.kind, event.source, event.transport, event.user) == (SRTP_REFUSED, PHONE[0], "UDP", "alice@example.com")
        assert "m=audio uses RTP/AVP" in event.reason
    finally:
        proxy.stop()


def test_mandatory_refuses_sdes_keys_that_arrived_over_udp_or_tcp(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, "mandatory")
    try:
        for transport in ("UDP", "TCP"):
            flow, relayed = offer(proxy, SDES, transport=transport)
            assert relayed == [] and upstream(flow)[-1].status == 488
            assert f"in clear over {transport}" in (upstream(flow)[-1].headers.get("Warning") or "")
        assert [e.kind for e in recorder.events] == [SRTP_REFUSED, SRTP_REFUSED]
    finally:
        proxy.stop()


def test_mandatory_relays_sdes_over_tls_and_dtls_srtp_over_udp_with_the_body_unchanged(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, "mandatory", bob="sip:bob@127.0.0.5:5071;transport=tls")
    try:
        _, relayed = offer(proxy, SDES, transport="TLS")
        assert len(relayed) == 1 and relayed[0].body == SDES.encode()
        _, relayed = offer(proxy, DTLS)
        assert len(relayed) == 1 and relayed[0].body == DTLS.encode()  # ICE attributes and all
        assert recorder.events == []
    finally:
        proxy.stop()


def test_mandatory_refuses_srtp_without_its_key_and_a_body_it_cannot_read(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, "mandatory")
    try:
        for body, why in ((HEAD + "m=audio 4000 RTP/SAVP 0\r\n", "without a=crypto"), (HEAD + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "without a=fingerprint"),
                          (SDES.replace(KEY, KEY + " UNENCRYPTED_SRTP"), "without a=crypto"),
                          (SDES.replace("AES_CM_128_HMAC_SHA1_80", "NULL_HMAC_SHA1_80"), "without a=crypto"), ("not sdp at all", "cannot be inspected")):
            flow, relayed = offer(proxy, body, transport="TLS")
            assert relayed == [] and why in (upstream(flow)[-1].headers.get("Warning") or ""), body
        flow, relayed = offer(proxy, PLAIN, extra="Content-Encoding: gzip\r\n")
        assert relayed == [] and "Content-Encoding" in (upstream(flow)[-1].headers.get("Warning") or "")
    finally:
        proxy.stop()


def test_declined_streams_and_other_media_types_are_not_checked(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, "mandatory")
    try:
        body = DTLS + "m=video 0 RTP/AVP 31\r\nm=image 4002 udptl t38\r\nm=application 4004 TCP/MSRP *\r\n"
        _, relayed = offer(proxy, body)
        assert len(relayed) == 1
    finally:
        proxy.stop()


def test_every_sdp_part_of_a_multipart_body_is_checked(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, "mandatory")
    try:
        def mixed(sdp: str) -> str:
            return (f"--xyz\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--xyz\r\nContent-Type: application/isup; version=itu-t92+\r\n\r\n"
                    "\x01\x00\r\n--xyz--\r\n")
        flow, relayed = offer(proxy, mixed(PLAIN), 'multipart/mixed;boundary="xyz"')
        assert relayed == [] and upstream(flow)[-1].status == 488
        _, relayed = offer(proxy, mixed(DTLS), "Multipart/Mixed; boundary=xyz")
        assert len(relayed) == 1
        hidden = "--xyz\r\nContent-Type: application/sdp\r\nContent-Transfer-Encoding: base64\r\n\r\ndj0wDQo=\r\n--xyz--\r\n"
        flow, relayed = offer(proxy, hidden, "multipart/mixed; boundary=xyz")
        assert relayed == [] and "Content-Transfer-Encoding" in (upstream(flow)[-1].headers.get("Warning") or "")
    finally:
        proxy.stop()


@pytest.mark.parametrize("method", ["UPDATE", "PRACK"])
def test_update_and_prack_offers_are_checked_too(tmp_path: Path, method: str) -> None:
    proxy, _ = make(tmp_path, "mandatory", bob="sip:bob@127.0.0.5:5070")
    try:
        flow, relayed = offer(proxy, PLAIN, method=method)
        assert relayed == [] and upstream(flow)[-1].status == 488
    finally:
        proxy.stop()


def test_a_re_invite_inside_a_dialog_we_record_routed_is_checked(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, "mandatory")
    try:
        call_id = "dialog@media"
        token = proxy.core.signer.token(call_id, "a1", endpoints(PHONE[0], "127.0.0.5"))

        def reinvite(body: str) -> bytes:
            return (
                f"INVITE sip:bob@127.0.0.5:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
                f"Route: <sip:127.0.0.1:5060;transport=udp;lr;ss={token}>\r\nMax-Forwards: 70\r\n"
                f"From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b1\r\nCall-ID: {call_id}\r\nCSeq: 2 INVITE\r\n"
                f"Contact: <sip:alice@{PHONE[0]}:{PHONE[1]}>\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            ).encode()

        flow = RecordingFlow(PHONE)
        proxy.core.message_received(parse_message(reinvite(DTLS)), flow)
        assert len(proxy.relayed("INVITE")) == 1  # in dialog: no challenge, relayed
        proxy.core.message_received(parse_message(reinvite(PLAIN)), flow)
        assert len(proxy.relayed("INVITE")) == 1 and upstream(flow)[-1].status == 488
    finally:
        proxy.stop()


def test_mandatory_replaces_a_plain_2xx_answer_by_488_and_drops_its_retransmissions(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, "mandatory")
    try:
        flow, (forwarded,) = offer(proxy, DTLS)
        answer(proxy, forwarded, 180)
        answer(proxy, forwarded, 200, PLAIN)
        answer(proxy, forwarded, 200, PLAIN)  # the callee retransmits: it gets no ACK
        statuses = [m.status for m in upstream(flow)]
        assert statuses[-2:] == [180, 488] and 200 not in statuses
        assert upstream(flow)[-1].headers.get("Warning") == '302 127.0.0.1:5060 "SRTP required: m=audio uses RTP/AVP"'
        assert proxy.relayed("ACK") == []
        (event,) = recorder.events
        assert event.kind == SRTP_REFUSED and event.source == "127.0.0.5" and event.reason.startswith("200 to INVITE: ")
        assert forwarded_context_gone(proxy)  # the retransmission above met the muted client transaction alone
        proxy.clock.advance(4)
        answer(proxy, forwarded, 200, PLAIN)
        assert 200 not in [m.status for m in upstream(flow)]
    finally:
        proxy.stop()


def test_mandatory_drops_a_provisional_answer_that_fails_and_relays_one_that_passes(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, "mandatory")
    try:
        flow, (forwarded,) = offer(proxy, DTLS)
        answer(proxy, forwarded, 183, PLAIN)
        answer(proxy, forwarded, 183, DTLS)
        answer(proxy, forwarded, 200, DTLS)
        assert [m.status for m in upstream(flow) if m.status > 100] == [183, 200]
        assert [m.body for m in upstream(flow) if m.status > 100] == [DTLS.encode(), DTLS.encode()]
    finally:
        proxy.stop()


def test_a_late_offer_in_a_2xx_is_checked_and_sdes_is_never_relayed_onto_a_plain_hop(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, "mandatory", bob="sip:bob@127.0.0.5:5071;transport=tls")
    try:
        flow, (forwarded,) = offer(proxy, "")  # no SDP: a late offer comes in the 2xx
        answer(proxy, forwarded, 200, SDES)  # over TLS from the callee, but the caller is on UDP
        assert upstream(flow)[-1].status == 488 and "in clear over UDP" in (upstream(flow)[-1].headers.get("Warning") or "")
        flow, (forwarded,) = offer(proxy, SDES, transport="TLS")
        answer(proxy, forwarded, 200, SDES)  # TLS both ways: relayed
        assert upstream(flow)[-1].status == 200 and upstream(flow)[-1].body == SDES.encode()
    finally:
        proxy.stop()


def test_an_sdes_answer_that_arrives_over_udp_is_refused(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, "mandatory")
    try:
        flow, (forwarded,) = offer(proxy, DTLS, transport="TLS")
        answer(proxy, forwarded, 200, SDES)  # bob is reached over UDP: his key came in clear
        assert upstream(flow)[-1].status == 488 and "in clear over UDP" in (upstream(flow)[-1].headers.get("Warning") or "")
    finally:
        proxy.stop()


def test_an_sdes_offer_that_arrived_over_tls_is_not_relayed_onto_a_udp_hop(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, "mandatory")  # bob registered over UDP
    try:
        flow, relayed = offer(proxy, SDES, transport="TLS")
        assert relayed == []
        last = upstream(flow)[-1]
        assert last.status == 488 and "SRTP keys (a=crypto) in clear over UDP" in (last.headers.get("Warning") or "")
        (event,) = recorder.events
        assert (event.kind, event.source, event.transport) == (SRTP_REFUSED, "127.0.0.5", "UDP") and "not relayed" in event.reason
        proxy.register("bob", "sip:bob@127.0.0.6:5071;transport=tls")  # a second contact, over TLS: that branch goes
        flow, relayed = offer(proxy, SDES, transport="TLS")
        assert [hop for m, hop in proxy.dispatcher.sent if m in relayed] == [("TLS", "127.0.0.6", 5071)]
    finally:
        proxy.stop()


def test_prefer_relays_plain_rtp_both_ways_and_reports_it(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, "prefer")
    try:
        flow, (forwarded,) = offer(proxy, PLAIN)
        answer(proxy, forwarded, 200, PLAIN)
        assert upstream(flow)[-1].status == 200
        assert [e.kind for e in recorder.events] == [SRTP_PLAIN, SRTP_PLAIN]
    finally:
        proxy.stop()


def test_off_reads_no_sdp(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, "off")
    try:
        flow, (forwarded,) = offer(proxy, "garbage")
        answer(proxy, forwarded, 200, "garbage")
        assert upstream(flow)[-1].status == 200 and recorder.events == []
    finally:
        proxy.stop()


def test_the_default_is_prefer_and_the_media_stage_is_in_the_default_pipeline() -> None:
    config = parse_config({})
    assert config.media.srtp == "prefer"
    assert config.stages.index("rbac") < config.stages.index("media") < config.stages.index("dialog")


def test_media_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"media\.srtp: 'required' is not one of off, prefer, mandatory"):
        parse_config({"media": {"srtp": "required"}})
    with pytest.raises(ConfigError, match=r"media: unknown key\(s\): sdes"):
        parse_config({"media": {"sdes": True}})
    with pytest.raises(ConfigError, match=r"media\.srtp: .*needs the \"media\" stage"):
        parse_config({"media": {"srtp": "mandatory"}, "pipeline": {"stages": ["sanity", "auth", "rbac", "dialog", "location", "final"]}})


def test_the_verdict_is_the_same_for_offers_and_answers() -> None:
    request = Request("INVITE", "sip:bob@example.com", [("Content-Type", SDP)], PLAIN.encode())
    response = Response(200, "OK", [("Content-Type", SDP)], PLAIN.encode())
    assert srtp_refusal(request, None) == srtp_refusal(response, None) == MediaRefusal(302, "SRTP required: m=audio uses RTP/AVP")
    hostile = HEAD + 'm=audio 4000 RTP/"AVP\\ 0\r\n'
    refusal = srtp_refusal(Response(200, "OK", [("Content-Type", SDP)], hostile.encode()), None)
    assert refusal is not None and '"' not in refusal.text and "\\" not in refusal.text


# -- the proxy core's side: ResponseFilter as any stage may use it -------------------------------


class FilterStage:
    """A stage that puts *check* on every request's response filters."""

    name = "test-filter"

    def __init__(self, check: Any) -> None:
        self.check = check

    def process(self, context: Any) -> Any:
        from sipshield.proxy import CONTINUE

        context.response_filters += (self.check,)
        return CONTINUE


def with_filter(proxy: Proxy, check: Any) -> None:
    pipeline = proxy.core.pipeline
    stages = list(pipeline.stages)
    stages.insert(pipeline.names.index("dialog"), FilterStage(check))
    pipeline.stages = tuple(stages)


def test_a_filter_that_drops_a_2xx_ends_its_branch_with_502_and_one_that_raises_drops_too(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path, "off")
    try:
        with_filter(proxy, lambda context, response, hop: None if response.status >= 200 else response)
        flow, (forwarded,) = offer(proxy, "")
        answer(proxy, forwarded, 180)
        answer(proxy, forwarded, 200)
        assert [(m.status, m.reason) for m in upstream(flow)][-2:] == [(180, "Ringing"), (502, "Bad Gateway: answer refused")]
    finally:
        proxy.stop()
    proxy, _ = make(tmp_path / "raising", "off")
    try:
        def broken(context: Any, response: Response, hop: Any) -> Response:
            raise RuntimeError("a bug")
        with_filter(proxy, broken)
        flow, (forwarded,) = offer(proxy, "")
        answer(proxy, forwarded, 183)
        answer(proxy, forwarded, 200)
        assert [m.status for m in upstream(flow)] == [100, 502]
    finally:
        proxy.stop()


def test_a_refused_2xx_is_weighed_with_the_other_branches_answers(tmp_path: Path) -> None:
    """Forked to two contacts: one answers plain RTP (refused: 488 on its
    branch), the other DTLS-SRTP; the caller gets the good 200."""
    proxy, _ = make(tmp_path, "mandatory")
    try:
        proxy.register("bob", "sip:bob@127.0.0.6:5070")
        flow, forwarded = offer(proxy, DTLS)
        assert len(forwarded) == 2
        answer(proxy, forwarded[0], 200, PLAIN)
        assert upstream(flow)[-1].status == 100
        answer(proxy, forwarded[1], 200, DTLS)
        assert upstream(flow)[-1].status == 200 and upstream(flow)[-1].body == DTLS.encode()
    finally:
        proxy.stop()


# -- bodies a phone reads differently from us (attack/sdp_probe.py) ----------------------------------

MIXED = "multipart/mixed;boundary=b"


def part(headers: str, sdp: str) -> str:
    return f"--b\r\n{headers}\r\n\r\n{sdp}\r\n"


@pytest.mark.parametrize(("content_type", "body", "extra", "why"), [
    # Two Content-Types: a phone that believes the last one reads plain RTP.
    ("text/plain", PLAIN, "Content-Type: application/sdp\r\n", "more than one Content-Type"),
    ("text/plain", PLAIN, "c: application/sdp\r\n", "more than one Content-Type"),
    # A part's Content-Type twice, or in its compact form (SIP stacks parse part headers as SIP headers).
    (MIXED, part("Content-Type: application/sdp\r\nContent-Type: text/plain", PLAIN) + "--b--\r\n", "", "given twice"),
    (MIXED, part("c: application/sdp", PLAIN) + "--b--\r\n", "", "RTP/AVP"),
    # boundary twice: a reader that takes the first one finds the plain SDP.
    ("multipart/mixed;boundary=a;boundary=b", part("Content-Type: application/sdp", PLAIN).replace("--b", "--a") + "--a--\r\n"
     + part("Content-Type: text/plain", "hi") + "--b--\r\n", "", "given twice"),
    # A part after the close delimiter, for a reader that does not stop there.
    (MIXED, part("Content-Type: text/plain", "hi") + "--b--\r\n" + part("Content-Type: application/sdp", PLAIN) + "--b--\r\n", "",
     "after the close delimiter"),
    # An encoding in a part, under the name a SIP stack would honour.
    (MIXED, part("Content-Type: application/sdp\r\nContent-Encoding: gzip", PLAIN) + "--b--\r\n", "", "cannot be inspected"),
], ids=["two-content-types", "compact-c-and-long", "part-two-content-types", "part-compact-c", "boundary-twice", "part-after-close",
        "part-content-encoding"])
def test_mandatory_refuses_bodies_that_a_phone_may_read_as_other_sdp(tmp_path: Path, content_type: str, body: str, extra: str,
                                                                      why: str) -> None:
    proxy, recorder = make(tmp_path, "mandatory")
    try:
        flow, relayed = offer(proxy, body, content_type, transport="TLS", extra=extra)
        assert relayed == [] and upstream(flow)[-1].status == 488
        assert why in (upstream(flow)[-1].headers.get("Warning") or "")
        assert [e.kind for e in recorder.events] == [SRTP_REFUSED]
    finally:
        proxy.stop()


@pytest.mark.parametrize("suite", ["AES_CM_128_NULL_AUTH", "NULL_HMAC_SHA1_80", "aes_cm_128_null_auth"])
def test_mandatory_refuses_sdes_with_a_null_cipher_or_null_authentication(tmp_path: Path, suite: str) -> None:
    proxy, _ = make(tmp_path, "mandatory")
    try:
        flow, relayed = offer(proxy, SDES.replace("AES_CM_128_HMAC_SHA1_80", suite), transport="TLS")
        assert relayed == [] and "without a=crypto" in (upstream(flow)[-1].headers.get("Warning") or "")
    finally:
        proxy.stop()


def test_a_2xx_of_another_fork_after_the_context_is_gone_is_still_checked(tmp_path: Path) -> None:
    """A forking proxy or PBX beyond the callee answers twice: a good 200, then,
    once our response context is gone, a 200 of another fork (its own To tag)
    with plain RTP on the client transaction in Accepted."""
    proxy, recorder = make(tmp_path, "mandatory")
    try:
        flow, (forwarded,) = offer(proxy, DTLS)
        answer(proxy, forwarded, 200, DTLS)
        assert forwarded_context_gone(proxy) and [m.status for m in upstream(flow)][-1:] == [200]
        ((hop,),) = [[h for m, h in proxy.dispatcher.sent if m is forwarded]]
        for body in (DTLS, PLAIN, DTLS):  # a retransmission passes; the plain fork, and all after it, do not
            other = forwarded.make_response(200, to_tag="fork2")
            other.headers.add("Contact", "<sip:bob2@127.0.0.5:5070>")
            other.headers.add("Content-Type", SDP)
            other.body = body.encode()
            proxy.core.message_received(parse_message(other.serialise()), proxy.dispatcher.flows[hop])
        assert [m.body for m in upstream(flow) if m.status == 200] == [DTLS.encode(), DTLS.encode()]
        assert [e.kind for e in recorder.events] == [SRTP_REFUSED]
    finally:
        proxy.stop()


def test_an_sdp_answer_in_the_ack_of_a_late_offer_is_checked(tmp_path: Path) -> None:
    """INVITE without SDP, the offer in the 200, the answer in the ACK: the
    ACK passes no pipeline (RFC 3261 16.11), so its own check keeps a plain
    RTP answer, or SDES keys that came over UDP, from reaching the callee."""
    proxy, recorder = make(tmp_path, "mandatory")
    try:
        flow, (forwarded,) = offer(proxy, "")
        response = forwarded.make_response(200, to_tag="callee1")
        for value in forwarded.headers.get_all("Record-Route"):
            response.headers.add("Record-Route", value)  # RFC 3261 12.1.1: the UAS copies them
        response.headers.add("Contact", "<sip:bob@127.0.0.5:5070>")
        response.headers.add("Content-Type", SDP)
        response.body = DTLS.encode()
        ((hop,),) = [[h for m, h in proxy.dispatcher.sent if m is forwarded]]
        proxy.core.message_received(parse_message(response.serialise()), proxy.dispatcher.flows[hop])
        (ok,) = [m for m in upstream(flow) if m.status == 200]
        routes = list(reversed(ok.headers.get_values("Record-Route")))
        assert routes

        def ack(body: str) -> None:
            lines = ["ACK sip:bob@127.0.0.5:5070 SIP/2.0", f"Via: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK{secrets.token_hex(8)};rport",
                     "Max-Forwards: 70", f"From: {ok.headers.get('From')}", f"To: {ok.headers.get('To')}", f"Call-ID: {ok.call_id}",
                     "CSeq: 1 ACK", *[f"Route: {r}" for r in routes], "Content-Type: application/sdp"]
            data = "\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            proxy.core.message_received(parse_message(data.encode()), flow)

        for body in (PLAIN, SDES):
            ack(body)
        assert proxy.relayed("ACK") == [] and proxy.core.counters["acks_refused"] == 2
        assert [e.kind for e in recorder.events] == [SRTP_REFUSED, SRTP_REFUSED]
        assert "m=audio uses RTP/AVP" in recorder.events[0].reason and "in clear over UDP" in recorder.events[1].reason
        ack(DTLS)
        assert [m.body for m in proxy.relayed("ACK")] == [DTLS.encode()]
    finally:
        proxy.stop()
