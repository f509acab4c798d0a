"""The admin API's rates and top talkers (sipshield/ops/_rates.py): the
bounded heavy-hitters tally the core counts sources in, the alerts' counter
window the rates come from, and both through the real service on Clock
time (wrong passwords from a guesser, requests from bystanders)."""

from __future__ import annotations

from pathlib import Path

from pipeline_support import PASSWORD, Proxy, proxy_service

from sipshield._tally import SourceTally
from sipshield.ops._alerts import CounterWindow
from sipshield.ops._rates import SAMPLE_INTERVAL, TALKER_PERIOD

GUESSER = ("127.0.0.5", 5070)


def test_a_heavy_sender_stays_in_the_tally_through_a_flood_of_forged_sources() -> None:
    tally = SourceTally(capacity=64)
    for n in range(20_000):
        tally.add(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")  # every datagram from a new forged address
        if n % 10 == 0:
            tally.add("203.0.113.7")  # 1 in 11 of the messages
        assert len(tally.counts) <= 64
    ((top, count),) = tally.top(1)
    assert top == "203.0.113.7"
    assert 2000 - tally.discounted <= count <= 2000  # Misra-Gries: low by at most the rebuilds


def test_a_known_source_is_counted_in_place_and_periods_rotate() -> None:
    tally = SourceTally(capacity=4)
    for source in ("a", "b", "a", "c", "a"):
        tally.add(source)
    counts = tally.counts
    tally.add("b")
    assert tally.counts is counts and tally.counts == {"a": 3, "b": 2, "c": 1}
    tally.rotate()
    tally.add("c")
    assert tally.top(2) == [("a", 3), ("b", 2)] and tally.totals()["c"] == 2
    tally.rotate()
    assert tally.top(5) == [("c", 1)]  # two periods on, the first is forgotten


def test_the_counter_window_gives_the_rate_over_the_span_asked() -> None:
    window = CounterWindow(60, 5)
    assert window.rate() is None
    for t in range(0, 65, 5):
        window.add(float(t), float(t * 2 if t < 40 else 80 + (t - 40) * 10))
    assert window.rate(20) == (10.0, 20.0)  # the last 20 s: 10 a second
    rate = window.rate()
    assert rate is not None and rate[1] == 60.0 and abs(rate[0] - 280 / 60) < 1e-9
    window.add(65.0, 3.0)  # the counter's owner restarted
    assert window.rate() is None


def wrong_password(proxy: Proxy, source: tuple[str, int]) -> int | None:
    answer = proxy.send_request("REGISTER", "sip:example.com", from_uri="sip:alice@example.com", to="sip:alice@example.com",
                                credentials=("alice", "not-" + PASSWORD), source=source)  # fmt: skip
    return None if answer is None else answer.status


def test_rates_and_top_talkers_through_the_service_on_clock_time(tmp_path: Path) -> None:
    proxy = proxy_service(tmp_path, admin={"port": 0}, bans={"max_failures": 100})
    activity, clock = proxy.service.activity, proxy.clock
    try:
        activity.sample()
        for _ in range(8):
            assert wrong_password(proxy, GUESSER) == 401
        for n in range(3):
            proxy.send_request("OPTIONS", "sip:example.com", from_uri="sip:bob@example.com", source=(f"127.0.0.{20 + n}", 5060))
        clock.advance(SAMPLE_INTERVAL)
        activity.sample()
        rates = activity.rates(60.0)
        assert rates["seconds"] == SAMPLE_INTERVAL and rates["at"] == clock.seconds()
        assert rates["auth_failures"]["credentials"] == 8 / SAMPLE_INTERVAL
        assert rates["requests"]["REGISTER"] == 8 / SAMPLE_INTERVAL and rates["requests"]["OPTIONS"] == 3 / SAMPLE_INTERVAL
        assert rates["responses"]["4xx"] == 8 / SAMPLE_INTERVAL
        talkers = activity.talkers(2, "auth_failures")["talkers"]
        assert talkers == [{"source": GUESSER[0], "requests": 8, "auth_failures": 8, "banned": False}]
        assert [row["source"] for row in activity.talkers(10)["talkers"]] == [GUESSER[0], "127.0.0.20", "127.0.0.21", "127.0.0.22"]
        # a quiet window after the burst: the rates over the last 5 s fall to 0, over 10 s they halve
        clock.advance(SAMPLE_INTERVAL)
        activity.sample()
        assert activity.rates(5.0)["auth_failures"]["credentials"] == 0.0
        assert activity.rates(10.0)["auth_failures"]["credentials"] == 8 / (2 * SAMPLE_INTERVAL)
        # "recently": after two whole talker periods, the burst is forgotten
        for _ in range(int(2 * TALKER_PERIOD / SAMPLE_INTERVAL)):
            clock.advance(SAMPLE_INTERVAL)
            activity.sample()
        assert activity.talkers(10)["talkers"] == [] and activity.talkers(10)["seconds"] <= 2 * TALKER_PERIOD
    finally:
        proxy.stop()
