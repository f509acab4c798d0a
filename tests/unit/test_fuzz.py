"""The seeded mutation fuzzer (tests/sipfuzz.py) against the real service in
process: 10^4 messages, half over its UDP protocol, half over TCP
connections, from an unauthenticated source (answering digest challenges
with valid and broken credentials) and a trusted one.  Zero tracebacks, zero
5xx beyond the allowed ones (see sipfuzz: 503, 505, and 500 for a target
out of reach).  bench/fuzz.py runs the same for 10^5 and more.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from sipfuzz import ATTACKER, FuzzTarget, Mutator, SeedContext, messages, run

SEED = 4475
COUNT = 10_000


@pytest.fixture
def target(tmp_path: Path):
    t = FuzzTarget(tmp_path / "data")
    yield t
    t.close()


def test_ten_thousand_mutated_messages_over_udp_and_tcp_cause_no_traceback_and_no_500(target: FuzzTarget) -> None:
    report = run(target, COUNT, SEED)
    assert report.sent == COUNT
    assert report.findings == {}, report.summary()
    answers = report.answers
    # It reached the parser's refusals, the challenges, the registrar, the
    # proxy's own answers and relays: a fuzzer stuck at the door proves little.
    assert answers[400] > COUNT // 10 and answers[401] and answers[407] and answers[404] and answers[483]
    assert answers[200] and answers[100] and answers[408]  # 408: relayed, and the branch timed out
    assert target.service.core.counters["malformed"] > COUNT // 10
    # Every timer ran out in finish(): nothing is left behind.
    assert target.service.transactions.counts() == {"server": 0, "client": 0, "rfc2543_ack": 0, "sources": 0}
    assert target.service.core.contexts == {}


def test_the_harness_reports_an_exception_escaping_the_protocol(target: FuzzTarget, monkeypatch) -> None:
    def broken(response, flow):
        raise ValueError("planted")

    monkeypatch.setattr(target.service.core, "stray_response", broken)
    forged = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\nFrom: <sip:a@example.com>;tag=1\r\n"
              b"To: <sip:b@example.com>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    target.send_udp(forged, (ATTACKER, 5062))
    target.send_tcp(forged, ATTACKER)
    [finding] = target.report.findings.values()
    assert finding.count == 2 and finding.key.startswith("ValueError at ") and finding.first == forged


def test_the_harness_reports_a_500(target: FuzzTarget, monkeypatch) -> None:
    from sipshield.routing import Decision

    stage = target.service.pipeline.stages[0]
    # The OPTIONS to the proxy is answered at admission, before any process().
    monkeypatch.setattr(stage, "admission", lambda request, flow: Decision.reply(500, "Planted"))
    target.send_udp(f"OPTIONS sip:127.0.0.1:{target.proxy['UDP']} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bKo\r\n"
                    "Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: o\r\n"
                    "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".encode(), (ATTACKER, 5062))
    assert list(target.report.findings) == ["500 Planted"]


def test_a_seed_replays_the_same_messages() -> None:
    ctx = SeedContext(proxy=("127.0.0.1", 5060), source=(ATTACKER, 5062))
    first = list(itertools.islice(messages(7, ctx), 300))
    assert first == list(itertools.islice(messages(7, ctx), 300))
    assert first != list(itertools.islice(messages(8, ctx), 300))
    assert len(set(first)) > 250


def test_every_mutation_is_used() -> None:
    import random

    mutator = Mutator(random.Random(1))
    ctx = SeedContext(proxy=("127.0.0.1", 5060), source=(ATTACKER, 5062))
    stream = messages(1, ctx, mutate_rate=0)
    for data in itertools.islice(stream, 2000):
        mutator.mutate(data)
    assert set(mutator.counts) == {op.__name__ for op in mutator.ops}
