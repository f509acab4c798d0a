"""No transaction and no timer outlives its RFC 3261 17 lifetime.

10,000 non-INVITE and 1,000 INVITE transactions, on each side, run to
completion on a Clock through every ending the machines have; afterwards
the tables and the reactor's delayed calls must be empty. Work is done in
batches with the clock moved past every timer in between, because
``task.Clock`` re-sorts all pending calls on each ``callLater``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.task import Clock

from sipshield.message import Request, Response, parse_message
from sipshield.transaction import ClientTransaction, ServerTransaction, TransactionLayer

BATCH = 100


class Flow:
    transport_name = "UDP"
    reliable = False
    secure = False
    remote = ("192.0.2.10", 5060)
    local = ("192.0.2.1", 5060)

    def __init__(self, tally: Counter[str]) -> None:
        self.tally = tally

    def send(self, data: bytes) -> None:
        self.tally["flow.send"] += 1

    def peer_certificate(self) -> None:
        return None


class ReliableFlow(Flow):
    transport_name = "TCP"
    reliable = True


class Peer:
    """Sender and TU at once; answers INVITEs by the number in the Call-ID."""

    def __init__(self) -> None:
        self.tally: Counter[str] = Counter()
        self.udp = Flow(self.tally)
        self.tcp = ReliableFlow(self.tally)

    def send(self, data: bytes, destination: Any, flow: Any) -> Any:
        self.tally["sender.send"] += 1
        return self.tcp if destination[0] == "TCP" else self.udp

    def request_received(self, txn: ServerTransaction) -> None:
        self.tally[f"request {txn.method}"] += 1
        req = txn.request
        if txn.method != "INVITE":
            txn.send_response(req.make_response(200, to_tag="uas"))
            return
        n = int(req.call_id.split("-")[1])
        txn.send_response(req.make_response(180, to_tag="uas"))
        if n % 3 == 0:
            txn.send_response(req.make_response(200, to_tag="uas"))  # -> Accepted, Timer L
        elif n % 3 == 1:
            txn.send_response(req.make_response(486, to_tag="uas"))  # -> Completed, ACKed below
        else:
            txn.send_response(req.make_response(500, to_tag="uas"))  # -> Completed, never ACKed: Timer H

    def stray_ack(self, request: Request, flow: Any) -> None:
        self.tally["stray_ack"] += 1

    def stray_response(self, response: Response, flow: Any) -> None:
        self.tally["stray_response"] += 1

    def transaction_timeout(self, txn: ServerTransaction) -> None:
        self.tally["timer H"] += 1

    def on_response(self, txn: ClientTransaction, response: Response) -> None:
        self.tally[f"response {response.status}"] += 1

    def on_timeout(self, txn: ClientTransaction) -> None:
        self.tally["timeout"] += 1

    def on_transport_error(self, txn: ClientTransaction) -> None:
        self.tally["transport_error"] += 1


def message(method: str, n: int, branch: str, cseq_method: str | None = None, to_tag: str = "", transport: str = "UDP") -> Request:
    tag = f";tag={to_tag}" if to_tag else ""
    msg = parse_message(
        (
            f"{method} sip:bob@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 192.0.2.10:5060;branch={branch}\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:alice@example.com>;tag=a\r\n"
            f"To: <sip:bob@example.com>{tag}\r\n"
            f"Call-ID: c-{n}\r\n"
            f"CSeq: 1 {cseq_method or method}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(msg, Request)
    return msg


def reply(req: Request, status: int) -> Response:
    msg = parse_message(req.make_response(status, to_tag="far").serialise())
    assert isinstance(msg, Response)
    return msg


def test_transactions_leave_no_table_entries_and_no_timers() -> None:
    clock = Clock()
    peer = Peer()
    layer = TransactionLayer(clock, peer, peer)
    non_invite, invite = 10_000, 1_000
    for start in range(0, non_invite, BATCH):
        for n in range(start, start + BATCH):
            # server side: request in, 200 out, Timer J
            layer.handle_request(message("OPTIONS", n, f"z9hG4bK-s{n}"), peer.udp)
            # client side: request out, response in, Timer K (every 10th over TCP: K = 0)
            transport = "TCP" if n % 10 == 0 else "UDP"
            req = message("MESSAGE", n, f"z9hG4bK-c{n}", transport=transport)
            layer.send_request(req, (transport, "192.0.2.20", 5060), peer.on_response, peer.on_timeout, peer.on_transport_error)
            if n % 100 != 99:  # one in a hundred never answered: Timer F
                layer.handle_response(reply(req, 200), peer.udp)
        if start < invite:
            for n in range(start, start + BATCH):
                layer.handle_request(message("INVITE", n, f"z9hG4bK-si{n}"), peer.udp)
                if n % 3 == 1:
                    layer.handle_request(message("ACK", n, f"z9hG4bK-si{n}", to_tag="uas"), peer.udp)
                req = message("INVITE", n, f"z9hG4bK-ci{n}")
                layer.send_request(req, ("UDP", "192.0.2.20", 5060), peer.on_response, peer.on_timeout, peer.on_transport_error)
                if n % 4 == 3:
                    continue  # never answered: Timer B
                layer.handle_response(reply(req, 100), peer.udp)
                layer.handle_response(reply(req, 180), peer.udp)
                layer.handle_response(reply(req, 200 if n % 2 else 603), peer.udp)
        clock.advance(0)
        assert layer.counts()["server"] > 0
        # Past every timer (B, F, H, J = 64*T1; D = 32 s): retransmission chains run as they come due.
        for _ in range(70):
            clock.advance(1)
        assert layer.counts() == {"server": 0, "client": 0, "rfc2543_ack": 0, "sources": 0}, start
        assert clock.getDelayedCalls() == []
    assert layer.counts() == {"server": 0, "client": 0, "rfc2543_ack": 0, "sources": 0}
    assert clock.getDelayedCalls() == []
    t = peer.tally
    assert t["request OPTIONS"] == non_invite
    assert t["request INVITE"] == invite
    assert t["timeout"] == non_invite // 100 + invite // 4  # Timer F and Timer B
    assert t["timer H"] == invite // 3  # n % 3 == 2 below 1,000: 333
    assert t["stray_ack"] == 0 and t["stray_response"] == 0 and t["transport_error"] == 0
    assert t["response 200"] == non_invite - non_invite // 100 + sum(1 for n in range(invite) if n % 4 != 3 and n % 2)
