"""Bounded state for everyone: live server transactions are capped globally
and per source IP ([limits] max_transactions, max_transactions_per_source).

The whole service (default stages, digest auth included) on Clock time; the
requests that get a transaction are in-dialog BYEs on a Route this proxy
signed (admitted without a challenge), relayed to a callee that never
answers, so their server transactions stay live until Timer F and J.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_support import RecordingDispatcher, RecordingFlow, build_service, feed

from sipshield.config import parse_config
from sipshield.message import Request, parse_message
from sipshield.proxy import endpoints

CALLEE = "127.0.0.5"
MALLORY = ("127.0.0.2", 40000)
ZERO = {"server": 0, "client": 0, "rfc2543_ack": 0, "sources": 0}


TRUSTED = ("127.0.0.9", 40000)


@pytest.fixture
def service(tmp_path: Path):
    config = {
        "limits": {"max_transactions": 3, "max_transactions_per_source": 2},
        "auth": {"trusted_sources": [{"network": f"{TRUSTED[0]}/32", "udp": True}], "trusted_role": "admin"},
    }
    dispatcher = RecordingDispatcher()
    svc = build_service(tmp_path, config, dispatcher=dispatcher)
    yield svc, svc.reactor, dispatcher
    svc.transactions.stop()


def in_dialog(svc, method: str, call_id: str, source: tuple[str, int], branch: str | None = None, cseq: int = 2) -> bytes:
    route = f"<sip:127.0.0.1:5060;transport=udp;lr;ss={svc.core.signer.token(call_id, 'f1', endpoints(source[0], CALLEE))}>"
    return (
        f"{method} sip:bob@{CALLEE} SIP/2.0\r\nVia: SIP/2.0/UDP {source[0]}:{source[1]};branch={branch or 'z9hG4bK' + call_id}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=f1\r\nTo: <sip:bob@example.com>;tag=t1\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nRoute: {route}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def bye(svc, call_id: str, source: tuple[str, int]) -> RecordingFlow:
    return feed(svc.core, in_dialog(svc, "BYE", call_id, source), RecordingFlow(source))


def fill_source(svc, source: tuple[str, int] = MALLORY) -> None:
    """Two live transactions from *source*: its cap in these tests."""
    for n in range(2):
        assert bye(svc, f"c{n}", source).sent == []  # admitted, relayed, no answer yet


def relayed(dispatcher: RecordingDispatcher, method: str) -> list[str]:
    return [m.call_id for m in dispatcher.requests(method)]


def test_over_the_per_source_cap_a_request_gets_one_stateless_503_with_retry_after(service) -> None:
    svc, clock, dispatcher = service
    mallory = MALLORY
    fill_source(svc)
    assert svc.transactions.counts() == {"server": 2, "client": 2, "rfc2543_ack": 0, "sources": 1}
    over = bye(svc, "c2", mallory)
    ((data, where),) = over.sent
    answer = parse_message(data)
    assert where == mallory and answer.status == 503 and answer.headers.get("Retry-After") == "5"
    assert relayed(dispatcher, "BYE") == ["c0", "c1"]  # not relayed
    assert svc.transactions.counts()["server"] == 2  # no transaction for it
    assert svc.core.counters["transaction_cap_refusals"] == 1
    # Another source still has room, up to the global cap.
    assert bye(svc, "d0", ("127.0.0.3", 40000)).sent == []
    ((data, _),) = bye(svc, "e0", ("127.0.0.4", 40000)).sent
    assert parse_message(data).status == 503
    assert svc.core.counters["transaction_cap_refusals"] == 2


def test_over_the_cap_an_invite_gets_no_100_trying_and_its_ack_no_answer(service) -> None:
    svc, clock, dispatcher = service
    mallory = MALLORY
    fill_source(svc)
    flow = feed(svc.core, in_dialog(svc, "INVITE", "c2", mallory), RecordingFlow(mallory))
    assert flow.statuses() == [503]
    assert relayed(dispatcher, "INVITE") == []
    # An ACK creates no transaction, so no cap applies: never answered, and
    # on a signed route set forwarded statelessly like any ACK for a 2xx.
    ack = feed(svc.core, in_dialog(svc, "ACK", "c2", mallory), flow)
    assert ack.statuses() == [503]
    assert relayed(dispatcher, "ACK") == ["c2"]
    assert svc.transactions.counts()["server"] == 2


def test_a_retransmission_of_a_live_transaction_is_absorbed_not_refused(service) -> None:
    svc, clock, dispatcher = service
    mallory = MALLORY
    fill_source(svc)
    assert bye(svc, "c1", mallory).sent == []
    assert svc.core.counters["transaction_cap_refusals"] == 0


def test_over_the_cap_a_cancel_for_a_live_invite_still_works(service) -> None:
    svc, clock, dispatcher = service
    caller = ("127.0.0.2", 40000)
    invite = feed(svc.core, in_dialog(svc, "INVITE", "call", caller, cseq=1), RecordingFlow(caller))
    assert invite.statuses() == [100]
    bye(svc, "c1", caller)  # the source is at its cap now
    (downstream,) = dispatcher.requests("INVITE")
    ringing = downstream.make_response(180, "Ringing", to_tag="t1")
    svc.core.message_received(ringing, RecordingFlow((CALLEE, 5060)))
    cancel = feed(svc.core, in_dialog(svc, "CANCEL", "call", caller, branch="z9hG4bKcall", cseq=1), RecordingFlow(caller))
    assert cancel.statuses() == [200]
    assert relayed(dispatcher, "CANCEL") == ["call"]
    # A CANCEL that matches nothing gets its 481, statelessly.
    stray = feed(svc.core, in_dialog(svc, "CANCEL", "nothing", caller, cseq=1), RecordingFlow(caller))
    assert stray.statuses() == [481]
    assert svc.core.counters["transaction_cap_refusals"] == 0


def test_when_the_transactions_end_the_source_leaves_the_table_and_is_admitted_again(service) -> None:
    svc, clock, dispatcher = service
    mallory = MALLORY
    fill_source(svc)
    assert bye(svc, "c2", mallory).statuses() == [503]
    clock.pump([0.5] * 140)  # Timer F (the callee never answered: 408 to the caller), then Timer J
    assert svc.transactions.counts() == ZERO and svc.core.contexts == {}
    assert bye(svc, "c3", mallory).sent == []
    assert isinstance(dispatcher.requests("BYE")[-1], Request) and relayed(dispatcher, "BYE")[-1] == "c3"


def test_the_caps_are_config_keys_with_sane_defaults() -> None:
    limits = parse_config({}).limits
    assert limits.max_transactions == 100000 and limits.max_transactions_per_source == 1000 and limits.stage_timeout == 10.0
    from sipshield.config import ConfigError

    with pytest.raises(ConfigError, match=r"limits.max_transactions_per_source: 0 is out of range"):
        parse_config({"limits": {"max_transactions_per_source": 0}})


def test_a_trusted_source_is_held_to_the_global_cap_only(service) -> None:
    """A trusted edge or trunk carries many callers' transactions: the
    per-source cap (2 here) does not apply to it, the global one (3) does."""
    svc, clock, dispatcher = service
    for n in range(3):
        assert bye(svc, f"t{n}", TRUSTED).sent == []  # admitted past the per-source cap of 2
    over = bye(svc, "t3", TRUSTED)
    assert over.statuses() == [503]
    assert svc.core.counters["transaction_cap_refusals"] == 1
