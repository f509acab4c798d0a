"""Overload shedding through the real service, on Clock time: the reactor
lag measured by the service's own monitor, overload entered above
``[limits] overload_lag`` and left only after ``overload_recover`` seconds
calm (one event each way), new out-of-dialog requests shed by source (the
busiest first; every unproven one when the sources are too many to tell
apart), calls in progress, ACK/CANCEL and trusted sources untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipeline_support import EventRecorder, Proxy, RecordingFlow, proxy_service
from test_shield_admission import send

from sipshield.config import ConfigError, parse_config
from sipshield.events import OVERLOAD
from sipshield.message import parse_message
from sipshield.security import INTERVAL, OverloadShedding, ReactorLag
from sipshield.security._overload import BEHIND, CALL_RATE_FACTOR, CALL_RATE_RISE, CALL_RATE_RISE_IDLE, MIN_CALL_RATE, START_GRACE

FLOOD = ("127.0.0.20", 5070)
CALLER = ("127.0.0.30", 5070)


def make(tmp_path: Path, **limits: Any) -> tuple[Proxy, EventRecorder]:
    # The rate limits off: what is refused here is refused by the shedding.
    proxy = proxy_service(
        tmp_path, ratelimit={"enabled": False}, scanners={"enabled": False},
        limits={"overload_lag": 0.2, "overload_recover": 2.0, "overload_min_share": 5, **limits},
        auth={"trusted_sources": ["127.0.0.9/32"], "trusted_role": "staff"},
    )
    recorder = EventRecorder()
    proxy.service.events.subscribe(recorder)
    (monitor,) = [s for s in proxy.service if isinstance(s, ReactorLag)]
    assert proxy.service.overload.cpu_time is not None  # the service measures the CPU per call
    proxy.service.overload.cpu_time = lambda: 0.0  # here calls cost nothing: no capacity estimate (see the cost tests)
    monitor.startService()
    calm(proxy, START_GRACE)  # the start-up's grace over
    return proxy, recorder


def lag(proxy: Proxy, seconds: float) -> None:
    """The reactor is busy for *seconds*, twice: the monitor's next two ticks run that late
    (one late measurement alone is not overload)."""
    for _ in range(BEHIND):
        proxy.clock.advance(INTERVAL + seconds)


def calm(proxy: Proxy, seconds: float) -> None:
    for _ in range(round(seconds / INTERVAL)):
        proxy.clock.advance(INTERVAL)


def status(flow: RecordingFlow) -> int | None:
    statuses = flow.statuses()
    return statuses[-1] if statuses else None


def test_overload_is_entered_on_lag_and_left_after_a_calm_while_one_event_each_way(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path)
    shedding = proxy.service.overload
    assert isinstance(shedding, OverloadShedding) and proxy.core.admission[0] is shedding
    calm(proxy, 1.0)
    assert not shedding.overloaded
    lag(proxy, 0.15)  # below the threshold
    assert not shedding.overloaded
    lag(proxy, 0.3)
    assert shedding.overloaded
    lag(proxy, 0.3)  # still behind: no second event
    calm(proxy, 1.5)
    lag(proxy, 0.3)  # behind again before the calm lasted: stays, the calm starts over
    calm(proxy, 1.5)
    assert shedding.overloaded
    calm(proxy, 1.0)
    assert not shedding.overloaded
    events = [e for e in recorder.events if e.kind == OVERLOAD]
    assert [e.reason.split(":")[0] for e in events] == ["overloaded", "recovered"]
    assert "300 ms behind" in events[0].reason


def test_not_overloaded_nothing_is_shed(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    assert [status(send(proxy, "OPTIONS", source=FLOOD)) for _ in range(30)] == [407] * 30
    assert proxy.service.overload.shed == 0


def test_overloaded_the_busiest_source_is_shed_the_others_keep_going(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    lag(proxy, 0.3)
    flood = [status(send(proxy, "OPTIONS", source=FLOOD)) for _ in range(8)]
    assert flood == [407] * 5 + [503] * 3  # over the share (5) within the window
    refused = send(proxy, "OPTIONS", source=FLOOD).messages()[-1]
    assert (refused.reason, refused.headers.get("Retry-After")) == ("Service Unavailable: Overloaded", "5")
    assert proxy.core.transactions.counts()["server"] == 0  # stateless
    assert [status(send(proxy, "OPTIONS", source=CALLER)) for _ in range(3)] == [407] * 3
    calm(proxy, 1.1)  # a new window: the flood was the heavy source of the last one
    assert status(send(proxy, "OPTIONS", source=FLOOD)) == 503
    assert status(send(proxy, "OPTIONS", source=CALLER)) == 407
    calm(proxy, 2.0)  # overload left
    assert not proxy.service.overload.overloaded
    assert status(send(proxy, "OPTIONS", source=FLOOD)) == 407


def test_overloaded_trusted_sources_ack_and_cancel_and_calls_in_progress_keep_going(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    lag(proxy, 0.3)
    trusted = [status(send(proxy, "OPTIONS", to_user=None, source=("127.0.0.9", 5070), transport="TCP")) for _ in range(10)]
    assert trusted == [200] * 10
    for _ in range(10):
        send(proxy, "OPTIONS", source=FLOOD)
    shed = proxy.service.overload.shed
    for method in ("ACK", "CANCEL"):
        send(proxy, method, source=FLOOD)
    assert proxy.service.overload.shed == shed
    # An in-dialog BYE from the heavy source along a route set we signed is relayed.
    signer = proxy.core.signer
    from sipshield.proxy import endpoints

    token = signer.token("dlg1", "f1", endpoints(FLOOD[0], "127.0.0.5"))
    bye = (
        f"BYE sip:bob@127.0.0.5:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {FLOOD[0]}:{FLOOD[1]};branch=z9hG4bKbye1\r\nMax-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=f1\r\nTo: <sip:bob@example.com>;tag=t1\r\nCall-ID: dlg1\r\nCSeq: 2 BYE\r\n"
        f"Route: <sip:127.0.0.1:5060;transport=udp;lr;ss={token}>\r\nContent-Length: 0\r\n\r\n"
    )
    proxy.core.message_received(parse_message(bye.encode()), RecordingFlow(FLOOD))
    assert [m.method for m in proxy.relayed("BYE")] == ["BYE"]
    # The same BYE without our token is a new request from the heavy source: shed.
    proxy.core.message_received(parse_message(bye.replace(f";ss={token}", "").replace("bye1", "bye2").encode()), RecordingFlow(FLOOD))
    assert proxy.service.overload.shed == shed + 1


def test_a_spread_flood_sheds_every_unproven_request_first(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    lag(proxy, 0.3)
    for n in range(1200):  # a forged-source flood: every request from another address, once
        send(proxy, "OPTIONS", source=(f"10.{n // 250}.{n % 250}.1", 5060))
    calm(proxy, 1.1)  # a new window
    assert send(proxy, "OPTIONS", source=CALLER).sent == []  # unproven (no credentials, over UDP): dropped
    assert status(send(proxy, "OPTIONS", source=CALLER, transport="TCP")) == 407  # a proven source: challenged as ever
    # With credentials (answering a nonce) it reaches the auth stage.
    answer = proxy.send_request("OPTIONS", "sip:bob@example.com", from_uri="sip:alice@example.com", credentials=("alice", "alice-secret"), source=CALLER)
    assert answer is not None and answer.status != 503


def test_overload_config_and_off_switch(tmp_path: Path) -> None:
    limits = parse_config({}).limits
    assert (limits.overload_lag, limits.overload_recover, limits.overload_min_share) == (0.05, 5.0, 20)
    proxy = proxy_service(tmp_path, limits={"overload_lag": 0})
    assert proxy.service.overload is None and not any(isinstance(s, ReactorLag) for s in proxy.service)
    with pytest.raises(ConfigError, match=r"limits.overload_lag: -1 is out of range"):
        parse_config({"limits": {"overload_lag": -1}})
    with pytest.raises(ConfigError, match=r"limits.overload_min_share"):
        parse_config({"limits": {"overload_min_share": 0}})


TRUNK = ("127.0.0.9", 5070)  # a trusted source (over TCP): never shed by source


def test_overloaded_new_calls_past_the_call_rate_get_503_even_from_trusted_peers_and_the_rest_goes_on(tmp_path: Path) -> None:
    """More calls than the proxy can carry, from a peer it trusts: past the
    call rate (set from the calls started in the second before the lag) new
    INVITEs are refused at once, statelessly, while requests that are not
    new calls pass and the rate moves with the lag."""
    proxy, recorder = make(tmp_path)
    shedding = proxy.service.overload
    for _ in range(10):  # 200 calls a second started before the reactor fell behind
        proxy.core.counters["calls_started"] += 20
        calm(proxy, INTERVAL)
    before = status(send(proxy, "INVITE", source=TRUNK, transport="TCP"))
    assert before == 404  # no such user here: an answer of the pipeline, past admission
    lag(proxy, 0.3)
    assert shedding.overloaded and shedding.call_rate is not None
    rate = shedding.call_rate
    assert 50 <= rate <= CALL_RATE_FACTOR * 200 + 1  # a share of what was started (the lagging measurement's long interval in it too)
    assert "new calls admitted at" in [e for e in recorder.events if e.kind == OVERLOAD][-1].reason
    may_start = int(max(1.0, rate * 0.2))
    outcomes = [status(send(proxy, "INVITE", source=TRUNK, transport="TCP")) for _ in range(may_start)]
    held = proxy.core.transactions.counts()["server"]
    outcomes += [status(send(proxy, "INVITE", source=TRUNK, transport="TCP")) for _ in range(10)]
    assert outcomes == [before] * may_start + [503] * 10
    refused = send(proxy, "INVITE", source=TRUNK, transport="TCP").messages()[-1]
    assert (refused.status, refused.reason, refused.headers.get("Retry-After")) == (503, "Service Unavailable: Overloaded", "5")
    assert proxy.core.transactions.counts()["server"] == held  # refused statelessly
    assert shedding.calls_refused == 11
    # Not new calls: never refused for the call rate.
    assert [status(send(proxy, "OPTIONS", to_user=None, source=TRUNK, transport="TCP")) for _ in range(5)] == [200] * 5
    shed = shedding.shed
    for method in ("ACK", "CANCEL"):
        send(proxy, method, source=TRUNK, transport="TCP")
    assert shedding.shed == shed
    # Still behind: the rate falls; caught up: it rises again, and tokens come back each measurement.
    lag(proxy, 0.3)
    assert shedding.call_rate < rate
    fallen = shedding.call_rate
    calm(proxy, 0.5)
    assert shedding.call_rate > fallen
    assert status(send(proxy, "INVITE", source=TRUNK, transport="TCP")) == before
    calm(proxy, 2.0)  # overload left: no call rate
    assert not shedding.overloaded and shedding.call_rate is None
    assert [status(send(proxy, "INVITE", source=TRUNK, transport="TCP")) for _ in range(40)] == [before] * 40


def test_the_call_rate_never_falls_below_its_floor(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    shedding = proxy.service.overload
    for _ in range(30):  # nothing started before, and behind for 3 s
        lag(proxy, 0.3)
    assert shedding.call_rate == MIN_CALL_RATE
    assert status(send(proxy, "INVITE", source=TRUNK, transport="TCP")) != 503  # a token is there: the floor still lets calls start


def test_while_a_source_is_shed_for_its_share_new_calls_are_not_held_to_the_call_rate(tmp_path: Path) -> None:
    """The overload has a culprit (a source over its share): it is shed, and
    the calls of the others are not limited for it."""
    proxy, _ = make(tmp_path)
    shedding = proxy.service.overload
    lag(proxy, 0.3)  # nothing started before: the call rate is its floor
    assert shedding.call_rate == MIN_CALL_RATE
    assert [status(send(proxy, "INVITE", source=TRUNK, transport="TCP")) for _ in range(3)] == [404, 503, 503]  # no culprit yet
    for _ in range(10):
        send(proxy, "OPTIONS", source=FLOOD)  # over its share (5): shed, and to blame
    assert [status(send(proxy, "INVITE", source=TRUNK, transport="TCP")) for _ in range(20)] == [404] * 20
    send(proxy, "OPTIONS", source=CALLER)
    calm(proxy, 1.1)  # the window rolls: FLOOD was the heavy source of the last one, and still is to blame
    assert FLOOD[0] in shedding._heavy
    assert [status(send(proxy, "INVITE", source=TRUNK, transport="TCP")) for _ in range(20)] == [404] * 20
    assert shedding.calls_refused == 2


def test_the_call_rate_starts_from_what_the_proxy_carried_lately_not_only_the_last_half_second(tmp_path: Path) -> None:
    """A burst after a quiet while (a trunk coming back, the first second of
    a load test): the half second before the lag started no calls, but the
    proxy carried 200 a second two seconds ago."""
    proxy, _ = make(tmp_path)
    shedding = proxy.service.overload
    for _ in range(10):
        proxy.core.counters["calls_started"] += 20
        calm(proxy, INTERVAL)
    calm(proxy, 2.0)  # nothing started
    lag(proxy, 0.3)
    assert shedding.call_rate is not None and 0.5 * 200 < shedding.call_rate <= CALL_RATE_FACTOR * 200


def test_a_filling_receive_buffer_is_overload_too_however_little_the_reactor_lags(tmp_path: Path) -> None:
    """Saturated, the reactor runs a turn of 256 KB of datagrams and is barely
    late while the kernel's buffer fills: the buffer is read at each measurement."""
    proxy, recorder = make(tmp_path)
    (monitor,) = [s for s in proxy.service if isinstance(s, ReactorLag)]
    full = [0.1]
    monitor.queue = lambda: full[0]
    assert monitor.queue_threshold == 0.25  # the default
    calm(proxy, 0.5)
    assert not proxy.service.overload.overloaded
    full[0] = 0.4
    calm(proxy, 0.2)
    assert proxy.service.overload.overloaded
    (entered,) = [e for e in recorder.events if e.kind == OVERLOAD]
    assert "a UDP receive buffer 40 % full" in entered.reason
    full[0] = None  # unknown (not Linux, or not listed): the lag alone decides
    calm(proxy, 2.5)
    assert not proxy.service.overload.overloaded
    monitor.queue_threshold = 0.0  # [limits] overload_queue = 0: not asked
    full[0] = 1.0
    calm(proxy, 0.5)
    assert not proxy.service.overload.overloaded


