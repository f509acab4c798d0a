"""The nonce-counts' Lua script on the test's own redis-server (real time,
the real reactor), through two nodes' RedisNonceCounts on the shield
state's connections: a count used on A is a replay on B, a higher one is
not; without qop a nonce serves once; the key expires with the nonce;
Redis killed, a use is "unavailable" at once and logged once; Redis back on
the same port, uses are answered again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from redis_support import RedisServer, two_shield_states
from test_redis_shared_state import connected, until
from twisted.internet import defer, reactor, task

from sipshield.auth._nonce import NO_QOP
from sipshield.state import RedisNonceCounts, RedisShieldState


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[tuple[RedisShieldState, RedisShieldState]]:
    yield from two_shield_states(redis_server.url, "nc:")


def counts(*states: RedisShieldState) -> list[RedisNonceCounts]:
    return [RedisNonceCounts(reactor, state.link, prefix=state.prefix) for state in states]


@pytest_twisted.inlineCallbacks
def test_a_count_used_on_one_node_is_a_replay_on_the_other(nodes: tuple[RedisShieldState, RedisShieldState]) -> Any:
    yield until(connected(*nodes), 10, "both nodes connected")
    a, b = counts(*nodes)
    assert (yield a.use("N1", 1, 60_000)) == "fresh"
    assert (yield b.use("N1", 1, 60_000)) == "replayed"
    assert (yield a.use("N1", 1, 60_000)) == "replayed"
    assert (yield b.use("N1", 0x10, 60_000)) == "fresh"  # compared as numbers
    assert (yield a.use("N1", 0xF, 60_000)) == "replayed"
    assert (yield a.use("N2", NO_QOP, 60_000)) == "fresh"
    assert (yield b.use("N2", NO_QOP, 60_000)) == "replayed"
    assert (yield b.use("N2", 5, 60_000)) == "replayed"  # nothing after a use without qop
    both = yield defer.gatherResults([a.use("N3", 1, 60_000), b.use("N3", 1, 60_000)])
    assert sorted(both) == ["fresh", "replayed"]  # one of two racing nodes wins: the script is atomic
    (ttl,) = yield nodes[0].link.send([("PTTL", "nc:nonce:N1")])
    assert 55_000 < ttl <= 60_000


@pytest_twisted.inlineCallbacks
def test_the_key_expires_with_the_nonce(nodes: tuple[RedisShieldState, RedisShieldState]) -> Any:
    yield until(connected(*nodes), 10, "both nodes connected")
    a, b = counts(*nodes)
    assert (yield a.use("N4", 1, 150)) == "fresh"
    (value,) = yield nodes[1].link.send([("GET", "nc:nonce:N4")])
    assert str(value) == "1"
    deadline = time.monotonic() + 5
    while (yield nodes[1].link.send([("EXISTS", "nc:nonce:N4")])) != [0]:
        assert time.monotonic() < deadline, "the key did not expire"
        yield task.deferLater(reactor, 0.05, lambda: None)
    assert (yield b.use("N4", 1, 150)) == "fresh"  # the nonce is stale by then on every node: nothing to remember


@pytest_twisted.inlineCallbacks
def test_redis_down_is_unavailable_at_once_then_answered_again(
    redis_server: RedisServer, nodes: tuple[RedisShieldState, RedisShieldState], log_lines: list[str],
) -> Any:
    yield until(connected(*nodes), 10, "both nodes connected")
    a, b = counts(*nodes)
    assert (yield a.use("N5", 1, 60_000)) == "fresh"
    redis_server.kill()
    yield until(lambda: not nodes[0].link.up() and not nodes[1].link.up(), 5, "both links down")
    started = time.monotonic()
    for _ in range(3):
        assert (yield a.use("N6", 1, 60_000)) == "unavailable"
    assert time.monotonic() - started < 0.5  # at once: nothing waits for the reconnection
    assert sum("nonce counts in Redis" in line and "unavailable" in line for line in log_lines) == 1
    redis_server.start()  # the same port, empty: what was recorded before is gone with it
    yield until(lambda: nodes[0].link.up() and nodes[1].link.up(), 20, "both links up again")
    assert (yield b.use("N6", 1, 60_000)) == "fresh"
    assert (yield a.use("N6", 1, 60_000)) == "replayed"
    assert sum("answer again: digest answers accepted" in line for line in log_lines) == 1
