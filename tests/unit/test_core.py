"""The proxy core on Clock time with a real transaction layer and a recording
dispatcher: local answers (16.3, OPTIONS, malformed input), forwarding (16.6),
response handling (16.7), CANCEL (16.10), timer C, stateless ACK forwarding."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_support import RecordingDispatcher, RecordingFlow, feed
from twisted.internet.task import Clock

from sipshield.message import URI, Request, Response, parse_message
from sipshield.proxy import ProxyCore, endpoints
from sipshield.routing import Decision, Pipeline, Target
from sipshield.routing._stages import DialogStage, FinalStage, OptionsStage, SanityStage
from sipshield.transaction import TimerSettings, TransactionLayer

CORPUS = Path(__file__).parent.parent / "data" / "rfc4475"


class Relay:
    name = "relay"

    def __init__(self, *targets: str) -> None:
        self.targets = targets

    def process(self, context):
        if context.request.uri.user in ("fork", "bob"):
            return Decision.relay([Target(uri=URI.parse(t)) for t in self.targets])
        from sipshield.routing import CONTINUE

        return CONTINUE


def make_core(*stages, timer_c: float = 180.0) -> tuple[ProxyCore, RecordingDispatcher, Clock]:
    clock = Clock()
    core = ProxyCore(["example.com"], clock, timer_c=timer_c)
    core.add_local_address("127.0.0.1", 5060)
    core.add_local_address("127.0.0.1", 5061)
    dispatcher = RecordingDispatcher()
    core.dispatcher = dispatcher
    core.transactions = TransactionLayer(clock, core, dispatcher, TimerSettings())
    core.pipeline = Pipeline([SanityStage(core.is_local), OptionsStage(core.is_local), DialogStage(core.is_local), *stages, FinalStage(core.is_local)])
    return core, dispatcher, clock


def request(uri: str = "sip:127.0.0.1", method: str = "OPTIONS", via: str = "SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKx", extra: str = "", body: bytes = b"", to_tag: str = "") -> bytes:
    to = f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=f1\r\n"
        f"To: {to}\r\nCall-ID: c1@example.com\r\nCSeq: 7 {method}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def answer(forwarded: Request, status: int, to_tag: str = "callee", extra: list[tuple[str, str]] | None = None) -> bytes:
    response = forwarded.make_response(status, to_tag=to_tag)
    for name, value in extra or []:
        response.headers.add(name, value)
    return response.serialise()


# -- local answers ----------------------------------------------------------

@pytest.mark.parametrize("uri", ["sip:127.0.0.1", "sip:127.0.0.1:5060", "sip:example.com", "sip:localhost", "sips:example.com"])
def test_options_to_itself_gets_200_with_capabilities(uri: str) -> None:
    core, _, _ = make_core()
    (response,) = feed(core, request(uri)).messages()
    assert (response.status, response.reason) == (200, "OK")
    assert "INVITE" in response.headers.get("Allow")
    assert response.headers.get("Accept") == "application/sdp"
    assert response.headers.get("Supported") is not None
    assert response.to.tag
    assert response.call_id == "c1@example.com" and response.cseq.seq == 7


def test_options_retransmission_is_answered_from_the_transaction() -> None:
    core, _, _ = make_core()
    flow = feed(core, request())
    feed(core, request(), flow)
    first, second = flow.sent
    assert first == second and core.transactions.counts()["server"] == 1


def test_options_to_another_port_is_not_to_itself() -> None:
    core, _, _ = make_core()
    assert feed(core, request("sip:127.0.0.1:5999")).statuses() == [403]


@pytest.mark.parametrize(
    "name, status, reason",
    [
        ("unkscm.dat", 416, "Unsupported URI Scheme"),
        ("novelsc.dat", 416, "Unsupported URI Scheme"),
        ("zeromf.dat", 483, "Too Many Hops"),
        ("bext01.dat", 420, "Bad Extension"),
        ("insuf.dat", 400, None),
        ("multi01.dat", 400, None),
        ("mcl01.dat", 400, None),
    ],
)
def test_rfc4475_semantic_rows_get_the_expected_status(name: str, status: int, reason: str | None) -> None:
    core, _, _ = make_core()
    flow = feed(core, (CORPUS / name).read_bytes())
    ((data, _),) = flow.sent  # raw: insuf's answer lacks the To it never had
    version, code, phrase = data.split(b"\r\n", 1)[0].decode().split(" ", 2)
    assert (version, int(code)) == ("SIP/2.0", status)
    if reason:
        assert phrase == reason


def test_bad_extension_lists_unsupported_options() -> None:
    core, _, _ = make_core()
    (response,) = feed(core, (CORPUS / "bext01.dat").read_bytes()).messages()
    assert response.headers.get("Unsupported") == "noProxiesSupportThis, norDoAnyProxiesSupportThis"


def test_malformed_request_answered_at_source_with_parser_reason() -> None:
    core, _, _ = make_core()
    flow = feed(core, (CORPUS / "mismatch01.dat").read_bytes())
    ((data, address),) = flow.sent
    assert address == flow.remote
    response = parse_message(data)
    assert isinstance(response, Response) and response.status == 400 and "CSeq" in response.reason


def test_bad_version_gets_505() -> None:
    core, _, _ = make_core()
    assert feed(core, (CORPUS / "badvers.dat").read_bytes()).statuses() == [505]


@pytest.mark.parametrize("name", ["scalarlg.dat", "bigcode.dat"])
def test_malformed_responses_are_dropped(name: str) -> None:
    core, dispatcher, _ = make_core()
    assert feed(core, (CORPUS / name).read_bytes()).sent == [] and dispatcher.sent == []


@pytest.mark.parametrize(
    "via",
    [
        "SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKa",
        "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKa",
        "SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;rport",
        "SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKa;maddr=192.0.2.77",
        "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa;received=255.255.255.255",
    ],
)
def test_udp_responses_go_to_the_source_address_whatever_the_via_says(via: str) -> None:
    core, _, _ = make_core()
    ((_, address),) = feed(core, request(via=via)).sent
    assert address == ("192.0.2.9", 40000)


def test_request_for_foreign_domain_is_not_relayed() -> None:
    core, _, _ = make_core()
    assert feed(core, request("sip:bob@elsewhere.example.net", "INVITE")).statuses() == [100, 403]


# -- forwarding --------------------------------------------------------------

def ours(core: ProxyCore, call_id: str = "c1@example.com", from_tag: str = "f1", between: tuple[str, str] = ("192.0.2.9", "192.0.2.20")) -> str:
    """The ;ss= parameter the proxy puts in its Record-Route for that dialog
    (by default between RecordingFlow's source and the Relay target)."""
    return f";ss={core.signer.token(call_id, from_tag, endpoints(*between))}"


def test_invite_is_forwarded_with_via_record_route_and_max_forwards() -> None:
    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.20:5062"))
    upstream = feed(core, request("sip:bob@example.com", "INVITE", body=b"v=0\r\n", extra="Content-Type: application/sdp\r\n"))
    assert upstream.statuses() == [100]
    ((fwd, hop),) = dispatcher.sent
    assert hop == ("UDP", "192.0.2.20", 5062)
    assert str(fwd.uri) == "sip:bob@192.0.2.20:5062"
    assert fwd.max_forwards == 69
    assert fwd.top_via.host == "127.0.0.1" and fwd.top_via.branch.startswith("z9hG4bK")
    assert len(fwd.vias) == 2
    assert fwd.headers.get_all("Record-Route") == [f"<sip:127.0.0.1:5060;transport=udp;lr{ours(core)}>"]
    assert fwd.body == b"v=0\r\n"


def test_responses_come_back_without_our_via_and_2xx_goes_up() -> None:
    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.20:5062"))
    upstream = feed(core, request("sip:bob@example.com", "INVITE"))
    ((fwd, hop),) = dispatcher.sent
    downstream = dispatcher.flows[hop]
    feed(core, answer(fwd, 180), downstream)
    feed(core, answer(fwd, 200), downstream)
    statuses = upstream.statuses()
    assert statuses == [100, 180, 200]
    final = upstream.messages()[-1]
    assert len(final.vias) == 1 and final.top_via.branch == "z9hG4bKx"
    assert final.to.tag == "callee"


def test_2xx_retransmissions_after_the_context_ends_go_to_the_upstream_flow_not_the_via() -> None:
    core, dispatcher, clock = make_core(Relay("sip:bob@192.0.2.20:5062"))
    upstream = feed(core, request("sip:bob@example.com", "INVITE", via="SIP/2.0/UDP 192.0.2.66:5099;branch=z9hG4bKx"))
    ((fwd, hop),) = dispatcher.sent
    downstream = dispatcher.flows[hop]
    feed(core, answer(fwd, 200), downstream)
    assert not core.contexts  # the response context ends with the 2xx (RFC 6026 Accepted keeps the client txn)
    feed(core, answer(fwd, 200), downstream)
    assert upstream.statuses() == [100, 200, 200]
    assert [where for _, where in upstream.sent] == [upstream.remote] * 3  # the source, not 192.0.2.66:5099
    assert len(dispatcher.sent) == 1 and core.counters["stray_responses"] == 0


def test_a_response_matching_no_transaction_is_dropped_and_counted() -> None:
    core, dispatcher, _ = make_core()
    for status, via in [(200, "UDP 192.0.2.50:5060"), (180, "TCP 192.0.2.50:5060"), (401, "UDP 192.0.2.50:5060;maddr=192.0.2.51")]:
        forged = (
            f"SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKforged\r\nVia: SIP/2.0/{via};branch=z9hG4bKv\r\n"
            "From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\nCall-ID: f\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        assert feed(core, forged).sent == []
    assert dispatcher.sent == [] and core.counters["stray_responses"] == 3


def test_double_record_route_when_tls_comes_in_and_udp_goes_out() -> None:
    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.20:5062;transport=udp"))
    tls = RecordingFlow(("192.0.2.9", 40000), "TLS", ("127.0.0.1", 5061))
    feed(core, request("sip:bob@example.com", "INVITE", via="SIP/2.0/TLS 192.0.2.9:40000;branch=z9hG4bKt"), tls)
    ((fwd, _),) = dispatcher.sent
    assert fwd.headers.get_all("Record-Route") == [
        f"<sip:127.0.0.1:5060;transport=udp;lr;r2=on{ours(core)}>",
        f"<sip:127.0.0.1:5061;transport=tls;lr;r2=on{ours(core)}>",
    ]


def test_in_dialog_bye_follows_route_set_and_our_route_is_removed() -> None:
    core, dispatcher, _ = make_core()
    feed(core, request("sip:bob@192.0.2.20:5062", "BYE", to_tag="callee",
                       extra=f"Route: <sip:127.0.0.1:5060;transport=udp;lr{ours(core, between=('192.0.2.9', '192.0.2.30'))}>, <sip:192.0.2.30;lr>\r\n"))
    ((fwd, hop),) = dispatcher.sent
    assert hop == ("UDP", "192.0.2.30", 5060)
    assert fwd.headers.get_values("Route") == ["<sip:192.0.2.30;lr>"]
    assert str(fwd.uri) == "sip:bob@192.0.2.20:5062"


@pytest.mark.parametrize(
    "source, uri",
    [("192.0.2.66", "sip:bob@192.0.2.20:5062"), ("192.0.2.9", "sip:victim@192.0.2.77"), ("192.0.2.20", "sip:victim@192.0.2.77")],
    ids=["stranger-replays-the-token", "caller-aims-elsewhere", "callee-aims-elsewhere"],
)
def test_a_token_only_carries_requests_between_the_dialogs_two_hosts(source: str, uri: str) -> None:
    """A Record-Route token seen on the wire (by a callee, a gateway, a trace)
    is no relay: it is bound to the caller's address and the host we sent to."""
    core, dispatcher, _ = make_core()
    for method in ("BYE", "MESSAGE", "INVITE", "ACK"):
        flow = feed(core, request(uri, method, to_tag="callee", via=f"SIP/2.0/UDP {source}:5070;branch=z9hG4bK{method}",
                                  extra=f"Route: <sip:127.0.0.1:5060;lr{ours(core)}>\r\n"), RecordingFlow((source, 5070)))
        assert dispatcher.sent == [], method
        assert (flow.statuses() == []) if method == "ACK" else (flow.statuses()[-1] >= 400), method


def test_strict_router_rewrite_is_undone() -> None:
    core, dispatcher, _ = make_core()
    feed(core, request(f"sip:127.0.0.1:5060;lr{ours(core)}", "BYE", to_tag="callee", extra="Route: <sip:bob@192.0.2.20:5062>\r\n"))
    ((fwd, hop),) = dispatcher.sent
    assert str(fwd.uri) == "sip:bob@192.0.2.20:5062" and hop == ("UDP", "192.0.2.20", 5062)
    assert "Route" not in fwd.headers


def test_ack_for_2xx_is_forwarded_statelessly_with_the_same_branch() -> None:
    core, dispatcher, _ = make_core()
    ack = request("sip:bob@192.0.2.20:5062", "ACK", via="SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bKack", to_tag="callee",
                  extra=f"Route: <sip:127.0.0.1:5060;lr{ours(core)}>\r\n")
    feed(core, ack)
    feed(core, ack)
    (first, hop1), (second, hop2) = dispatcher.sent
    assert hop1 == hop2 == ("UDP", "192.0.2.20", 5062)
    assert first.top_via.branch == second.top_via.branch
    assert core.transactions.counts()["server"] == 0


def test_parallel_fork_best_response_and_cancel_of_others() -> None:
    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.21", "sip:bob@192.0.2.22"))
    upstream = feed(core, request("sip:fork@example.com", "INVITE"))
    (a, hop_a), (b, hop_b) = dispatcher.sent
    feed(core, answer(a, 180, "a"), dispatcher.flows[hop_a])
    feed(core, answer(b, 180, "b"), dispatcher.flows[hop_b])
    feed(core, answer(b, 200, "b"), dispatcher.flows[hop_b])
    cancels = dispatcher.requests("CANCEL")
    assert [c.top_via.branch for c in cancels] == [a.top_via.branch]
    assert cancels[0].headers.get("Reason").startswith("SIP;cause=200")
    feed(core, answer(a, 487, "a"), dispatcher.flows[hop_a])
    assert upstream.statuses() == [100, 180, 180, 200]
    assert dispatcher.requests("ACK")[0].top_via.branch == a.top_via.branch  # hop-by-hop ACK of the 487


def test_a_branch_failing_after_another_branch_answered_2xx_ends_quietly() -> None:
    # The server transaction lets its request go once the 2xx is sent; a
    # branch that fails afterwards (here: no answer, Timer B) must still end
    # without an error and without a second final upstream.
    core, dispatcher, clock = make_core(Relay("sip:bob@192.0.2.21", "sip:bob@192.0.2.22"))
    upstream = feed(core, request("sip:fork@example.com", "INVITE"))
    (a, hop_a), (b, hop_b) = dispatcher.sent
    feed(core, answer(b, 200, "b"), dispatcher.flows[hop_b])
    for _ in range(70):
        clock.advance(1)  # branch a never answers: Timer B (32 s), then every timer runs out
    assert upstream.statuses() == [100, 200]
    assert core.contexts == {}
    assert core.transactions.counts()["server"] == 0 and core.transactions.counts()["client"] == 0


def test_transactions_waiting_out_their_timers_keep_no_parsed_request() -> None:
    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.20"))
    feed(core, request("sip:bob@example.com", "INVITE"))
    fwd, hop = dispatcher.sent[-1]
    feed(core, answer(fwd, 200), dispatcher.flows[hop])
    (server,) = core.transactions._servers.values()
    (client,) = core.transactions._clients.values()
    assert (server.state, client.state) == ("Accepted", "Accepted")
    assert server.request is None and client.request is None and client._data == b""


def test_best_of_failures_and_503_becomes_500() -> None:
    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.21", "sip:bob@192.0.2.22"))
    upstream = feed(core, request("sip:fork@example.com", "INVITE"))
    (a, hop_a), (b, hop_b) = dispatcher.sent
    feed(core, answer(a, 503, "a"), dispatcher.flows[hop_a])
    assert upstream.statuses() == [100]
    feed(core, answer(b, 486, "b"), dispatcher.flows[hop_b])
    assert upstream.statuses() == [100, 486]

    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.21"))
    upstream = feed(core, request("sip:bob@example.com", "INVITE"))
    ((a, hop_a),) = dispatcher.sent
    feed(core, answer(a, 503), dispatcher.flows[hop_a])
    assert upstream.statuses() == [100, 500]


def test_cancel_from_upstream_cancels_ringing_branch_and_487_goes_up() -> None:
    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.20"))
    upstream = feed(core, request("sip:bob@example.com", "INVITE"))
    ((inv, hop),) = dispatcher.sent
    feed(core, answer(inv, 180), dispatcher.flows[hop])
    cancel_flow = feed(core, request("sip:bob@example.com", "CANCEL").replace(b"CSeq: 7 CANCEL", b"CSeq: 7 CANCEL"))
    assert cancel_flow.statuses() == [100, 180, 200] or cancel_flow.statuses()[-1] == 200
    (cancel,) = dispatcher.requests("CANCEL")
    assert cancel.top_via.branch == inv.top_via.branch and str(cancel.uri) == str(inv.uri)
    feed(core, answer(inv, 487), dispatcher.flows[hop])
    assert upstream.statuses()[-1] == 487


def test_cancel_for_unknown_transaction_gets_481() -> None:
    core, _, _ = make_core()
    assert feed(core, request("sip:bob@example.com", "CANCEL")).statuses() == [481]


def test_timer_c_cancels_a_branch_that_only_rings_and_answers_408() -> None:
    core, dispatcher, clock = make_core(Relay("sip:bob@192.0.2.20"), timer_c=180)
    upstream = feed(core, request("sip:bob@example.com", "INVITE"))
    ((inv, hop),) = dispatcher.sent
    feed(core, answer(inv, 180), dispatcher.flows[hop])
    clock.advance(100)
    feed(core, answer(inv, 180), dispatcher.flows[hop])  # a provisional resets timer C
    clock.advance(170)
    assert dispatcher.requests("CANCEL") == []
    clock.advance(11)
    assert len(dispatcher.requests("CANCEL")) == 1
    assert upstream.statuses()[-1] == 408


class ViaOurselves:
    """A misconfigured next hop that points back at this proxy."""

    name = "loop"

    def process(self, context):
        return Decision.relay([Target(uri=context.request.uri, next_hop=URI.parse("sip:127.0.0.1:5060"))])


def test_loop_is_detected_but_a_spiral_is_not() -> None:
    core, dispatcher, _ = make_core(ViaOurselves())
    upstream = feed(core, request("sip:bob@example.com", "INVITE"))
    ((fwd, hop),) = dispatcher.sent
    assert hop == ("UDP", "127.0.0.1", 5060)
    again = RecordingFlow(("127.0.0.1", 5060))
    core.message_received(parse_message(fwd.serialise()), again)
    assert again.statuses() == [100, 482]
    assert upstream.statuses() == [100]

    core, dispatcher, _ = make_core(Relay("sip:bob@127.0.0.1:5060"))
    feed(core, request("sip:bob@example.com", "INVITE"))
    ((fwd, hop),) = dispatcher.sent
    spiral = RecordingFlow(("127.0.0.1", 5060))
    core.message_received(parse_message(fwd.serialise()), spiral)
    assert 482 not in spiral.statuses() and len(dispatcher.sent) == 2  # the Request-URI changed: a spiral, forwarded again


def test_finished_calls_leave_no_state() -> None:
    core, dispatcher, clock = make_core(Relay("sip:bob@192.0.2.20"))
    for i in range(200):
        upstream = feed(core, request("sip:bob@example.com", "INVITE", via=f"SIP/2.0/UDP 192.0.2.9:5070;branch=z9hG4bK{i}").replace(b"c1@example.com", f"call{i}".encode()))
        fwd, hop = dispatcher.sent[-1]
        feed(core, answer(fwd, 200), dispatcher.flows[hop])
        assert upstream.statuses()[-1] == 200
    for _ in range(100):
        clock.advance(1)
    assert core.contexts == {}
    assert core.transactions.counts()["server"] == 0 and core.transactions.counts()["client"] == 0
    assert clock.getDelayedCalls() == []


def test_request_too_big_for_udp_goes_over_tcp_unless_uri_insists() -> None:
    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.20:5062"))
    big = b"v=0\r\n" + b"a=x-padding:" + b"p" * 1200 + b"\r\n"
    feed(core, request("sip:bob@example.com", "INVITE", body=big, extra="Content-Type: application/sdp\r\n"))
    ((fwd, hop),) = dispatcher.sent
    assert hop == ("TCP", "192.0.2.20", 5062) and fwd.top_via.transport == "TCP"

    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.20:5062;transport=udp"))
    feed(core, request("sip:bob@example.com", "INVITE", body=big, extra="Content-Type: application/sdp\r\n"))
    ((fwd, hop),) = dispatcher.sent
    assert hop[0] == "UDP"


def test_top_via_gets_received_and_rport_filled_in() -> None:
    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.20:5062"))
    upstream = feed(core, request("sip:bob@example.com", "INVITE", via="SIP/2.0/UDP phone.example.com:5070;branch=z9hG4bKr;rport"))
    ((fwd, _),) = dispatcher.sent
    theirs = fwd.vias[1]
    assert (theirs.received, theirs.rport) == ("192.0.2.9", "40000")
    (trying,) = upstream.messages()
    assert trying.top_via.rport == "40000" and upstream.sent[0][1] == ("192.0.2.9", 40000)


@pytest.mark.parametrize(
    "via, received",
    [("SIP/2.0/UDP phone.example.com:5070;branch=z9hG4bKr", "192.0.2.9"), ("SIP/2.0/UDP 192.0.2.9:40000;branch=z9hG4bKr", None)],
    ids=["sent-by-differs", "sent-by-is-the-source"],
)
def test_received_is_added_when_sent_by_differs_rport_or_not(via: str, received: str | None) -> None:
    """RFC 3261 18.2.1: received whenever the sent-by host is not the source,
    without rport too, and only then (mutants _mark_source 13, 4)."""
    core, dispatcher, _ = make_core(Relay("sip:bob@192.0.2.20:5062"))
    feed(core, request("sip:bob@example.com", "INVITE", via=via))
    ((fwd, _),) = dispatcher.sent
    assert (fwd.vias[1].received, fwd.vias[1].rport) == (received, None)


def test_to_tag_without_our_route_set_is_not_relayed() -> None:
    """Toll-fraud guard: a fresh INVITE with a forged To tag must not ride the
    in-dialog path to an arbitrary host, and neither may a stray ACK."""
    core, dispatcher, _ = make_core()
    upstream = feed(core, request("sip:+19005550100@198.51.100.7", "INVITE", to_tag="forged"))
    assert upstream.statuses() == [100, 404] and dispatcher.sent == []
    feed(core, request("sip:+19005550100@198.51.100.7", "ACK", to_tag="forged"))
    assert dispatcher.sent == []
