"""Log lines caused by remote input are rate-limited per kind and source."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger

from sipshield._ratelog import ThrottledLog


class Capture:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)


def make(per_kind: int = 20, max_sources: int = 1024) -> tuple[ThrottledLog, Capture, Clock]:
    capture = Capture()
    clock = Clock()
    return ThrottledLog(Logger(observer=capture), clock, interval=60.0, per_kind=per_kind, max_sources=max_sources), capture, clock


def test_one_line_per_source_per_interval_then_a_count_of_what_was_held() -> None:
    log, capture, clock = make()
    assert log.warn("malformed", "192.0.2.1", "bad {n}", n=1)
    for n in range(50):
        assert not log.warn("malformed", "192.0.2.1", "bad {n}", n=n)
    assert len(capture.events) == 1
    clock.advance(60)
    assert log.warn("malformed", "192.0.2.1", "bad {n}", n=99)
    assert capture.events[-1]["suppressed"] == 50
    assert "held back" in capture.events[-1]["log_format"]


def test_forged_sources_cannot_buy_a_line_each() -> None:
    log, capture, clock = make(per_kind=20)
    for i in range(10_000):
        log.warn("malformed", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "bad")
    assert len(capture.events) == 20
    other = log.warn("refused", "192.0.2.1", "another kind has its own budget")
    assert other and len(capture.events) == 21


def test_remembered_sources_are_bounded() -> None:
    log, capture, clock = make(per_kind=10_000, max_sources=8)
    for i in range(100):
        log.warn("malformed", f"192.0.2.{i}", "bad")
    assert len(log._kinds["malformed"].sources) == 8
