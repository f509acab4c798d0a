"""A wrong password on a nonce we issued: the re-challenge is sent once.

The source proved its return path (the nonce was issued to it), so the
request gets a transaction and the backend's verdict; RFC 3261 26.3.2.4 lets
a server forgo retransmitting 401/407, and we do: one 407 (after the INVITE's
100 Trying), no retransmission, no transaction left, and the ACK for the 407
matches nothing and is dropped without a word.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from pipeline_support import Proxy, RecordingFlow, proxy_service

from sipshield.message import parse_message

SOURCE = ("127.0.0.2", 40000)


@pytest.fixture
def svc(tmp_path: Path):
    service = proxy_service(tmp_path, {"alice": ("secret", ["user"])})
    yield service
    service.stop()


def wrong_password(svc: Proxy, method: str, branch: str) -> bytes:
    ruri = "sip:bob@example.com" if method != "REGISTER" else "sip:example.com"
    header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
    return (
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {SOURCE[0]}:{SOURCE[1]};branch={branch}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag=a1\r\nTo: <{ruri.replace('sip:example.com', 'sip:alice@example.com')}>\r\n"
        f"Call-ID: wrong-{method}\r\nCSeq: 2 {method}\r\n"
        f"{header}: {svc.digest(method, ruri, 'alice', 'WRONG', source=SOURCE[0])}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(("method", "expected"), [("INVITE", [100, 407]), ("MESSAGE", [407]), ("REGISTER", [401])])
def test_rechallenge_after_a_wrong_password_is_sent_once(svc: Proxy, method: str, expected: list[int]) -> None:
    branch = "z9hG4bK" + secrets.token_hex(8)
    flow = RecordingFlow(SOURCE)
    svc.service.core.message_received(parse_message(wrong_password(svc, method, branch)), flow)
    assert svc.service.transactions.counts()["server"] == 0
    svc.clock.advance(64 * 0.5 + 1)  # past Timer G's retransmissions and Timer H
    assert flow.statuses() == expected


def test_ack_for_the_rechallenge_is_dropped_quietly(svc: Proxy) -> None:
    branch = "z9hG4bK" + secrets.token_hex(8)
    flow = RecordingFlow(SOURCE)
    core = svc.service.core
    core.message_received(parse_message(wrong_password(svc, "INVITE", branch)), flow)
    challenge = flow.messages()[-1]
    ack = (
        f"ACK sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {SOURCE[0]}:{SOURCE[1]};branch={branch}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag=a1\r\nTo: {challenge.headers.get('To')}\r\nCall-ID: wrong-INVITE\r\nCSeq: 2 ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    core.message_received(parse_message(ack), flow)
    assert flow.statuses() == [100, 407]
    assert svc.dispatcher.sent == [] and core.counters["malformed"] == 0
    assert svc.service.transactions.counts()["server"] == 0
