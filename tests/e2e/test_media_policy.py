"""End to end: the SRTP media policy ([media] srtp = "mandatory") on the real
twistd service, with real SDP from SIPp scenarios (and the Python TLS caller
of test_calls, since Debian's SIPp has no TLS):

* plain RTP/AVP offered over UDP: 488 Not Acceptable Here with a Warning;
* SDES (RTP/SAVP + a=crypto) offered over UDP: 488, the keys were in clear;
* a multipart/mixed body whose SDP part is plain RTP: 488;
* DTLS-SRTP (UDP/TLS/RTP/SAVPF + a=fingerprint, ICE attributes) over UDP: a call;
* SDES offered over TLS: relayed to the callee, whose DTLS-SRTP answer comes back;
* a plain RTP answer to a good offer: the caller gets 488, never the 200
  (nor its retransmissions), and the callee, never ACKed, gives up.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import test_calls
from conftest import ephemeral_config, free_udp_port
from test_calls import SIPP_TIMEOUT, StreamUAC, assert_ok, first_message, header_values, messages_in, register, uris_in

pytestmark = pytest.mark.e2e
sipp_runner = test_calls.sipp_runner  # the fixture, shared

MANDATORY = ephemeral_config(extra='[timers]\ntimer_c = 10\n\n[media]\nsrtp = "mandatory"\n')
KEY = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
CRYPTO = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 {KEY}"
FINGERPRINT = "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF"
DTLS = ("-key", "proto", "UDP/TLS/RTP/SAVPF", "-key", "attr", FINGERPRINT)


def keys(proto: str, attr: str) -> tuple[str, ...]:
    return ("-key", "proto", proto, "-key", "attr", attr)


def refused(sipp_runner, server, scenario: str, extra: tuple[str, ...] = ()) -> str:
    """Run a caller that expects 488; the 488 it got."""
    caller = sipp_runner("caller", scenario, port=free_udp_port(), service="bob", remote=server.addresses["udp"], extra=extra).wait()
    assert_ok(server, caller)
    invite, ack = first_message(caller.messages, "sent", "INVITE "), first_message(caller.messages, "sent", "ACK ")
    assert header_values(invite, "Via") == header_values(ack, "Via"), ack  # the 488's ACK ends the proxy's transaction
    return first_message(caller.messages, "received", "SIP/2.0 488")


def start_callee(sipp_runner, server, extra: tuple[str, ...]):
    port = free_udp_port()
    register(sipp_runner, server, "bob", port)
    callee = sipp_runner("callee", "uas_answer_sdp.xml", port=port, service="bob", timeout=SIPP_TIMEOUT + 10, extra=extra)
    callee.wait_listening(port)
    return callee


def test_plain_rtp_offer_over_udp_gets_488_with_a_warning(start_server, sipp_runner) -> None:
    server = start_server(MANDATORY)
    answer = refused(sipp_runner, server, "uac_sdp_refused.xml", keys("RTP/AVP", "a=sendrecv"))
    host, port = server.addresses["udp"]
    assert header_values(answer, "Warning") == [f'302 {host}:{port} "SRTP required: m=audio uses RTP/AVP"'], answer
    server.wait_for(r"security event srtp-refused from 127\.0\.0\.1 over UDP .*INVITE: SRTP required: m=audio uses RTP/AVP")


def test_sdes_offer_over_udp_gets_488_its_keys_travelled_in_clear(start_server, sipp_runner) -> None:
    server = start_server(MANDATORY)
    answer = refused(sipp_runner, server, "uac_sdp_refused.xml", keys("RTP/SAVP", CRYPTO))
    (warning,) = header_values(answer, "Warning")
    assert warning.startswith("399 ") and "SRTP keys (a=crypto) in clear over UDP" in warning, answer


def test_a_multipart_body_with_a_plain_rtp_sdp_part_gets_488(start_server, sipp_runner) -> None:
    server = start_server(MANDATORY)
    answer = refused(sipp_runner, server, "uac_multipart_refused.xml")
    assert "SRTP required: m=audio uses RTP/AVP" in header_values(answer, "Warning")[0]


def test_dtls_srtp_over_udp_makes_a_call(start_server, sipp_runner) -> None:
    server = start_server(MANDATORY)
    callee = start_callee(sipp_runner, server, DTLS)
    caller = sipp_runner("caller", "uac_call_sdp.xml", port=free_udp_port(), service="bob", remote=server.addresses["udp"], extra=DTLS).wait()
    uas = callee.wait()
    assert_ok(server, caller, uas)
    invite = first_message(uas.messages, "received", "INVITE ")
    assert "m=audio" in invite and "UDP/TLS/RTP/SAVPF" in invite and FINGERPRINT in invite  # the body as the caller sent it
    assert "srtp-refused" not in server.log


def test_a_plain_rtp_answer_is_replaced_by_488_and_its_retransmissions_never_reach_the_caller(start_server, sipp_runner) -> None:
    server = start_server(MANDATORY)
    callee = start_callee(sipp_runner, server, keys("RTP/AVP", "a=sendrecv"))
    answer = refused(sipp_runner, server, "uac_sdp_refused.xml", DTLS)
    assert "SRTP required: m=audio uses RTP/AVP" in header_values(answer, "Warning")[0]
    uas = callee.wait()
    assert_ok(server, uas)
    sent_200 = [m for m in messages_in(uas.messages, "sent") if m.startswith("SIP/2.0 200")]
    assert len(sent_200) >= 2, uas.describe()  # the callee retransmitted its 200, never ACKed
    assert not [m for m in messages_in(uas.messages, "received") if m.startswith("ACK ")]
    server.wait_for(r"security event srtp-refused from 127\.0\.0\.1 over UDP .*200 to INVITE: SRTP required")


def test_sdes_offer_over_tls_is_relayed_and_a_dtls_answer_comes_back(start_server, sipp_runner, tmp_path: Path) -> None:
    server = start_server(MANDATORY)
    callee = start_callee(sipp_runner, server, DTLS)
    host, port = server.addresses["tls"]
    uac = StreamUAC(host, port, tmp_path / "data" / "tls-selfsigned.pem")
    try:
        me = f"{uac.local[0]}:{uac.local[1]}"
        sdp = f"v=0\no=caller 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 6000 RTP/SAVP 0\n{CRYPTO}\n"
        common = (f'From: "caller" <sip:caller@example.com>;tag=tlssdes\nCall-ID: tls-sdes-{time.time_ns()}\n'
                  f"Contact: <sip:caller@{me};transport=tls>\nMax-Forwards: 70\n")
        uac.send(f"INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlssdes;rport\n{common}"
                 f"To: <sip:bob@example.com>\nCSeq: 1 INVITE\nContent-Type: application/sdp\nContent-Length: {len(sdp.replace(chr(10), chr(13) + chr(10)))}\n\n{sdp}")
        ok = uac.response("INVITE", time.monotonic() + 15)
        assert ok.startswith("SIP/2.0 200"), ok + server.log[-4000:]
        assert "UDP/TLS/RTP/SAVPF" in ok and FINGERPRINT in ok
        to = header_values(ok, "To")[0]
        target = uris_in(header_values(ok, "Contact"))[0]
        route = "Route: " + ", ".join(f"<{u}>" for u in reversed(uris_in(header_values(ok, "Record-Route")))) + "\n"
        uac.send(f"ACK {target} SIP/2.0\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlssdesack;rport\n{route}{common}To: {to}\nCSeq: 1 ACK\nContent-Length: 0\n\n")
        uac.send(f"BYE {target} SIP/2.0\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlssdesbye;rport\n{route}{common}To: {to}\nCSeq: 2 BYE\nContent-Length: 0\n\n")
        assert uac.response("BYE", time.monotonic() + 15).startswith("SIP/2.0 200")
    finally:
        uac.close()
    uas = callee.wait()
    assert_ok(server, uas)
    invite = first_message(uas.messages, "received", "INVITE ")
    assert CRYPTO in invite  # the SDES offer went through unchanged
