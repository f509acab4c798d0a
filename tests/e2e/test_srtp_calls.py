"""End to end: the SRTP media policy ([media] srtp = "mandatory") on the real
twistd service, with real SDP from SIPp scenarios (and the Python TLS caller
of test_calls, since Debian's SIPp has no TLS):

* plain RTP/AVP offered over UDP: 488 Not Acceptable Here with a Warning;
* SDES (RTP/SAVP + a=crypto) offered over UDP: 488, the keys were in clear;
* a multipart/mixed body whose SDP part is plain RTP: 488;
* DTLS-SRTP (UDP/TLS/RTP/SAVPF + a=fingerprint, ICE attributes) over UDP: a call;
* SDES over TLS from caller to callee (both TLS): a call; the same offer to a callee
  reached over UDP: 488, the keys are never put on a plain hop;
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


def start_callee(sipp_runner, server, extra: tuple[str, ...], user: str = "bob"):
    port = free_udp_port()
    register(sipp_runner, server, user, port)
    callee = sipp_runner("callee", "uas_answer_sdp.xml", port=port, service=user, timeout=SIPP_TIMEOUT + 10, extra=extra)
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


def answer_to(request: str, status: str, to_tag: str, contact: str, sdp: str = "") -> str:
    """A UAS's response to *request* (Via, From, To with *to_tag* unless it has a tag, Call-ID, CSeq, Record-Route copied), LF line ends."""
    lines = [f"SIP/2.0 {status}"]
    lines += [f"Via: {v}" for v in header_values(request, "Via")]
    to = header_values(request, "To")[0]
    lines += [f"From: {header_values(request, 'From')[0]}", f"To: {to}" if ";tag=" in to else f"To: {to};tag={to_tag}"]
    lines += [f"Call-ID: {header_values(request, 'Call-ID')[0]}", f"CSeq: {header_values(request, 'CSeq')[0]}"]
    lines += [f"Record-Route: {v}" for v in header_values(request, "Record-Route")]
    lines.append(f"Contact: {contact}")
    if sdp:
        lines.append("Content-Type: application/sdp")
    return "\n".join(lines) + f"\nContent-Length: {len(sdp.replace(chr(10), chr(13) + chr(10)))}\n\n{sdp}"


def sdes_sdp(who: str, port: int) -> str:
    return f"v=0\no={who} 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio {port} RTP/SAVP 0\n{CRYPTO}\n"


def test_sdes_over_tls_end_to_end_makes_a_call_and_an_sdes_offer_is_not_relayed_onto_udp(start_server, sipp_runner, tmp_path: Path) -> None:
    """Caller and callee both on TLS (Python ssl clients: Debian's SIPp has no
    TLS), SDES both ways: the call goes through, keys never on a plain hop.
    The same offer to a callee registered over UDP (SIPp) gets 488."""
    server = start_server(MANDATORY)
    host, port = server.addresses["tls"]
    ca = tmp_path / "data" / "tls-selfsigned.pem"
    callee, caller = StreamUAC(host, port, ca), StreamUAC(host, port, ca)
    try:
        bob = f"{callee.local[0]}:{callee.local[1]}"
        contact = f"<sip:bob@{bob};transport=tls>"
        callee.send(f"REGISTER sip:example.com SIP/2.0\nVia: SIP/2.0/TLS {bob};branch=z9hG4bKtlsreg;rport\nMax-Forwards: 70\n"
                    f"From: <sip:bob@example.com>;tag=bobreg\nTo: <sip:bob@example.com>\nCall-ID: tls-reg-{time.time_ns()}\n"
                    f"CSeq: 1 REGISTER\nContact: {contact}\nExpires: 300\nContent-Length: 0\n\n")
        registered = callee.response("REGISTER", time.monotonic() + 10)
        assert registered.startswith("SIP/2.0 200"), registered + server.log[-4000:]

        me = f"{caller.local[0]}:{caller.local[1]}"
        offer = sdes_sdp("caller", 6000)
        common = (f'From: "caller" <sip:caller@example.com>;tag=tlssdes\nCall-ID: tls-sdes-{time.time_ns()}\n'
                  f"Contact: <sip:caller@{me};transport=tls>\nMax-Forwards: 70\n")
        caller.send(f"INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlssdes;rport\n{common}"
                    f"To: <sip:bob@example.com>\nCSeq: 1 INVITE\nContent-Type: application/sdp\n"
                    f"Content-Length: {len(offer.replace(chr(10), chr(13) + chr(10)))}\n\n{offer}")
        invite = callee.read(time.monotonic() + 10)
        assert invite.startswith("INVITE ") and CRYPTO in invite, invite  # relayed over TLS, the body unchanged
        callee.send(answer_to(invite, "200 OK", "bobtls", contact, sdes_sdp("callee", 7000)))
        ok = caller.response("INVITE", time.monotonic() + 10)
        assert ok.startswith("SIP/2.0 200") and CRYPTO in ok, ok + server.log[-4000:]
        to = header_values(ok, "To")[0]
        target = uris_in(header_values(ok, "Contact"))[0]
        route = "Route: " + ", ".join(f"<{u}>" for u in reversed(uris_in(header_values(ok, "Record-Route")))) + "\n"
        caller.send(f"ACK {target} SIP/2.0\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlssdesack;rport\n{route}{common}To: {to}\nCSeq: 1 ACK\nContent-Length: 0\n\n")
        assert callee.read(time.monotonic() + 10).startswith("ACK ")
        caller.send(f"BYE {target} SIP/2.0\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlssdesbye;rport\n{route}{common}To: {to}\nCSeq: 2 BYE\nContent-Length: 0\n\n")
        bye = callee.read(time.monotonic() + 10)
        assert bye.startswith("BYE "), bye
        callee.send(answer_to(bye, "200 OK", "bobtls", contact))
        assert caller.response("BYE", time.monotonic() + 10).startswith("SIP/2.0 200")
    finally:
        caller.close()
        callee.close()
    assert "srtp-refused" not in server.log and "Traceback" not in server.log

    # carol, registered over UDP from SIPp
    udp_callee = start_callee(sipp_runner, server, DTLS, user="carol")
    uac = StreamUAC(host, port, ca)
    try:
        me = f"{uac.local[0]}:{uac.local[1]}"
        offer = sdes_sdp("caller", 6002)
        uac.send(f"INVITE sip:carol@example.com SIP/2.0\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlssdes2;rport\n"
                 f'From: "caller" <sip:caller@example.com>;tag=tlssdes2\nCall-ID: tls-sdes2-{time.time_ns()}\n'
                 f"Contact: <sip:caller@{me};transport=tls>\nMax-Forwards: 70\nTo: <sip:carol@example.com>\nCSeq: 1 INVITE\n"
                 f"Content-Type: application/sdp\nContent-Length: {len(offer.replace(chr(10), chr(13) + chr(10)))}\n\n{offer}")
        refused_answer = uac.response("INVITE", time.monotonic() + 15)
    finally:
        uac.close()
    assert refused_answer.startswith("SIP/2.0 488"), refused_answer + server.log[-4000:]
    assert "SRTP keys (a=crypto) in clear over UDP" in header_values(refused_answer, "Warning")[0]
    udp_callee.kill()
    assert not [m for m in messages_in(udp_callee.result(0).messages, "received") if m.startswith("INVITE ")]  # nothing reached it
