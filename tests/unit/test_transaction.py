"""The RFC 3261 17 transaction layer, on Clock time, the magic-wormhole way.

The layer is wired to fakes (sender, TU, flows) that append to one events
list; each test feeds messages, advances the clock and asserts the exact
event sequence. Events are ``(seconds, what, detail...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from sipshield.message import Request, Response, parse_message
from sipshield.transaction import (
    ACCEPTED,
    COMPLETED,
    CONFIRMED,
    PROCEEDING,
    TERMINATED,
    TRYING,
    ClientTransaction,
    InviteClientTransaction,
    ServerTransaction,
    TimerSettings,
    TransactionLayer,
)

RFC4475 = Path(__file__).resolve().parent.parent / "data" / "rfc4475"
UPSTREAM = ("192.0.2.10", 5070)


def first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode()


class FakeFlow:
    """A Flow that records what is written on it."""

    def __init__(self, world: World, name: str, transport: str = "UDP", remote: tuple[str, int] = UPSTREAM) -> None:
        self.world = world
        self.name = name
        self.transport_name = transport
        self.reliable = transport != "UDP"
        self.secure = transport == "TLS"
        self.remote = remote
        self.local = ("192.0.2.1", 5060)
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.world.record("send", self.name, first_line(data))

    def peer_certificate(self) -> None:
        return None


class World:
    """The clock, the layer and fakes for the sender and the TU, all reporting to ``events``."""

    def __init__(self, transport: str = "UDP", send_trying: bool = True, timers: TimerSettings | None = None) -> None:
        self.clock = Clock()
        self.events: list[tuple[Any, ...]] = []
        self.upstream = FakeFlow(self, "up", transport, UPSTREAM)
        self.downstream = FakeFlow(self, "down", transport, ("192.0.2.20", 5060))
        self.fail_sends = False
        self.sent: list[bytes] = []
        self.server_txns: list[ServerTransaction] = []
        self.auto_answer: int | None = None
        kwargs: dict[str, Any] = {"send_trying": send_trying}
        if timers is not None:
            kwargs["timers"] = timers
        self.layer = TransactionLayer(self.clock, self, self, **kwargs)

    def advance(self, seconds: float) -> None:
        """Move time on call by call: Clock.advance alone would run every due call at the final time."""
        end = self.clock.seconds() + seconds
        while True:
            calls = self.clock.getDelayedCalls()
            due = min((c.getTime() for c in calls), default=end)
            if due > end:
                break
            self.clock.advance(due - self.clock.seconds())
            if not calls or due == end:
                break
        self.clock.advance(end - self.clock.seconds())

    def record(self, *event: Any) -> None:
        self.events.append((self.clock.seconds(), *event))

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events

    # Sender
    def send(self, data: bytes, destination: tuple[str, str, int], flow: Any) -> Any:
        if self.fail_sends:
            self.record("send_failed", first_line(data))
            return None
        self.sent.append(data)
        self.record("sent", first_line(data), destination)
        return self.downstream

    # TransactionUser
    def request_received(self, transaction: ServerTransaction) -> None:
        self.server_txns.append(transaction)
        self.record("request_received", transaction.method, transaction.state)
        if self.auto_answer is not None:
            transaction.send_response(transaction.request.make_response(self.auto_answer, to_tag="uas"))

    def stray_ack(self, request: Request, flow: Any) -> None:
        self.record("stray_ack", request.top_via.branch)

    def stray_response(self, response: Response, flow: Any) -> None:
        self.record("stray_response", response.status, response.cseq.method)

    def transaction_timeout(self, transaction: ServerTransaction) -> None:
        self.record("transaction_timeout", transaction.method, transaction.state)

    # client transaction callbacks
    def on_response(self, txn: ClientTransaction, response: Response) -> None:
        self.record("response", response.status, txn.state)

    def on_timeout(self, txn: ClientTransaction) -> None:
        self.record("timeout", txn.method, txn.state)

    def on_transport_error(self, txn: ClientTransaction) -> None:
        self.record("transport_error", txn.method, txn.state)

    def start(self, request: Request, destination: tuple[str, str, int] = ("UDP", "192.0.2.20", 5060)) -> ClientTransaction:
        return self.layer.send_request(request, destination, self.on_response, self.on_timeout, self.on_transport_error)

    def idle(self) -> bool:
        return self.layer.counts() == {"server": 0, "client": 0, "rfc2543_ack": 0, "sources": 0} and not self.clock.getDelayedCalls()


def request(
    method: str = "INVITE",
    branch: str = "z9hG4bK-c1",
    cseq: int = 1,
    to_tag: str | None = None,
    via: str = "SIP/2.0/UDP 192.0.2.1:5060",
    extra: str = "",
    cseq_method: str | None = None,
) -> Request:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    branch_param = f";branch={branch}" if branch else ""
    text = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: {via}{branch_param}\r\n"
        "Via: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bK-uac\r\n"
        "Max-Forwards: 69\r\n"
        f"{extra}"
        "From: Alice <sip:alice@example.com>;tag=a1\r\n"
        f"To: {to}\r\n"
        "Call-ID: call-1@example.com\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def response(req: Request, status: int, to_tag: str | None = "b1") -> Response:
    """A response as the next hop would send it: parsed from bytes, like the transport does."""
    built = req.make_response(status, to_tag=to_tag)
    msg = parse_message(built.serialise())
    assert isinstance(msg, Response)
    return msg


def parse_request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


DEST = ("UDP", "192.0.2.20", 5060)
INVITE_LINE = "INVITE sip:bob@example.com SIP/2.0"
OPTIONS_LINE = "OPTIONS sip:bob@example.com SIP/2.0"
ACK_LINE = "ACK sip:bob@example.com SIP/2.0"


# -- INVITE client transaction (RFC 3261 17.1.1, RFC 6026 7.2) ------------------------


def test_invite_client_retransmits_on_timer_a_doubling_until_timer_b() -> None:
    w = World()
    txn = w.start(request())
    w.advance(40)
    assert w.take() == [
        (0.0, "sent", INVITE_LINE, DEST),
        (0.5, "sent", INVITE_LINE, DEST),
        (1.5, "sent", INVITE_LINE, DEST),
        (3.5, "sent", INVITE_LINE, DEST),
        (7.5, "sent", INVITE_LINE, DEST),
        (15.5, "sent", INVITE_LINE, DEST),
        (31.5, "sent", INVITE_LINE, DEST),
        (32.0, "timeout", "INVITE", TERMINATED),
    ]
    assert txn.state is TERMINATED
    assert w.idle()
    # Every retransmission is the very bytes of the first send.
    assert len(set(w.sent)) == 1


def test_invite_client_provisional_stops_retransmissions_and_timer_b() -> None:
    w = World()
    req = request()
    w.start(req)
    w.advance(0.2)
    w.layer.handle_response(response(req, 100, None), w.downstream)
    w.advance(100)
    assert w.take() == [(0.0, "sent", INVITE_LINE, DEST), (0.2, "response", 100, PROCEEDING)]
    # RFC 3261 gives Proceeding no timer: the TU's Timer C ends it.
    assert w.clock.getDelayedCalls() == []
    assert w.layer.counts()["client"] == 1


def test_invite_client_acks_non_2xx_and_absorbs_retransmitted_final() -> None:
    w = World()
    req = request(extra="Route: <sip:p1.example.com;lr>\r\nRoute: <sip:p2.example.com;lr>\r\n")
    txn = w.start(req)
    w.advance(0.125)
    w.layer.handle_response(response(req, 100, None), w.downstream)
    w.advance(1)
    busy = response(req, 486, "callee")
    w.layer.handle_response(busy, w.downstream)
    assert txn.state is COMPLETED
    w.advance(2)
    w.layer.handle_response(response(req, 486, "callee"), w.downstream)
    w.advance(29.75)  # t = 32.875: Timer D (32 s from 1.125) is still running
    assert txn.state is COMPLETED
    w.advance(0.25)
    assert w.take() == [
        (0.0, "sent", INVITE_LINE, DEST),
        (0.125, "response", 100, PROCEEDING),
        (1.125, "sent", ACK_LINE, DEST),
        (1.125, "response", 486, COMPLETED),
        (3.125, "sent", ACK_LINE, DEST),  # the retransmitted 486 is not passed to the TU
    ]
    assert txn.state is TERMINATED
    assert w.idle()
    ack = parse_request(w.sent[1])
    assert w.sent[1] == w.sent[2]
    # RFC 3261 17.1.1.3
    assert ack.method == "ACK"
    assert str(ack.uri) == "sip:bob@example.com"
    assert [str(v) for v in ack.vias] == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-c1"]
    assert ack.headers.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert ack.to.tag == "callee"
    assert ack.from_.tag == "a1"
    assert ack.call_id == "call-1@example.com"
    assert (ack.cseq.seq, ack.cseq.method) == (1, "ACK")
    assert ack.max_forwards == 69
    assert ack.body == b""


def test_invite_client_accepted_state_passes_2xx_retransmissions() -> None:
    w = World()
    req = request()
    txn = w.start(req)
    w.advance(0.25)
    w.layer.handle_response(response(req, 180), w.downstream)
    w.layer.handle_response(response(req, 200), w.downstream)
    assert txn.state is ACCEPTED
    w.advance(4)
    w.layer.handle_response(response(req, 200), w.downstream)  # retransmitted 2xx
    w.layer.handle_response(response(req, 200, "other-fork"), w.downstream)  # 2xx from another fork
    w.layer.handle_response(response(req, 486), w.downstream)  # a late non-2xx: ignored
    w.advance(27.75)  # t = 32.0
    assert txn.state is ACCEPTED
    w.advance(0.25)  # Timer M = 64*T1 fires 32 s after the first 2xx
    assert txn.state is TERMINATED
    w.layer.handle_response(response(req, 200), w.downstream)
    assert w.take() == [
        (0.0, "sent", INVITE_LINE, DEST),
        (0.25, "response", 180, PROCEEDING),
        (0.25, "response", 200, ACCEPTED),
        (4.25, "response", 200, ACCEPTED),
        (4.25, "response", 200, ACCEPTED),
        (32.25, "stray_response", 200, "INVITE"),  # after Timer M: forwarded statelessly by the proxy
    ]
    assert w.idle()


def test_invite_client_2xx_while_calling_stops_timer_a() -> None:
    w = World()
    req = request()
    w.start(req)
    w.layer.handle_response(response(req, 200), w.downstream)
    w.advance(31.9)
    assert w.take() == [(0.0, "sent", INVITE_LINE, DEST), (0.0, "response", 200, ACCEPTED)]
    w.advance(0.1)
    assert w.idle()


def test_make_cancel_copies_the_invite_per_rfc3261_9_1() -> None:
    w = World()
    req = request(extra="Route: <sip:p1.example.com;lr>\r\n")
    txn = w.start(req)
    assert isinstance(txn, InviteClientTransaction)
    cancel = txn.make_cancel()
    assert cancel.method == "CANCEL"
    assert str(cancel.uri) == str(req.uri)
    assert [str(v) for v in cancel.vias] == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-c1"]
    assert (cancel.cseq.seq, cancel.cseq.method) == (1, "CANCEL")
    assert cancel.headers.get("To") == req.headers.get("To")
    assert cancel.headers.get("From") == req.headers.get("From")
    assert cancel.headers.get_all("Route") == ["<sip:p1.example.com;lr>"]
    # Same branch, another method: its own client transaction (RFC 3261 17.1.3).
    w.start(cancel)
    assert w.layer.counts()["client"] == 2


# -- non-INVITE client transaction (RFC 3261 17.1.2) -------------------------------------


def test_non_invite_client_timer_e_caps_at_t2() -> None:
    w = World()
    w.start(request("OPTIONS"))
    w.advance(40)
    times = [e[0] for e in w.events if e[1] == "sent"]
    assert times == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert w.events[-1] == (32.0, "timeout", "OPTIONS", TERMINATED)
    assert len(w.events) == 12
    assert w.idle()


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    w = World()
    req = request("OPTIONS")
    w.start(req)
    w.advance(0.2)
    w.layer.handle_response(response(req, 100, None), w.downstream)
    w.advance(9)
    assert w.take() == [
        (0.0, "sent", OPTIONS_LINE, DEST),
        (0.2, "response", 100, PROCEEDING),
        (0.5, "sent", OPTIONS_LINE, DEST),  # the pending Timer E keeps its time ...
        (4.5, "sent", OPTIONS_LINE, DEST),  # ... then fires every T2 (17.1.2.2)
        (8.5, "sent", OPTIONS_LINE, DEST),
    ]


def test_non_invite_client_final_then_timer_k_absorbs_retransmissions() -> None:
    w = World()
    req = request("OPTIONS")
    txn = w.start(req)
    w.advance(0.75)
    w.layer.handle_response(response(req, 200), w.downstream)
    w.advance(1)
    w.layer.handle_response(response(req, 200), w.downstream)  # absorbed in Completed
    w.advance(3.75)  # t = 5.5: Timer K = T4 = 5 s from 0.75
    assert txn.state is COMPLETED
    w.advance(0.25)
    assert txn.state is TERMINATED
    w.layer.handle_response(response(req, 200), w.downstream)
    assert w.take() == [
        (0.0, "sent", OPTIONS_LINE, DEST),
        (0.5, "sent", OPTIONS_LINE, DEST),
        (0.75, "response", 200, COMPLETED),
        (5.75, "stray_response", 200, "OPTIONS"),
    ]
    assert w.idle()


def test_reliable_transport_no_retransmissions_and_timer_k_zero() -> None:
    w = World(transport="TCP")
    req = request("OPTIONS", via="SIP/2.0/TCP 192.0.2.1:5060")
    tcp = ("TCP", "192.0.2.20", 5060)
    txn = w.start(req, tcp)
    assert txn.reliable
    w.advance(20)
    w.layer.handle_response(response(req, 200), w.downstream)
    assert txn.state is TERMINATED
    assert w.take() == [(0.0, "sent", OPTIONS_LINE, tcp), (20.0, "response", 200, TERMINATED)]
    assert w.idle()
    # INVITE over TCP: no Timer A, Timer B still runs (17.1.1.2).
    inv = request("INVITE", branch="z9hG4bK-c2", via="SIP/2.0/TCP 192.0.2.1:5060")
    w.start(inv, tcp)
    w.advance(40)
    assert w.take() == [(20.0, "sent", INVITE_LINE, tcp), (52.0, "timeout", "INVITE", TERMINATED)]
    # ... and Timer D = 0 after a non-2xx.
    inv = request("INVITE", branch="z9hG4bK-c3", via="SIP/2.0/TCP 192.0.2.1:5060")
    txn = w.start(inv, tcp)
    w.layer.handle_response(response(inv, 603), w.downstream)
    assert txn.state is TERMINATED
    assert w.take() == [(60.0, "sent", INVITE_LINE, tcp), (60.0, "sent", ACK_LINE, tcp), (60.0, "response", 603, TERMINATED)]
    assert w.idle()


def test_configured_t1_t2_scale_the_timers() -> None:
    w = World(timers=TimerSettings(t1=0.25, t2=1.0, t4=2.5))
    w.start(request("OPTIONS"))
    w.advance(20)
    times = [e[0] for e in w.events if e[1] == "sent"]
    assert times == [0.0, 0.25, 0.75, 1.75, 2.75, 3.75, 4.75, 5.75, 6.75, 7.75, 8.75, 9.75, 10.75, 11.75, 12.75, 13.75, 14.75, 15.75]
    assert w.events[-1] == (16.0, "timeout", "OPTIONS", TERMINATED)


def test_transport_error_reported() -> None:
    w = World()
    w.fail_sends = True
    txn = w.start(request("OPTIONS"))
    assert txn.state is TERMINATED
    assert w.take() == [(0.0, "send_failed", OPTIONS_LINE), (0.0, "transport_error", "OPTIONS", TERMINATED)]
    assert w.idle()
    # A failing retransmission ends the transaction too (RFC 3261 17.1.4).
    w.fail_sends = False
    txn = w.start(request("INVITE"))
    w.fail_sends = True
    w.advance(0.5)
    assert w.take() == [
        (0.0, "sent", INVITE_LINE, DEST),
        (0.5, "send_failed", INVITE_LINE),
        (0.5, "transport_error", "INVITE", TERMINATED),
    ]
    assert w.idle()


def test_failed_ack_still_delivers_the_final_response() -> None:
    w = World()
    req = request()
    w.start(req)
    w.fail_sends = True
    w.layer.handle_response(response(req, 404), w.downstream)
    assert w.take() == [
        (0.0, "sent", INVITE_LINE, DEST),
        (0.0, "send_failed", ACK_LINE),
        (0.0, "response", 404, TERMINATED),
        (0.0, "transport_error", "INVITE", TERMINATED),
    ]
    assert w.idle()


def test_send_request_refuses_ack_duplicates_and_branches_without_cookie() -> None:
    w = World()
    with pytest.raises(ValueError, match="ACK"):
        w.start(request("ACK"))
    with pytest.raises(ValueError, match="z9hG4bK"):
        w.start(request("OPTIONS", branch="1234"))
    w.start(request("OPTIONS"))
    with pytest.raises(ValueError, match="exists"):
        w.start(request("OPTIONS"))
    assert w.layer.counts()["client"] == 1


def test_stray_response_goes_to_user() -> None:
    w = World()
    req = request("INVITE")
    w.start(req)
    other_branch = request("INVITE", branch="z9hG4bK-nobody")
    w.layer.handle_response(response(other_branch, 200), w.downstream)
    # Same branch, other CSeq method: not this transaction either (17.1.3).
    w.layer.handle_response(response(request("CANCEL", cseq_method="CANCEL"), 200), w.downstream)
    assert w.take()[1:] == [(0.0, "stray_response", 200, "INVITE"), (0.0, "stray_response", 200, "CANCEL")]


# -- server transactions (RFC 3261 17.2, RFC 6026 7.1) -------------------------------------


def test_server_absorbs_retransmitted_request_and_resends_last_response() -> None:
    w = World()
    req = request("OPTIONS", branch="z9hG4bK-s1")
    w.layer.handle_request(req, w.upstream)
    txn = w.server_txns[0]
    assert txn.state is TRYING
    w.layer.handle_request(request("OPTIONS", branch="z9hG4bK-s1"), w.upstream)  # Trying: discarded
    txn.send_response(req.make_response(100))
    w.advance(1)
    w.layer.handle_request(request("OPTIONS", branch="z9hG4bK-s1"), w.upstream)  # Proceeding: last provisional again
    assert txn.send_response(req.make_response(200, to_tag="t"))
    assert not txn.send_response(req.make_response(500, to_tag="t"))  # Completed discards further finals
    w.advance(1)
    w.layer.handle_request(request("OPTIONS", branch="z9hG4bK-s1"), w.upstream)  # Completed: the final again
    w.advance(30.9)  # t = 32.9: Timer J (64*T1 from 1.0) is running
    assert txn.state is COMPLETED
    w.advance(0.1)
    assert txn.state is TERMINATED
    assert w.take() == [
        (0.0, "request_received", "OPTIONS", TRYING),
        (0.0, "send", "up", "SIP/2.0 100 Trying"),
        (1.0, "send", "up", "SIP/2.0 100 Trying"),
        (1.0, "send", "up", "SIP/2.0 200 OK"),
        (2.0, "send", "up", "SIP/2.0 200 OK"),
    ]
    assert w.idle()
    # After Timer J the same request is new again.
    w.layer.handle_request(request("OPTIONS", branch="z9hG4bK-s1"), w.upstream)
    assert w.take() == [(33.0, "request_received", "OPTIONS", TRYING)]


@pytest.mark.parametrize("via", ["SIP/2.0/UDP 10.0.0.5:5062;rport", "SIP/2.0/UDP 10.0.0.5:5062;maddr=192.0.2.77", "SIP/2.0/UDP 10.0.0.5:5062"])
def test_server_responses_go_back_on_the_flow_whatever_the_via_says(via: str) -> None:
    w = World()
    req = request("OPTIONS", via=via)
    w.layer.handle_request(req, w.upstream)
    w.server_txns[0].send_response(req.make_response(200))
    assert w.take()[-1] == (0.0, "send", "up", "SIP/2.0 200 OK")  # to the flow's remote: RFC 3581 for every request


def test_non_invite_server_timer_j_zero_on_reliable_transport() -> None:
    w = World(transport="TLS")
    req = request("REGISTER", via="SIP/2.0/TLS 192.0.2.1:5061")
    w.layer.handle_request(req, w.upstream)
    txn = w.server_txns[0]
    txn.send_response(req.make_response(200, to_tag="r"))
    assert txn.state is TERMINATED
    assert w.take() == [(0.0, "request_received", "REGISTER", TRYING), (0.0, "send", "up", "SIP/2.0 200 OK")]
    assert w.idle()


def test_invite_server_sends_100_trying_at_once() -> None:
    w = World()
    w.layer.handle_request(request("INVITE", branch="z9hG4bK-s1"), w.upstream)
    assert w.take() == [
        (0.0, "send", "up", "SIP/2.0 100 Trying"),
        (0.0, "request_received", "INVITE", PROCEEDING),
    ]
    # RFC 3261 17.2.1: the 100 carries no To tag.
    trying = parse_message(w.upstream.sent[0])
    assert trying.to.tag is None
    # The retransmitted INVITE gets the latest provisional again.
    w.layer.handle_request(request("INVITE", branch="z9hG4bK-s1"), w.upstream)
    assert w.take() == [(0.0, "send", "up", "SIP/2.0 100 Trying")]


def test_invite_server_without_send_trying_waits_for_the_tu() -> None:
    w = World(send_trying=False)
    w.layer.handle_request(request("INVITE", branch="z9hG4bK-s1"), w.upstream)
    w.layer.handle_request(request("INVITE", branch="z9hG4bK-s1"), w.upstream)
    assert w.take() == [(0.0, "request_received", "INVITE", PROCEEDING)]


def test_invite_server_retransmits_final_on_timer_g_until_ack() -> None:
    w = World(send_trying=False)
    req = request("INVITE", branch="z9hG4bK-s1")
    w.layer.handle_request(req, w.upstream)
    txn = w.server_txns[0]
    final = req.make_response(486, to_tag="uas")
    txn.send_response(final)
    assert txn.state is COMPLETED
    w.advance(12)
    ack = request("ACK", branch="z9hG4bK-s1", to_tag="uas")
    w.layer.handle_request(ack, w.upstream)
    assert txn.state is CONFIRMED
    w.layer.handle_request(request("ACK", branch="z9hG4bK-s1", to_tag="uas"), w.upstream)  # retransmitted ACK
    w.layer.handle_request(request("INVITE", branch="z9hG4bK-s1"), w.upstream)  # absorbed in Confirmed
    w.advance(4.9)  # t = 16.9: Timer I = T4 from 12
    assert txn.state is CONFIRMED
    w.advance(0.1)
    busy = "SIP/2.0 486 Busy Here"
    assert w.take() == [
        (0.0, "request_received", "INVITE", PROCEEDING),
        (0.0, "send", "up", busy),
        (0.5, "send", "up", busy),
        (1.5, "send", "up", busy),
        (3.5, "send", "up", busy),
        (7.5, "send", "up", busy),
        (11.5, "send", "up", busy),  # Timer G capped at T2
    ]
    assert txn.state is TERMINATED
    assert w.idle()
    assert len(set(w.upstream.sent)) == 1  # serialised once, resent as is


def test_invite_server_timer_h_reports_a_missing_ack() -> None:
    w = World(send_trying=False)
    req = request("INVITE", branch="z9hG4bK-s1")
    w.layer.handle_request(req, w.upstream)
    w.server_txns[0].send_response(req.make_response(404, to_tag="uas"))
    w.advance(40)
    events = w.take()
    assert [e[0] for e in events if e[1] == "send"] == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert events[-1] == (32.0, "transaction_timeout", "INVITE", TERMINATED)
    assert w.idle()


def test_invite_server_reliable_has_no_timer_g_and_timer_i_zero() -> None:
    w = World(transport="TCP", send_trying=False)
    req = request("INVITE", branch="z9hG4bK-s1", via="SIP/2.0/TCP 192.0.2.1:5060")
    w.layer.handle_request(req, w.upstream)
    txn = w.server_txns[0]
    txn.send_response(req.make_response(480, to_tag="uas"))
    w.advance(20)
    w.layer.handle_request(request("ACK", branch="z9hG4bK-s1", to_tag="uas", via="SIP/2.0/TCP 192.0.2.1:5060"), w.upstream)
    assert txn.state is TERMINATED
    assert w.take() == [(0.0, "request_received", "INVITE", PROCEEDING), (0.0, "send", "up", "SIP/2.0 480 Temporarily Unavailable")]
    assert w.idle()


def test_ack_for_non_2xx_is_absorbed_by_server_transaction() -> None:
    w = World(send_trying=False)
    w.auto_answer = 603
    w.layer.handle_request(request("INVITE", branch="z9hG4bK-s1"), w.upstream)
    w.layer.handle_request(request("ACK", branch="z9hG4bK-s1", to_tag="uas"), w.upstream)
    w.layer.handle_request(request("ACK", branch="z9hG4bK-s1", to_tag="uas"), w.upstream)
    assert w.take() == [
        (0.0, "request_received", "INVITE", PROCEEDING),
        (0.0, "send", "up", "SIP/2.0 603 Decline"),
    ]
    assert w.server_txns[0].state is CONFIRMED


def test_ack_for_2xx_is_a_stray_ack() -> None:
    w = World(send_trying=False)
    req = request("INVITE", branch="z9hG4bK-s1")
    w.layer.handle_request(req, w.upstream)
    txn = w.server_txns[0]
    ok = req.make_response(200, to_tag="uas")
    txn.send_response(ok)
    assert txn.state is ACCEPTED
    w.advance(0.5)
    # The UAS core retransmits its 2xx through the transaction (RFC 6026 8.6) ...
    assert txn.send_response(ok)
    # ... a retransmitted INVITE is absorbed (no 2xx from the transaction itself) ...
    w.layer.handle_request(request("INVITE", branch="z9hG4bK-s1"), w.upstream)
    # ... and a non-2xx is refused.
    assert not txn.send_response(req.make_response(500, to_tag="uas"))
    # The ACK for a 2xx is its own transaction, with a new branch (RFC 3261 17.2.3, 13.2.2.4) ...
    w.layer.handle_request(request("ACK", branch="z9hG4bK-ack2xx", to_tag="uas"), w.upstream)
    # ... and even one reusing the INVITE's branch goes to the TU in Accepted (RFC 6026 8.7).
    w.layer.handle_request(request("ACK", branch="z9hG4bK-s1", to_tag="uas"), w.upstream)
    w.advance(31.5)  # t = 32: Timer L
    assert txn.state is TERMINATED
    assert w.take() == [
        (0.0, "request_received", "INVITE", PROCEEDING),
        (0.0, "send", "up", "SIP/2.0 200 OK"),
        (0.5, "send", "up", "SIP/2.0 200 OK"),
        (0.5, "stray_ack", "z9hG4bK-ack2xx"),
        (0.5, "stray_ack", "z9hG4bK-s1"),
    ]
    assert w.idle()


def test_cancel_finds_invite_server_transaction() -> None:
    w = World(send_trying=False)
    w.layer.handle_request(request("INVITE", branch="z9hG4bK-s1"), w.upstream)
    invite_txn = w.server_txns[0]
    cancel = request("CANCEL", branch="z9hG4bK-s1")
    w.layer.handle_request(cancel, w.upstream)
    cancel_txn = w.server_txns[1]
    assert cancel_txn is not invite_txn
    assert cancel_txn.method == "CANCEL"
    assert cancel_txn.state is TRYING
    assert w.layer.find_invite(cancel) is invite_txn
    assert w.layer.find_invite(request("CANCEL", branch="z9hG4bK-other")) is None
    # Same branch but another sent-by is another transaction (17.2.3).
    assert w.layer.find_invite(request("CANCEL", branch="z9hG4bK-s1", via="SIP/2.0/UDP 192.0.2.2:5060")) is None
    cancel_txn.send_response(cancel.make_response(200, to_tag="uas"))
    invite_txn.send_response(invite_txn.request.make_response(487, to_tag="uas"))
    w.layer.handle_request(request("ACK", branch="z9hG4bK-s1", to_tag="uas"), w.upstream)
    w.advance(33)
    assert w.layer.find_invite(cancel) is None
    assert w.idle()


def test_rfc2543_request_matching() -> None:
    w = World()
    data = (RFC4475 / "inv2543.dat").read_bytes()
    invite = parse_request(data)
    w.layer.handle_request(invite, w.upstream)
    txn = w.server_txns[0]
    assert txn.key[0] == "rfc2543"
    w.layer.handle_request(parse_request(data), w.upstream)  # retransmission: the 100 again
    # The retransmission rule compares each field by its own rules: a Request-URI
    # differing only in host case is the same (RFC 3261 19.1.4).
    w.layer.handle_request(parse_request(data.replace(b"UserB@example.com SIP", b"UserB@EXAMPLE.com SIP")), w.upstream)
    final = invite.make_response(486, to_tag="rfc2543tag")
    txn.send_response(final)
    assert w.layer.counts() == {"server": 1, "client": 0, "rfc2543_ack": 1, "sources": 1}

    def ack(to_tag: str, cseq: bytes = b"56") -> Request:
        text = data.split(b"\r\n\r\n")[0].replace(b"INVITE sip:", b"ACK sip:")
        text = text.replace(b"CSeq: 56 INVITE", b"CSeq: " + cseq + b" ACK")
        text = text.replace(b"user=phone\r\nCall-ID", b"user=phone;tag=" + to_tag.encode() + b"\r\nCall-ID")
        text = text.replace(b"Content-Type: application/sdp", b"Content-Length: 0")
        return parse_request(text + b"\r\n\r\n")

    w.layer.handle_request(ack("another-tag"), w.upstream)  # the To tag decides (17.2.3)
    w.layer.handle_request(ack("rfc2543tag", b"57"), w.upstream)  # so does the CSeq number
    assert txn.state is COMPLETED
    w.layer.handle_request(ack("rfc2543tag"), w.upstream)
    assert txn.state is CONFIRMED
    w.layer.handle_request(ack("rfc2543tag"), w.upstream)  # a retransmitted ACK matches too
    # A new CSeq is a new transaction.
    w.layer.handle_request(parse_request(data.replace(b"CSeq: 56", b"CSeq: 57")), w.upstream)
    assert w.take() == [
        (0.0, "send", "up", "SIP/2.0 100 Trying"),
        (0.0, "request_received", "INVITE", PROCEEDING),
        (0.0, "send", "up", "SIP/2.0 100 Trying"),
        (0.0, "send", "up", "SIP/2.0 100 Trying"),
        (0.0, "send", "up", "SIP/2.0 486 Busy Here"),
        (0.0, "stray_ack", None),
        (0.0, "stray_ack", None),
        (0.0, "send", "up", "SIP/2.0 100 Trying"),
        (0.0, "request_received", "INVITE", PROCEEDING),
    ]
    # A CANCEL for it is found by the RFC 2543 rule too (RFC 3261 9.2).
    cancel = parse_request(data.replace(b"INVITE sip:", b"CANCEL sip:").replace(b"56 INVITE", b"56 CANCEL"))
    assert w.layer.find_invite(cancel) is txn
    w.advance(6)  # Timer I
    assert w.layer.counts() == {"server": 1, "client": 0, "rfc2543_ack": 0, "sources": 1}


def test_stop_cancels_every_timer() -> None:
    w = World()
    w.start(request("INVITE"))
    w.start(request("OPTIONS", branch="z9hG4bK-c2"))
    req = request("INVITE", branch="z9hG4bK-s1")
    w.layer.handle_request(req, w.upstream)
    w.server_txns[0].send_response(req.make_response(500, to_tag="x"))
    assert w.layer._timers.live() == 3  # Timers A, E and G: all T1, so one reactor call for the three
    assert len(w.clock.getDelayedCalls()) == 1
    w.layer.stop()
    assert w.idle()
    w.take()
    w.advance(100)
    assert w.take() == []
