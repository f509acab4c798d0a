"""A finished transaction waiting out its timer keeps only what it may still
need: no parsed message, none of the TU's objects it can no longer call, and
in the proxy no request context (bench/bench_memory.py measures the bytes).

Every test also checks that the kept state still does the RFC 3261 work:
a retransmitted request gets the same final response, an ACK for a non-2xx
is absorbed, a 2xx retransmission still reaches the TU.
"""

from __future__ import annotations

import gc
from pathlib import Path
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any

from test_media_policy import DTLS, answer, forwarded_context_gone, make, offer, upstream
from test_transaction import World, request, response

from sipshield.message import Message
from sipshield.proxy import RequestContext
from sipshield.transaction import ACCEPTED, COMPLETED, CONFIRMED

_OWN = ("sipshield.transaction", "sipshield.proxy", "sipshield.message")
"""Objects whose insides are walked; the rest (a stage, a test's flow, a
logger) are shared with the proxy, not kept by the transaction."""


def reachable(root: object, stop: tuple[object, ...]) -> list[object]:
    """Every object reachable from *root* without passing through *stop* (the
    layer, the TU, the proxy core, the flows: what outlives a transaction),
    nor through a function (a timer's reactor call leads to every module)."""
    seen = {id(s) for s in stop}
    found, todo = [], [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, ModuleType, FunctionType, BuiltinFunctionType)):
            continue
        if isinstance(obj, MethodType):
            todo.append(obj.__self__)  # what a kept callback keeps
            continue
        seen.add(id(obj))
        found.append(obj)
        if type(obj).__module__.startswith(_OWN) or type(obj).__module__ == "builtins":
            todo.extend(gc.get_referents(obj))
    return found


def messages_in(root: object, *stop: object) -> list[object]:
    return [o for o in reachable(root, stop) if isinstance(o, (Message, RequestContext))]


def test_a_non_invite_server_in_completed_keeps_the_final_bytes_only_and_resends_them() -> None:
    w = World()
    req = request("OPTIONS", branch="z9hG4bK-r1")
    w.layer.handle_request(req, w.upstream)
    (txn,) = w.server_txns
    txn.send_response(req.make_response(200, to_tag="t"))
    del req
    assert txn.state is COMPLETED and txn.request is None
    assert messages_in(txn, w.layer, w.upstream, w.clock) == []
    w.take()
    w.layer.handle_request(request("OPTIONS", branch="z9hG4bK-r1"), w.upstream)
    assert w.take() == [(0.0, "send", "up", "SIP/2.0 200 OK")]
    assert w.upstream.sent[-1] == w.upstream.sent[-2]  # the same bytes, not a response made again


def test_an_invite_server_keeps_its_final_until_the_ack_and_nothing_after() -> None:
    w = World()
    req = request("INVITE", branch="z9hG4bK-r2")
    w.layer.handle_request(req, w.upstream)
    (txn,) = w.server_txns
    txn.send_response(req.make_response(486, to_tag="t"))
    assert txn.state is COMPLETED and txn.request is None and txn._last is not None
    w.take()
    w.layer.handle_request(request("INVITE", branch="z9hG4bK-r2"), w.upstream)  # retransmitted: the 486 again
    assert w.take() == [(0.0, "send", "up", "SIP/2.0 486 Busy Here")]
    w.layer.handle_request(request("ACK", branch="z9hG4bK-r2", to_tag="t"), w.upstream)
    assert txn.state is CONFIRMED and txn._last is None
    w.layer.handle_request(request("ACK", branch="z9hG4bK-r2", to_tag="t"), w.upstream)  # absorbed
    w.layer.handle_request(request("INVITE", branch="z9hG4bK-r2"), w.upstream)  # absorbed
    assert w.take() == [] and txn.state is CONFIRMED
    assert messages_in(txn, w.layer, w.upstream, w.clock) == []


def test_an_invite_server_in_accepted_keeps_no_bytes_and_absorbs_a_retransmitted_invite() -> None:
    w = World()
    req = request("INVITE", branch="z9hG4bK-r3")
    w.layer.handle_request(req, w.upstream)
    (txn,) = w.server_txns
    txn.send_response(req.make_response(200, to_tag="t"))
    assert txn.state is ACCEPTED and txn.request is None and txn._last is None
    w.take()
    w.layer.handle_request(request("INVITE", branch="z9hG4bK-r3"), w.upstream)
    assert w.take() == []  # RFC 6026 8.7
    assert txn.send_response(req.make_response(200, to_tag="t"))  # the TU's retransmission passes (8.6)
    assert [e[1:3] for e in w.take()] == [("send", "up")]


def test_client_transactions_past_their_final_hold_no_message_and_only_the_callback_they_may_call() -> None:
    w = World()
    invite, options = request("INVITE", branch="z9hG4bK-c7"), request("OPTIONS", branch="z9hG4bK-c8")
    ok = w.start(invite)
    done = w.start(options)
    w.layer.handle_response(response(invite, 200), w.downstream)
    w.layer.handle_response(response(options, 200), w.downstream)
    assert ok.state is ACCEPTED and done.state is COMPLETED
    del invite, options
    tu: tuple[Any, ...] = (w.layer, w.clock, w.downstream)
    for txn in (ok, done):
        assert txn.request is None and txn.flow is None and messages_in(txn, *tu) == []
    # Accepted keeps the one callback it still calls (every 2xx, RFC 6026 7.2), Completed none of the TU's.
    assert [cb.__self__ is w for cb in (ok._response_cb, ok._timeout_cb, ok._error_cb) if hasattr(cb, "__self__")] == [True]
    assert not any(hasattr(cb, "__self__") for cb in (done._response_cb, done._timeout_cb, done._error_cb))
    w.take()
    again = request("INVITE", branch="z9hG4bK-c7")
    w.layer.handle_response(response(again, 200), w.downstream)  # retransmitted 2xx: still to the TU
    w.layer.handle_response(response(request("OPTIONS", branch="z9hG4bK-c8"), 200), w.downstream)  # absorbed
    assert w.take() == [(0.0, "response", 200, ACCEPTED)]


def test_a_finished_call_keeps_no_request_for_its_late_2xx_and_still_judges_them(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path, "mandatory")
    try:
        flow, (forwarded,) = offer(proxy, DTLS)
        answer(proxy, forwarded, 200, DTLS)
        assert forwarded_context_gone(proxy)
        (client,) = [t for t in proxy.core.transactions._clients.values() if t.method == "INVITE"]
        assert client.state is ACCEPTED
        del forwarded
        assert messages_in(client, proxy.core, proxy.core.transactions, flow, proxy.service) == []
        answer_sent = len(upstream(flow))
        # The late 2xx are still judged by the filters, from the kept bytes.
        ((hop,),) = [[h for m, h in proxy.dispatcher.sent if m.method == "INVITE"]]
        relayed = [m for m, h in proxy.dispatcher.sent if m.method == "INVITE"][-1]
        answer(proxy, relayed, 200, DTLS, hop)  # a retransmission: relayed
        assert [m.status for m in upstream(flow)[answer_sent:]] == [200]
    finally:
        proxy.stop()
