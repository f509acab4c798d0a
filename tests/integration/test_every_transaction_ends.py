"""Every transaction ends, whatever fails (issue 7, "termination").

The whole service on Clock time, its UDP listener bound to a real socket on
loopback (so the real TransportDispatcher sends real datagrams, to a callee
socket on 127.0.0.5), and a Clock that also resolves host names as the
test says.  For each failure: the caller gets exactly one final answer, and
once every timer has run the live transaction and response-context tables
are empty.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pipeline_support import RecordingFlow, build_service, feed
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from sipshield.message import Response, parse_message
from sipshield.routing import Pipeline, Router

CALLER = ("127.0.0.2", 40000)
ZERO = {"server": 0, "client": 0, "rfc2543_ack": 0, "sources": 0}


class ResolvingClock(Clock):
    """A Clock that is also the resolver: ``answers[name]`` is an address, an
    exception to fail with, or a Deferred the test fires (or never does)."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, object] = {}
        self.asked: list[str] = []

    def resolve(self, name: str, timeout: object = None) -> Deferred[str]:
        self.asked.append(name)
        answer = self.answers.get(name, DNSLookupError(name))
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(str(answer))


@pytest.fixture
def callee():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.5", 0))
    except OSError as error:
        sock.close()
        pytest.skip(f"cannot bind 127.0.0.5 on loopback: {error}")
    sock.setblocking(False)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[bytes]:
    """What reached the callee (a datagram sent on loopback is there at once)."""
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            return out


@pytest.fixture
def make(tmp_path: Path):
    built = []

    def build(limits: dict | None = None, auth: dict | None = None):
        config: dict = {"limits": limits} if limits else {}
        if auth:
            config["auth"] = auth
        clock = ResolvingClock()
        svc = build_service(tmp_path, config, clock=clock, data_dir=f"data{len(built)}", inline_lookups=False)
        (listener,) = svc.listeners
        listener.reactor = global_reactor  # a real socket; it only sends here
        listener.listen()
        svc.core.add_local_address(*listener.address)
        built.append((svc, listener))
        return svc, clock

    yield build
    for svc, listener in built:
        svc.transactions.stop()
        listener.port.stopListening()


def routed_by(svc, router: Router) -> None:
    """Route with *router* alone, admitting everything (what is tested here
    is what happens after admission)."""
    svc.core.admission = ()
    svc.core.pipeline = Pipeline([router], reactor=svc.reactor, stage_timeout=svc.config.limits.stage_timeout)


class To(Router):
    name = "to"

    def __init__(self, *targets: str) -> None:
        super().__init__()
        self.targets = list(targets)

    def route(self, context):
        return self.targets


