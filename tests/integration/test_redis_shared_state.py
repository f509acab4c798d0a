"""Two nodes' RedisShieldStates on the test's own redis-server (real time,
the real reactor): a ban on A is on B within a second, with its policy's
observers told; a rate limit is one budget; Redis killed, both answer from
local state and log it once; Redis back on the same port, they reconnect
and a ban made on A during the outage reaches B."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from redis_support import RedisServer, two_shield_states, until
from twisted.internet import reactor, task

from sipshield.security import BanPolicy
from sipshield.state import Ban, RedisShieldState


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[tuple[RedisShieldState, RedisShieldState]]:
    yield from two_shield_states(redis_server.url, "test:")


def connected(*states: RedisShieldState) -> Callable[[], bool]:
    return lambda: all(s.status == "up" and not s._resync and not s._busy for s in states)




@pytest_twisted.inlineCallbacks
def test_a_ban_on_a_reaches_b_and_its_observers_within_a_second(nodes: tuple[RedisShieldState, RedisShieldState]) -> Any:
    a, b = nodes
    policy = BanPolicy(reactor, state=b)
    told: list[Ban] = []
    lifted: list[str] = []

    class Observer:
        def banned(self, ban: Ban) -> None:
            told.append(ban)

        def unbanned(self, key: str) -> None:
            lifted.append(key)

    policy.observers.append(Observer())
    b.listeners.append(policy)
    yield until(connected(a, b), 10, "both nodes connected")
    now = reactor.seconds()
    ban = Ban("192.0.2.50", now + 120, "5 failed logins in 60 s", now)
    a.ban(ban)
    took = yield until(lambda: b.banned("192.0.2.50", reactor.seconds()) is not None, 1.0, "the ban on B")
    assert took < 1.0
    assert b.banned("192.0.2.50", reactor.seconds()) == ban  # until, reason, since
    assert told == [ban]
    b.unban("192.0.2.50")
    yield until(lambda: a.banned("192.0.2.50", reactor.seconds()) is None, 1.0, "the unban on A")
    yield task.deferLater(reactor, 0.3, lambda: None)
    assert told == [ban]  # no echo came back to B


@pytest_twisted.inlineCallbacks
def test_a_rate_limit_is_one_budget_for_both(nodes: tuple[RedisShieldState, RedisShieldState]) -> Any:
    a, b = nodes
    yield until(connected(a, b), 10, "both nodes connected")
    rate, burst = 0.001, 20.0
    taken = 0
    flushed = lambda: not (a._counts_out or a._busy or b._counts_out or b._busy)  # noqa: E731
    for _ in range(4):  # both take, in turns of a flush, from one budget of 20
        taken += sum(a.take("src:198.51.100.9", rate, burst, reactor.seconds()) for _ in range(10))
        yield until(flushed, 5, "A's takes written")
        taken += sum(b.take("src:198.51.100.9", rate, burst, reactor.seconds()) for _ in range(10))
        yield until(flushed, 5, "B's takes written")
    # Exactly the budget when each learns of the other between turns; the
    # slack is what a node takes within one flush before it learns.
    assert burst <= taken <= burst + 10, taken


@pytest_twisted.inlineCallbacks
def test_redis_down_serves_locally_logs_once_and_catches_up(
    redis_server: RedisServer, nodes: tuple[RedisShieldState, RedisShieldState], log_lines: list[str],
) -> Any:
    a, b = nodes
    yield until(connected(a, b), 10, "both nodes connected")
    redis_server.kill()
    yield until(lambda: a.status == "down" and b.status == "down", 5, "both nodes see Redis down")
    now = reactor.seconds()
    ban = Ban("203.0.113.77", now + 300, "banned during the outage", now)
    a.ban(ban)
    for _ in range(20):  # both keep answering from local state
        assert a.take("src:203.0.113.1", 100, 100, reactor.seconds())
        assert b.take("src:203.0.113.1", 100, 100, reactor.seconds())
        yield task.deferLater(reactor, 0.05, lambda: None)
    assert a.banned("203.0.113.77", reactor.seconds()) == ban
    assert b.banned("203.0.113.77", reactor.seconds()) is None
    down = [line for line in log_lines if "unavailable, serving on local state" in line]
    assert len(down) == 2, down  # once per node
    assert f"127.0.0.1:{redis_server.port}/0" in down[0]
    redis_server.start()  # the same port
    yield until(lambda: b.banned("203.0.113.77", reactor.seconds()) is not None, 20, "the outage's ban on B")
    yield until(lambda: a.status == b.status == "up", 5, "both nodes up again")
    assert sum("back: shared state resumed" in line for line in log_lines) == 2
    assert sum("unavailable, serving on local state" in line for line in log_lines) == 2
    assert not any("Scheduling retry" in line for line in log_lines)  # the reconnection attempts are not logged one by one