def test_the_call_rate_rises_no_higher_than_twice_what_was_carried(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    (monitor,) = [s for s in proxy.service if isinstance(s, ReactorLag)]
    shedding = proxy.service.overload
    full = [0.0]
    monitor.queue = lambda: full[0]
    for _ in range(10):  # 200 calls a second carried
        proxy.core.counters["calls_started"] += 20
        calm(proxy, INTERVAL)
    full[0] = 0.5  # a receive buffer half full: overloaded, and the rate falls while it stays so
    calm(proxy, BEHIND * INTERVAL)
    assert shedding.overloaded and shedding.call_rate is not None
    entered = shedding.call_rate
    calm(proxy, 0.3)
    assert shedding.call_rate < entered
    full[0] = 0.0  # drained: it rises, to twice what was carried at most
    calm(proxy, 1.5)
    assert entered < shedding.call_rate <= 2 * 200 + 1e-6  # (Clock time in floating point)


def test_datagrams_waiting_in_the_receive_buffer_are_overload_however_little_the_reactor_lags(tmp_path: Path) -> None:
    """Saturated, the reactor keeps its timers nearly on time while each
    datagram waits longer to be read: that wait, measured by the service's
    UDP listeners, is lag too."""
    proxy, recorder = make(tmp_path)
    (monitor,) = [s for s in proxy.service if isinstance(s, ReactorLag)]
    assert monitor.delay == proxy.service._longest_receive_delay  # the service's listeners are asked
    waited: list[float | None] = [0.05]
    monitor.delay = lambda: waited[0]
    calm(proxy, 0.5)
    waited[0] = 0.35
    calm(proxy, 0.5)
    assert not proxy.service.overload.overloaded  # under twice the 200 ms threshold: a turn of reading, not lateness
    waited[0] = 0.5
    calm(proxy, BEHIND * INTERVAL)
    assert proxy.service.overload.overloaded
    (entered,) = [e for e in recorder.events if e.kind == OVERLOAD]
    assert "datagrams waiting 500 ms to be read" in entered.reason
    waited[0] = None  # nothing read since the last measurement: no sign either way
    calm(proxy, 2.5)
    assert not proxy.service.overload.overloaded


def test_the_call_rate_falls_while_the_backlog_grows_holds_while_it_drains_and_rises_once_it_is_short(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    (monitor,) = [s for s in proxy.service if isinstance(s, ReactorLag)]
    shedding = proxy.service.overload
    for _ in range(10):  # 200 calls a second carried
        proxy.core.counters["calls_started"] += 20
        calm(proxy, INTERVAL)
    waited = [0.6]
    monitor.delay = lambda: waited[0]
    calm(proxy, BEHIND * INTERVAL)
    assert shedding.overloaded and shedding.call_rate is not None
    rates = [shedding.call_rate]
    for wait in (0.7, 0.7):  # growing, then steady: over capacity, down
        waited[0] = wait
        calm(proxy, INTERVAL)
        rates.append(shedding.call_rate)
    assert rates[0] > rates[1] > rates[2]
    for wait in (0.5, 0.3):  # falling fast, though still long: the backlog drains, the rate holds
        waited[0] = wait
        calm(proxy, INTERVAL)
        assert shedding.call_rate == rates[-1]
    waited[0] = 0.28  # under twice the threshold, over it: the rate holds
    calm(proxy, INTERVAL)
    assert shedding.call_rate == rates[-1]
    waited[0] = 0.1  # short: up
    calm(proxy, INTERVAL)
    risen = shedding.call_rate
    assert risen > rates[-1]
    waited[0] = 0.42  # long again, and longer than the last: down
    calm(proxy, INTERVAL)
    assert shedding.call_rate < risen


def test_the_call_rate_on_entering_is_no_more_than_the_core_carries_at_the_cpu_cost_per_call(tmp_path: Path) -> None:
    """1000 calls a second started at 2 ms of CPU each (more than a core: a
    backlog read at once): the call rate starts from the 500 a second one core
    carries at that cost, and never rises past what the core can start."""
    proxy, _ = make(tmp_path)
    shedding = proxy.service.overload
    cpu = [0.0]
    shedding.cpu_time = lambda: cpu[0]
    for _ in range(10):
        proxy.core.counters["calls_started"] += 100
        cpu[0] += 100 * 0.002
        calm(proxy, INTERVAL)
    assert shedding.call_cost == pytest.approx(0.002) and shedding.capacity() == pytest.approx(500)
    lag(proxy, 0.3)
    assert shedding.call_rate == pytest.approx(CALL_RATE_FACTOR * 500)
    calm(proxy, 2.0)  # caught up, and more: it rises, to what the core can start at most
    assert shedding.call_rate <= 500 + 1e-6


def test_quiet_minutes_do_not_charge_the_timers_cpu_to_a_few_calls(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    shedding = proxy.service.overload
    cpu = [0.0]
    shedding.cpu_time = lambda: cpu[0]
    for _ in range(100):  # 10 s at one call a second, 5 ms of CPU a tenth of a second on timers
        proxy.core.counters["calls_started"] += 1 if _ % 10 == 0 else 0
        cpu[0] += 0.005
        calm(proxy, INTERVAL)
    assert shedding.call_cost is None  # never 50 calls within two seconds: no cost measured
    for _ in range(12):  # 300 calls a second at 1 ms each, over a second at least
        proxy.core.counters["calls_started"] += 30
        cpu[0] += 30 * 0.001
        calm(proxy, INTERVAL)
    assert shedding.call_cost == pytest.approx(0.001, rel=0.15)  # (the window's first tenths carry the timers' CPU too)

def test_the_call_rate_rises_faster_the_less_the_datagrams_wait(tmp_path: Path) -> None:
    proxy, _ = make(tmp_path)
    (monitor,) = [s for s in proxy.service if isinstance(s, ReactorLag)]
    shedding = proxy.service.overload
    for _ in range(10):
        proxy.core.counters["calls_started"] += 20
        calm(proxy, INTERVAL)
    waited = [0.6]
    monitor.delay = lambda: waited[0]
    calm(proxy, BEHIND * INTERVAL)
    assert shedding.call_rate is not None
    rates = [shedding.call_rate]
    for wait in (0.14, 0.02):  # under half the 200 ms threshold, then under a quarter of it
        waited[0] = wait
        calm(proxy, INTERVAL)
        rates.append(shedding.call_rate)
    assert rates[1] == pytest.approx(rates[0] * CALL_RATE_RISE)
    assert rates[2] == pytest.approx(rates[1] * CALL_RATE_RISE_IDLE)


def test_one_late_measurement_is_a_pause_not_overload_and_the_first_second_after_start_is_start_up(tmp_path: Path) -> None:
    proxy, recorder = make(tmp_path)
    shedding = proxy.service.overload
    proxy.clock.advance(INTERVAL + 0.3)  # one pause of the machine
    calm(proxy, 0.5)
    assert not shedding.overloaded and not [e for e in recorder.events if e.kind == OVERLOAD]
    lag(proxy, 0.3)  # late twice in a row: overload
    assert shedding.overloaded
    # A service just started: its own start-up work makes the first measurements late.
    fresh, fresh_events = make(tmp_path / "fresh")
    (monitor,) = [s for s in fresh.service if isinstance(s, ReactorLag)]
    monitor.stopService()
    monitor.startService()
    for _ in range(2):
        fresh.clock.advance(INTERVAL + 0.25)  # late twice in a row, within the second after start
    assert not fresh.service.overload.overloaded
    lag(fresh, 0.3)
    assert fresh.service.overload.overloaded
    assert len([e for e in fresh_events.events if e.kind == OVERLOAD]) == 1