def request(method: str = "MESSAGE", call_id: str = "c1", extra: str = "", to_tag: str = "", ruri: str = "sip:bob@example.com", branch: str = "") -> bytes:
    branch = branch or f"z9hG4bK{call_id}{method}"
    return (
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch={branch}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag=f1\r\nTo: <sip:bob@example.com>{';tag=' + to_tag if to_tag else ''}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def finals(flow: RecordingFlow) -> list[Response]:
    """The final answers the caller got (a retransmission, byte for byte the same, is the same answer)."""
    distinct = dict.fromkeys(data for data, _ in flow.sent)
    return [m for m in map(parse_message, distinct) if isinstance(m, Response) and m.status >= 200]


def assert_all_ended(svc, clock: Clock) -> None:
    clock.pump([0.5] * 420)  # past timer C (180 s), Timer B/F/H/J/L (32 s) and every retransmission
    assert svc.transactions.counts() == ZERO
    assert svc.core.contexts == {}


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# -- a malformed header found late ---------------------------------------------------------------


TRUSTED = {"trusted_sources": ["127.0.0.2/32"], "trusted_role": "staff"}


def test_a_malformed_route_found_after_admission_gets_one_400_on_its_transaction(make) -> None:
    """A trusted source's request is admitted without a look at its Route;
    route pre-processing reads it first, with the transaction in place."""
    svc, clock = make(auth=TRUSTED)
    flow = feed(svc.core, request("BYE", to_tag="t1", extra="Route: <sip:[bad>\r\n"), RecordingFlow(CALLER, transport="TCP"))
    assert svc.core.counters["stateless_replies"] == 0  # answered on its transaction
    ((answer,),) = [finals(flow)]
    assert answer.status == 400 and "IPv6" in answer.reason
    assert_all_ended(svc, clock)
    assert len(finals(flow)) == 1  # the transaction retransmitted nothing else


def test_a_malformed_contact_in_a_register_gets_one_400(make) -> None:
    svc, clock = make(auth=TRUSTED)
    flow = RecordingFlow(CALLER, transport="TCP")  # trusted sources hold over TCP
    feed(svc.core, request("REGISTER", ruri="sip:example.com", extra="Contact: <sip:alice@[bad>\r\n"), flow)
    ((answer,),) = [finals(flow)]
    assert answer.status == 400
    assert_all_ended(svc, clock)


def test_a_malformed_route_a_router_adds_gets_one_400_and_nothing_is_left(make) -> None:
    class BadPath(Router):
        def route(self, context):
            from sipshield.message import URI
            from sipshield.routing import Target

            return [Target(uri=URI.parse("sip:bob@127.0.0.5"), route=("<sip:[bad>",))]

    svc, clock = make()
    routed_by(svc, BadPath())
    flow = feed(svc.core, request(), RecordingFlow(CALLER))
    assert [m.status for m in finals(flow)] == [400]
    assert svc.core.contexts == {}
    assert_all_ended(svc, clock)


# -- a target that cannot be resolved ------------------------------------------------------------


def test_an_unresolvable_target_gets_one_final_answer_and_nothing_is_sent(make, callee) -> None:
    svc, clock = make()
    routed_by(svc, To("sip:bob@nowhere.invalid"))
    flow = feed(svc.core, request(), RecordingFlow(CALLER))
    assert clock.asked == ["nowhere.invalid"]
    assert [m.status for m in finals(flow)] == [500]
    assert received(callee) == []
    assert_all_ended(svc, clock)
    assert len(finals(flow)) == 1


def test_a_slow_resolution_is_waited_for_never_answered_503_while_the_request_goes_out(make, callee) -> None:
    svc, clock = make()
    port = callee.getsockname()[1]
    pending: Deferred[str] = Deferred()
    clock.answers["callee.example.net"] = pending
    routed_by(svc, To(f"sip:bob@callee.example.net:{port}"))
    flow = feed(svc.core, request(), RecordingFlow(CALLER))
    assert finals(flow) == [] and len(svc.core.contexts) == 1
    clock.advance(1)
    pending.callback("127.0.0.5")
    (sent,) = received(callee)
    forwarded = parse_message(sent)
    assert forwarded.method == "MESSAGE"
    svc.core.message_received(forwarded.make_response(200, "OK", to_tag="b1"), RecordingFlow(("127.0.0.5", port)))
    assert [m.status for m in finals(flow)] == [200]
    assert_all_ended(svc, clock)
    assert [m.status for m in finals(flow)] == [200]


def test_a_resolution_that_never_answers_ends_at_the_deadline_with_one_final(make, callee) -> None:
    svc, clock = make(limits={"stage_timeout": 2})
    clock.answers["silent.example.net"] = Deferred()
    routed_by(svc, To("sip:bob@silent.example.net"))
    flow = feed(svc.core, request("INVITE"), RecordingFlow(CALLER))
    assert [m.status for m in flow.messages()] == [100]
    clock.advance(2)
    assert [m.status for m in finals(flow)] == [500]
    assert received(callee) == []
    assert_all_ended(svc, clock)


def test_a_cancel_while_resolving_ends_the_call_with_487_and_sends_nothing(make, callee) -> None:
    svc, clock = make()
    pending: Deferred[str] = Deferred()
    clock.answers["callee.example.net"] = pending
    routed_by(svc, To("sip:bob@callee.example.net"))
    flow = feed(svc.core, request("INVITE"), RecordingFlow(CALLER))
    cancel = feed(svc.core, request("CANCEL", branch="z9hG4bKc1INVITE"), RecordingFlow(CALLER))
    cancel_answers = [m.status for m in finals(cancel)]
    pending.callback("127.0.0.5")
    assert cancel_answers == [200] and [m.status for m in finals(flow)] == [487]
    assert received(callee) == []
    assert_all_ended(svc, clock)


def test_an_ipv6_next_hop_on_an_ipv4_only_proxy_gets_one_final_answer(make) -> None:
    svc, clock = make()
    routed_by(svc, To("sip:bob@[::1]:5099"))
    flow = feed(svc.core, request("INVITE"), RecordingFlow(CALLER))
    assert [(m.status, m.reason) for m in flow.messages()] == [(100, "Trying"), (502, "Bad Gateway: no UDP listener for IPv6")]
    assert_all_ended(svc, clock)


def test_one_failing_branch_does_not_finish_the_context_before_the_others_are_sent(make, callee) -> None:
    svc, clock = make()
    port = callee.getsockname()[1]
    routed_by(svc, To("sip:bob@[::1]:5099", f"sip:bob@127.0.0.5:{port}"))
    flow = feed(svc.core, request(), RecordingFlow(CALLER))
    assert finals(flow) == []  # the IPv6 branch failed; the other is out
    (sent,) = received(callee)
    svc.core.message_received(parse_message(sent).make_response(200, "OK", to_tag="b1"), RecordingFlow(("127.0.0.5", port)))
    assert [m.status for m in finals(flow)] == [200]
    assert_all_ended(svc, clock)


# -- raising Router hooks ------------------------------------------------------------------------


def test_a_raising_route_hook_gets_one_500(make) -> None:
    class Broken(Router):
        def route(self, context):
            raise RuntimeError("router bug")

    svc, clock = make()
    routed_by(svc, Broken())
    flow = feed(svc.core, request("INVITE"), RecordingFlow(CALLER))
    assert [m.status for m in flow.messages()] == [100, 500]
    assert_all_ended(svc, clock)


def relay_and_answer(svc, callee: socket.socket, router: Router, status: int) -> RecordingFlow:
    routed_by(svc, router)
    flow = feed(svc.core, request(), RecordingFlow(CALLER))
    (sent,) = received(callee)
    svc.core.message_received(parse_message(sent).make_response(status, to_tag="b1"), RecordingFlow(callee.getsockname()))
    return flow


def test_a_raising_response_hook_is_logged_and_skipped_and_the_response_still_goes_upstream(make, callee, logged) -> None:
    class Noisy(To):
        def on_response(self, context, response):
            raise RuntimeError("hook bug")

    svc, clock = make()
    flow = relay_and_answer(svc, callee, Noisy(f"sip:bob@127.0.0.5:{callee.getsockname()[1]}"), 486)
    assert [m.status for m in finals(flow)] == [486]
    assert [e for e in logged if "response hook" in e.get("log_format", "") and e.get("log_failure") is not None]
    assert_all_ended(svc, clock)


def test_a_response_hook_may_replace_the_final_response(make, callee) -> None:
    class Rewrite(To):
        def on_response(self, context, response):
            return Response(480, "Temporarily Unavailable", response.headers, b"")

    svc, clock = make()
    flow = relay_and_answer(svc, callee, Rewrite(f"sip:bob@127.0.0.5:{callee.getsockname()[1]}"), 486)
    assert [(m.status, m.reason) for m in finals(flow)] == [(480, "Temporarily Unavailable")]
    assert_all_ended(svc, clock)


# -- a stage whose Deferred never fires ----------------------------------------------------------


def test_a_stage_that_never_decides_gets_500_after_stage_timeout_with_one_log_line(make, logged) -> None:
    """The real pipeline: the auth stage asks a credential backend whose
    thread pool never runs (a hung database), for a request whose nonce was
    issued to its source (so it is admitted)."""
    svc, clock = make(limits={"stage_timeout": 3})
    nonce = svc.nonces.issue("example.com", CALLER[0])
    auth = (f'Proxy-Authorization: Digest username="alice", realm="example.com", nonce="{nonce}", uri="sip:bob@example.com", '
            'response="' + "0" * 64 + '", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c0ffee"\r\n')
    flow = feed(svc.core, request("INVITE", extra=auth), RecordingFlow(CALLER))
    assert [m.status for m in flow.messages()] == [100]
    clock.advance(2.9)
    assert finals(flow) == []
    clock.advance(0.2)
    assert [m.status for m in finals(flow)] == [500]
    lines = [e for e in logged if "gave no decision" in e.get("log_format", "")]
    assert len(lines) == 1 and lines[0]["stage"] == "auth" and lines[0].get("log_failure") is None
    assert_all_ended(svc, clock)
    assert len(finals(flow)) == 1
