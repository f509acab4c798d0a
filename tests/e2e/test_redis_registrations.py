"""Two real twistd sipshield nodes sharing the test's own redis-server for
their registrations ([state] backend = "redis", so [registrar] store is
"redis" by default): a phone (a raw UDP socket on 127.0.0.2, untrusted)
registers through node A with digest auth; an INVITE sent to node B for its
AOR reaches the phone's socket; the phone unregisters through B (digest
again, B's own challenge) and node A no longer routes to it.  Then Redis is
stopped: REGISTER through A gets 503 with Retry-After, no traceback; Redis
restarted on the same port, A serves again."""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

import pytest
from cli_support import add_user
from conftest import RunningServer
from digest_client import authorization, challenges
from redis_support import RedisServer, start_nodes
from waiting import wait_until

pytestmark = pytest.mark.e2e
PHONE_IP = "127.0.0.2"  # not trusted: challenged; the caller on 127.0.0.1 is trusted (TRUSTED_LOOPBACK)


class Phone:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((PHONE_IP, 0))
        except OSError:
            pytest.skip(f"cannot bind {PHONE_IP} on this machine's loopback")
        self.port = self.sock.getsockname()[1]
        self.cseq = 0
        self.call_id = f"reg-{secrets.token_hex(4)}@phone"

    def _register(self, node: tuple[str, int], expires: int, auth: str | None) -> bytes:
        self.cseq += 1
        lines = [
            "REGISTER sip:example.com SIP/2.0", f"Via: SIP/2.0/UDP {PHONE_IP}:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70", "From: <sip:alice@example.com>;tag=ph1", "To: <sip:alice@example.com>", f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER", f"Contact: <sip:alice@{PHONE_IP}:{self.port}>", f"Expires: {expires}",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        self.sock.sendto(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode(), node)
        return self.final()

    def register(self, node: tuple[str, int], expires: int = 600) -> bytes:
        """REGISTER, answer the node's 401 with alice's credentials; the final answer."""
        first = self._register(node, expires, None)
        if not first.startswith(b"SIP/2.0 401 "):
            return first
        challenge = challenges(first, "WWW-Authenticate")[0]
        return self._register(node, expires, authorization(challenge, challenge["algorithm"], "alice", "alice-secret", "REGISTER", "sip:example.com"))

    def final(self) -> bytes:
        self.sock.settimeout(10)
        while True:
            data = self.sock.recv(65535)
            if data.startswith(b"SIP/2.0 ") and not data.startswith(b"SIP/2.0 1"):
                return data  # not a 1xx, nor a request (the proxy's ACK of our 486)

    def receive(self, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65535)
        except TimeoutError:
            return None

    def answer_busy(self, invite: bytes, node: tuple[str, int]) -> None:
        """486 to an INVITE the proxy relayed (so its transaction ends cleanly)."""
        head = invite.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        keep = [line for line in head[1:] if line.split(":", 1)[0].strip().lower() in ("via", "from", "to", "call-id", "cseq")]
        keep = [line + ";tag=busy" if line.lower().startswith("to:") else line for line in keep]
        self.sock.sendto(("SIP/2.0 486 Busy Here\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode(), node)


def invite(node: tuple[str, int], caller: socket.socket) -> bytes:
    """An INVITE for alice from the trusted caller; the first answer the caller gets (100 Trying at least)."""
    port = caller.getsockname()[1]
    tag = secrets.token_hex(4)
    caller.sendto((f"INVITE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{tag};rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:bob@example.com>;tag={tag}\r\nTo: <sip:alice@example.com>\r\nCall-ID: call-{tag}@caller\r\n"
                   f"CSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n").encode(), node)
    caller.settimeout(10)
    return caller.recv(65535)


def final_answer(caller: socket.socket) -> bytes:
    caller.settimeout(10)
    while True:
        data = caller.recv(65535)
        if not data.startswith(b"SIP/2.0 1"):
            return data


def test_registered_through_a_called_through_b_unregistered_through_b_gone_on_a(tmp_path: Path, redis_server: RedisServer) -> None:
    extra = f'[state]\nbackend = "redis"\nredis_url = "{redis_server.url}"\nkey_prefix = "e2e:"\n[registrar]\nmin_expires = 60\n'
    nodes: list[RunningServer] = []
    phone = Phone()
    callers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]  # one per call: no 486 retransmission read as the next answer
    for caller in callers:
        caller.bind(("127.0.0.1", 0))
    try:
        for name, node in zip(("a", "b"), start_nodes(tmp_path, extra, nodes), strict=True):
            node.wait_for(r"location store: Redis at 127\.0\.0\.1:\d+/0 connected \(keys e2e:loc:\*\)")
            node.wait_for(r"locations: redis \(redis://127\.0\.0\.1:\d+/0, keys e2e:loc:\*\)")
            add_user(tmp_path / name, "alice", "alice-secret", "staff")
        a, b = nodes
        udp_a, udp_b = a.addresses["udp"], b.addresses["udp"]

        answer = phone.register(udp_a)
        assert answer.startswith(b"SIP/2.0 200 "), answer
        assert f"<sip:alice@{PHONE_IP}:{phone.port}>;expires=".encode() in answer

        caller = callers[0]
        invite(udp_b, caller)
        relayed = phone.receive(5.0)
        assert relayed is not None and relayed.startswith(b"INVITE sip:alice@127.0.0.2:"), f"node B did not relay to the phone: {relayed!r}"
        phone.answer_busy(relayed, udp_b)
        assert final_answer(caller).startswith(b"SIP/2.0 486 ")

        gone = phone.register(udp_b, expires=0)  # through B, B's own challenge
        assert gone.startswith(b"SIP/2.0 200 "), gone
        assert b"Contact:" not in gone
        caller = callers[1]
        invite(udp_a, caller)
        assert final_answer(caller).startswith(b"SIP/2.0 404 "), "node A still found the binding removed through B"
        assert phone.receive(0.5) is None

        redis_server.kill()
        refused = phone.register(udp_a)
        assert refused.startswith(b"SIP/2.0 503 "), refused
        assert b"\r\nRetry-After: " in refused
        redis_server.start_and_wait()
        # Back: the first REGISTERs may still get 503 until the node's connections are up again
        # (txredisapi backs off up to 5 s); the 503 above may have come from the nonce counts
        # (asked before the store), so the store need not have seen the outage at all.
        answers: list[bytes] = []
        tried = [0.0]

        def registered() -> bool:
            if time.monotonic() - tried[0] < 1.0:  # one attempt a second: not the rate limits' business
                return False
            tried[0] = time.monotonic()
            answers.append(phone.register(udp_a))
            return answers[-1].startswith(b"SIP/2.0 200 ")

        wait_until(registered, 20, "a REGISTER through A answered 200 once Redis was back")
        for node in nodes:
            assert "Traceback" not in node.log
            warned = len([line for line in node.log.splitlines() if "RedisLocationStore#warn" in line])
            assert warned <= 1  # A only if the REGISTER reached the store (the nonce counts, asked first, may have answered 503), B if its expiry round fell in the outage; once either way
    finally:
        for caller in callers:
            caller.close()
        phone.sock.close()
        for node in nodes:
            node.stop()
