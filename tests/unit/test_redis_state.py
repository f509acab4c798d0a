"""RedisShieldState's logic with a fake Redis and task.Clock: answers never
wait, writes are batched, a node's own messages are not applied twice, the
queue is bounded while Redis is down, and catching up when it is back.

The fake keeps what a real server would for the commands used (counters,
the bans hash, pub/sub to every other node on the same fake)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from sipshield.config import ConfigError, parse_config
from sipshield.security import BanPolicy
from sipshield.state import Ban, RedisShieldState
from sipshield.state._redis import build_shield_state


class FakeRedis:
    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.subscribers: list[Callable[[str], None]] = []
        self.rounds: list[list[tuple[Any, ...]]] = []

    def run(self, command: tuple[Any, ...]) -> Any:
        name, *args = command
        if name == "EVAL" and "INCRBY" in args[0]:  # the counters' script: lines of key TAB count TAB ttl
            totals = []
            for line in args[2].split("\n"):
                key, n, _ttl = line.split("\t")
                self.values[key] = self.values.get(key, 0) + int(n)
                totals.append(str(self.values[key]))
            return ",".join(totals) if len(totals) > 1 else int(totals[0])  # txredisapi makes a number of one
        if name == "HSET":
            self.hashes.setdefault(args[0], {})[args[1]] = args[2]
            return 1
        if name == "HDEL":
            return int(self.hashes.get(args[0], {}).pop(args[1], None) is not None)
        if name == "HGETALL":
            return [x for kv in self.hashes.get(args[0], {}).items() for x in kv]
        if name == "PUBLISH":
            for deliver in list(self.subscribers):
                deliver(args[1])
            return len(self.subscribers)
        return 0  # ZADD, ZREM, the purge


class FakeLink:
    where = "fake:6379/0"
    subscriptions = 1

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.is_up = True
        self.deaf = False  # the subscription lost (and back) between two flushes
        self.hold = False
        self.pending: list[defer.Deferred[list[Any]]] = []

    def start(self, on_message: Callable[[str], None]) -> None:
        self.redis.subscribers.append(lambda m: self.is_up and not self.deaf and on_message(m))

    def up(self) -> bool:
        return self.is_up

    def send(self, commands: Sequence[tuple[Any, ...]]) -> defer.Deferred[list[Any]]:
        if not self.is_up:
            return defer.fail(ConnectionError("down"))
        self.redis.rounds.append(list(commands))
        replies = [self.redis.run(c) for c in commands]
        if self.hold:
            d: defer.Deferred[list[Any]] = defer.Deferred()
            self.pending.append(d)
            d.addCallback(lambda _: replies)
            return d
        return defer.succeed(replies)

    def stop(self) -> defer.Deferred[Any]:
        return defer.succeed(None)


def node(redis: FakeRedis, clock: Clock, name: str, **kw: Any) -> tuple[RedisShieldState, FakeLink]:
    link = FakeLink(redis)
    state = RedisShieldState(clock, link, node=name, flush_interval=0.05, **kw)
    state.start()
    return state, link


def two_nodes() -> tuple[FakeRedis, Clock, RedisShieldState, RedisShieldState]:
    """Two nodes on one fake Redis, connected (their first flush done)."""
    redis, clock = FakeRedis(), Clock()
    clock.advance(1000)
    a, _ = node(redis, clock, "a")
    b, _ = node(redis, clock, "b")
    clock.advance(0.05)
    return redis, clock, a, b


def test_answers_at_once_and_writes_in_one_round_per_flush() -> None:
    redis, clock = FakeRedis(), Clock()
    clock.advance(1000)
    a, _ = node(redis, clock, "a")
    clock.advance(0.05)  # connected: the first flush reads the bans in force
    rounds = len(redis.rounds)
    for _ in range(50):
        assert a.take("src:1", 100.0, 100.0, clock.seconds())
    assert a.hit("auth:1.2.3.4", 60.0, clock.seconds(), 5) == 1
    a.ban(Ban("192.0.2.7", clock.seconds() + 60, "test", clock.seconds()))
    assert a.banned("192.0.2.7", clock.seconds()) is not None  # before any write
    assert len(redis.rounds) == rounds
    clock.advance(0.05)
    assert len(redis.rounds) == rounds + 1  # everything in one pipelined round
    names = [c[0] for c in redis.rounds[-1]]
    counters = [c for c in redis.rounds[-1] if c[0] == "EVAL" and "INCRBY" in c[1]]
    assert len(counters) == 1 and counters[0][3].count("\n") == 1 and names.count("PUBLISH") == 1  # both counters in one command
    assert 50 in redis.values.values()


def test_ban_reaches_the_other_node_and_its_policy_once_without_echo() -> None:
    redis, clock = FakeRedis(), Clock()
    clock.advance(1000)
    a, _ = node(redis, clock, "a")
    b, _ = node(redis, clock, "b")
    policy = BanPolicy(clock, state=b)
    told: list[Ban] = []

    class Observer:
        def banned(self, ban: Ban) -> None:
            told.append(ban)

        def unbanned(self, key: str) -> None:
            told.append(Ban(key, 0, "unbanned"))

    policy.observers.append(Observer())
    b.listeners.append(policy)
    clock.advance(0.05)
    ban = Ban("192.0.2.9", clock.seconds() + 300, "3 failed logins", clock.seconds())
    a.ban(ban)
    publishes = sum(c[0] == "PUBLISH" for r in redis.rounds for c in r)
    clock.advance(0.05)
    assert b.banned("192.0.2.9", clock.seconds()) == ban  # until, reason and since carried over
    assert told == [ban]
    for _ in range(5):
        clock.advance(0.05)
    # B published nothing back; A did not take its own message as new.
    assert sum(c[0] == "PUBLISH" for r in redis.rounds for c in r) == publishes + 1
    assert told == [ban]
    b.unban("192.0.2.9")  # an unban on B lifts it on A
    clock.advance(0.05)
    assert a.banned("192.0.2.9", clock.seconds()) is None


def test_rate_limit_is_shared_within_one_flush() -> None:
    redis, clock, a, b = two_nodes()
    now = clock.seconds()
    taken_a = sum(a.take("src:x", 0.001, 10.0, now) for _ in range(6))
    clock.advance(0.05)  # A's six reach Redis
    taken_b = sum(b.take("src:x", 0.001, 10.0, clock.seconds()) for _ in range(1))
    clock.advance(0.05)  # B learns of A's six
    taken_b += sum(b.take("src:x", 0.001, 10.0, clock.seconds()) for _ in range(10))
    assert taken_a == 6
    assert taken_b == 4  # one budget of 10 between the two
    clock.advance(0.05)
    # A reads the shared count of a bucket when it takes from it: its next
    # take (one flush of slack) brings B's four, and the budget is spent.
    assert a.take("src:x", 0.001, 10.0, clock.seconds())
    clock.advance(0.05)
    assert not a.take("src:x", 0.001, 10.0, clock.seconds())


def test_failure_windows_are_shared() -> None:
    redis, clock, a, b = two_nodes()
    a.hit("auth:198.51.100.1", 60.0, clock.seconds(), 3)
    a.hit("auth:198.51.100.1", 60.0, clock.seconds(), 3)
    clock.advance(0.05)
    b.hit("auth:198.51.100.1", 60.0, clock.seconds(), 3)
    clock.advance(0.05)
    assert b.recent("auth:198.51.100.1", 60.0, clock.seconds()) == 3


def test_down_serves_locally_bounds_the_queue_keeps_bans_and_catches_up(log_lines: list[str]) -> None:
    redis, clock = FakeRedis(), Clock()
    clock.advance(1000)
    a, link_a = node(redis, clock, "a", max_pending=10)
    b, _ = node(redis, clock, "b")
    clock.advance(0.05)
    link_a.is_up = False
    for _ in range(20):
        clock.advance(0.05)
    assert sum("unavailable, serving on local state" in line for line in log_lines) == 1
    for i in range(50):
        assert a.take(f"src:{i}", 1.0, 5.0, clock.seconds())  # still answered
    ban = Ban("203.0.113.5", clock.seconds() + 600, "outage ban", clock.seconds())
    a.ban(ban)
    assert a.banned("203.0.113.5", clock.seconds()) == ban
    assert a.dropped == 40 and len(a._counts_out) == 10  # bounded: the oldest dropped
    clock.advance(0.05)
    assert b.banned("203.0.113.5", clock.seconds()) is None
    link_a.is_up = True
    for _ in range(4):
        clock.advance(0.05)
    assert sum("back: shared state resumed" in line for line in log_lines) == 1
    assert b.banned("203.0.113.5", clock.seconds()) == ban
    assert "203.0.113.5" in redis.hashes["sipshield:bans"]


def test_reads_the_bans_in_force_when_it_connects() -> None:
    redis, clock = FakeRedis(), Clock()
    clock.advance(1000)
    redis.hashes["sipshield:bans"] = {
        "192.0.2.1": json.dumps({"key": "192.0.2.1", "until": 2000.0, "reason": "from before", "since": 900.0}),
        "192.0.2.2": json.dumps({"key": "192.0.2.2", "until": 10.0, "reason": "ended", "since": 1.0}),
        "junk": "not json",
    }
    a, _ = node(redis, clock, "a")
    a.ban(Ban("192.0.2.3", 1500.0, "local", 1000.0))  # the ban file's, say: published
    clock.advance(0.05)
    clock.advance(0.05)
    assert [b.key for b in a.bans(clock.seconds())] == ["192.0.2.3", "192.0.2.1"]
    assert "192.0.2.3" in redis.hashes["sipshield:bans"]


def test_a_write_in_flight_holds_the_next_and_a_failed_one_is_retried() -> None:
    redis, clock = FakeRedis(), Clock()
    clock.advance(1000)
    a, link = node(redis, clock, "a")
    clock.advance(0.05)
    link.hold = True
    a.ban(Ban("192.0.2.4", 2000.0, "x", 1000.0))
    clock.advance(0.05)
    rounds = len(redis.rounds)
    a.ban(Ban("192.0.2.5", 2000.0, "y", 1000.0))
    clock.advance(0.05)
    assert len(redis.rounds) == rounds  # one round trip at a time
    link.pending.pop().errback(ConnectionError("lost"))
    link.hold = False
    clock.advance(0.05)
    assert {"192.0.2.4", "192.0.2.5"} <= set(redis.hashes["sipshield:bans"])


def test_unreadable_messages_are_ignored() -> None:
    redis, clock = FakeRedis(), Clock()
    a, _ = node(redis, clock, "a")
    for deliver in redis.subscribers:
        deliver("{")
        deliver(json.dumps({"node": "z", "op": "ban"}))
    assert not a.holds_bans()


def test_config_builds_the_backend_and_refuses_a_bad_url_without_its_password() -> None:
    memory, service = build_shield_state(parse_config({}), Clock())
    assert service is None and type(memory).__name__ == "MemoryShieldState"
    config = parse_config({"state": {"backend": "redis", "redis_url": "redis://:hunter2@127.0.0.1:6390/3", "key_prefix": "edge1:"}})
    shared, service = build_shield_state(config, Clock())
    assert isinstance(shared, RedisShieldState) and service is not None
    assert shared.prefix == "edge1:" and shared.link.where == "127.0.0.1:6390/3"
    posture = dict(config.posture())["shield state"]
    assert "hunter2" not in posture and "redis://:***@127.0.0.1:6390/3" in posture
    with pytest.raises(ConfigError, match="state.redis_url") as e:
        parse_config({"state": {"redis_url": "http://:hunter2@h:1/0"}})
    assert "hunter2" not in str(e.value)
    for bad in ("redis://127.0.0.1:0/0", "redis://127.0.0.1:99999/0", "redis:///0", "redis://h/db1", "rediss://h/0", "redis://h/0?x=1"):
        with pytest.raises(ConfigError, match="state.redis_url"):
            parse_config({"state": {"redis_url": bad}})
    with pytest.raises(ConfigError, match="state.key_prefix"):
        parse_config({"state": {"key_prefix": "a b"}})
    with pytest.raises(ConfigError, match="state.backend"):
        parse_config({"state": {"backend": "etcd"}})


def test_a_brief_reconnection_of_the_subscriber_reads_the_bans_again() -> None:
    redis, clock, a, b = two_nodes()
    link_b = b.link
    assert isinstance(link_b, FakeLink)
    link_b.deaf = True  # B's subscription lost between two flushes: A's message missed
    a.ban(Ban("192.0.2.66", clock.seconds() + 60, "missed", clock.seconds()))
    clock.advance(0.05)
    assert b.banned("192.0.2.66", clock.seconds()) is None
    link_b.deaf = False
    link_b.subscriptions = 2  # subscribed again before B's next flush: B never saw itself down
    clock.advance(0.05)
    clock.advance(0.05)
    assert b.status == "up" and b.banned("192.0.2.66", clock.seconds()) is not None
