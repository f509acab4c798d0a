"""The shield's state shared between nodes through Redis (docs/scaling.md).

:class:`RedisShieldState` is a :class:`~sipshield.state.ShieldState` whose
every method answers at once from a local :class:`MemoryShieldState`: nothing
on the per-packet path waits on Redis.  What changes is queued and written
to Redis in batches (one pipelined round trip every ``flush_interval``);
what the other nodes change comes back two ways:

- bans and unbans by pub/sub, each with its end, reason and start, applied
  to the local state and handed to the listeners (the ban policy, which
  tells its observers: the nftables set, the ban file), never published
  again (a message names the node that sent it; a node ignores its own);
- failure windows and token buckets by counters: each flush adds this
  node's increments to one key per window (INCRBY, with an expiry, all the
  batch's keys in one Lua script), and the
  total it gets back, less what this node already counted, is what the
  other nodes added: put into the local window or taken from the local
  bucket.  Shared approximately: a node learns of the others' events within
  one flush interval.

Counted calls (``open_call`` ...) stay per node.

Redis down: everything keeps answering from local state; logged once when
it goes and once when it is back.  The queue of increments is bounded (the
oldest dropped first, counted in ``dropped``); bans and unbans are kept.
Back, the node reads the bans in force, takes those it lacks and publishes
those Redis lacks (made during the outage).

The seam to Redis is :class:`RedisLink` (``up``, ``send``), so the
batching, echo suppression and bounds are tested with a fake link and
task.Clock; :class:`TxRedisLink` is the real one, over txredisapi.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogPublisher

from sipshield.config import Config
from sipshield.state._shield import Ban, MemoryShieldState

__all__ = ["RedisLink", "RedisShieldState", "RedisStateService", "RemoteBanListener", "TxRedisLink", "build_shield_state"]

BUCKET_SLOT = 10.0
"""Seconds one token bucket counter key covers (its expiry is three of them)."""
PURGE_EVERY = 60.0
"""Seconds between two purges of the ended bans from Redis."""

# Ended bans out of the hash and the sorted set by end time, in one command.
_PURGE = """
local ended = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, k in ipairs(ended) do redis.call('HDEL', KEYS[2], k) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return #ended
"""

# Every counter of a batch in one command, with one argument (lines of
# key TAB count TAB ttl) and one reply (the new totals, comma-separated): a
# command, an argument and a reply element through txredisapi each cost
# this process microseconds, more than the call's own state work.
_COUNT = r"""
local totals = {}
for key, n, ttl in string.gmatch(ARGV[1], "([^\t\n]+)\t(%d+)\t(%d+)") do
  totals[#totals + 1] = redis.call('INCRBY', key, n)
  redis.call('EXPIRE', key, ttl)
end
return table.concat(totals, ',')
"""

Command = tuple[Any, ...]


class RedisLink(Protocol):
    """What :class:`RedisShieldState` needs of a Redis connection."""

    where: str
    """The server, for log lines (no password)."""
    subscriptions: int
    """How many times the channel was subscribed to: a new one may have missed messages."""

    def start(self, on_message: Callable[[str], None]) -> None:
        """Connect (and keep reconnecting); each message on the channel goes to *on_message*."""

    def up(self) -> bool:
        """Whether commands can be sent and messages arrive now."""

    def send(self, commands: Sequence[Command]) -> Deferred[list[Any]]:
        """Send *commands* in one pipelined round trip; their replies, in order."""

    def stop(self) -> Deferred[Any]:
        """Disconnect and stop reconnecting."""


class RemoteBanListener(Protocol):
    """Told of the bans and unbans that come from other nodes (the ban policy)."""

    def remote_banned(self, ban: Ban) -> None: ...

    def remote_unbanned(self, key: str) -> None: ...


class RedisShieldState:
    """:class:`~sipshield.state.ShieldState` answered locally and shared through Redis."""

    log = Logger()

    def __init__(
        self, reactor: IReactorTime, link: RedisLink, *, local: MemoryShieldState | None = None, prefix: str = "sipshield:",
        channel: str | None = None, node: str | None = None, flush_interval: float = 0.05, max_pending: int = 10_000, grace: float = 2.0,
    ) -> None:
        self.reactor = reactor
        self.link = link
        self.local = local if local is not None else MemoryShieldState()
        self.prefix = prefix
        self.channel = channel if channel is not None else prefix + "events"
        self.node = node if node is not None else f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.grace = grace
        self.listeners: list[RemoteBanListener] = []
        """Told of each ban and unban from another node."""
        # Bans and unbans (None) to write and publish, by key: never dropped.
        self._bans_out: OrderedDict[str, Ban | None] = OrderedDict()
        # Increments to add: (kind, key, slot) -> [count, ttl, window, keep, rate, burst].
        self._counts_out: OrderedDict[tuple[str, str, int], list[Any]] = OrderedDict()
        # The total last read per (kind, key): (slot, total), own increments included.
        self._seen: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()
        self.dropped = 0
        """Increments dropped because the queue was full (Redis down, or slow)."""
        self.status = "connecting"
        """"connecting", "up" or "down" (as last logged)."""
        self._started_at = 0.0
        self._busy = False
        self._resync = False
        self._purged_at = -math.inf
        self._subscriptions = 0
        self._failing = False
        self._loop: LoopingCall | None = None

    @property
    def evicted(self) -> int:
        return self.local.evicted

    @property
    def max_bans(self) -> int:
        return self.local.max_bans

    # -- the local answers, and what they queue -------------------------------------------

    def hit(self, key: str, window: float, now: float, keep: int) -> int:
        count = self.local.hit(key, window, now, keep)
        slot = int(now // window) if window > 0 else 0
        self._count("fw", key, slot, math.ceil(2 * window) + 1, window, keep, 0.0, 0.0)
        return count

    def forget(self, key: str) -> None:
        self.local.forget(key)

    def take(self, key: str, rate: float, burst: float, now: float) -> bool:
        taken = self.local.take(key, rate, burst, now)
        if taken:
            self._count("tb", key, int(now // BUCKET_SLOT), int(3 * BUCKET_SLOT), 0.0, 0, rate, burst)
        return taken

    def _count(self, kind: str, key: str, slot: int, ttl: int, window: float, keep: int, rate: float, burst: float) -> None:
        entry = self._counts_out.get((kind, key, slot))
        if entry is not None:
            entry[0] += 1
            return
        if "\t" in key or "\n" in key:
            return  # not a line of the counters' script: this key stays per node
        if len(self._counts_out) >= self.max_pending:
            _, oldest = self._counts_out.popitem(last=False)
            self.dropped += oldest[0]
        self._counts_out[(kind, key, slot)] = [1, ttl, window, keep, rate, burst]

    def ban(self, ban: Ban) -> None:
        self.local.ban(ban)
        if self.local.ban_in_force(ban.key, -math.inf) is ban:  # taken (not shorter than the one held)
            self._bans_out[ban.key] = ban
            self._bans_out.move_to_end(ban.key)

    def unban(self, key: str) -> bool:
        # Published whatever the local answer: another node may hold it.
        self._bans_out[key] = None
        self._bans_out.move_to_end(key)
        return self.local.unban(key)

    def banned(self, key: str, now: float) -> Ban | None:
        return self.local.banned(key, now)

    def bans(self, now: float) -> list[Ban]:
        return self.local.bans(now)

    def holds_bans(self) -> bool:
        return self.local.holds_bans()

    def open_call(self, owner: str, call: str, limit: int, until: float, now: float) -> bool:
        return self.local.open_call(owner, call, limit, until, now)

    def answer_call(self, call: str, tag: str) -> None:
        self.local.answer_call(call, tag)

    def close_call(self, call: str, tag: str | None = None) -> bool:
        return self.local.close_call(call, tag)

    def recent(self, key: str, window: float, now: float) -> int:
        return self.local.recent(key, window, now)

    def tokens(self, key: str, rate: float, burst: float, now: float) -> float:
        return self.local.tokens(key, rate, burst, now)

    def ban_in_force(self, key: str, now: float) -> Ban | None:
        return self.local.ban_in_force(key, now)

    def calls_open(self, owner: str, now: float) -> int:
        return self.local.calls_open(owner, now)

    # -- running ---------------------------------------------------------------------------

    def start(self) -> None:
        self._started_at = self.reactor.seconds()
        self.link.start(self._message)
        self._loop = LoopingCall(self.flush)
        self._loop.clock = self.reactor
        self._loop.start(self.flush_interval, now=False).addErrback(lambda f: self.log.failure("state: the flush loop stopped", f))

    def stop(self) -> Deferred[Any]:
        """One last flush (when Redis is up), then disconnect."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        last = self.flush()
        return last.addBoth(lambda _: self.link.stop())

    def flush(self) -> Deferred[Any]:
        """Send what is queued (one round trip; none while one is under way or Redis is down)."""
        up = self.link.up()
        self._note(up)
        if not up or self._busy:
            return defer.succeed(None)
        now = self.reactor.seconds()
        if self._resync:
            self._resync = False
            return self._send([("EVAL", _PURGE, 2, self._until_key, self._bans_key, repr(now)), ("HGETALL", self._bans_key)], self._resynced, None)
        commands: list[Command] = []
        bans = self._bans_out
        self._bans_out = OrderedDict()
        for key, ban in bans.items():
            commands.extend(self._ban_commands(key, ban))
        first = len(commands)
        counts = self._counts_out
        self._counts_out = OrderedDict()
        if counts:
            prefix = self.prefix
            lines = "\n".join(f"{prefix}{kind}:{key}:{slot}\t{entry[0]}\t{entry[1]}" for (kind, key, slot), entry in counts.items())
            commands.append(("EVAL", _COUNT, 0, lines))
        if now - self._purged_at >= PURGE_EVERY:
            self._purged_at = now
            commands.append(("EVAL", _PURGE, 2, self._until_key, self._bans_key, repr(now)))
        if not commands:
            return defer.succeed(None)
        return self._send(commands, lambda replies: self._counted(counts, str(replies[first]).split(",") if counts else []), (bans, counts))

    @property
    def _bans_key(self) -> str:
        return self.prefix + "bans"

    @property
    def _until_key(self) -> str:
        return self.prefix + "bans:until"

    def _ban_commands(self, key: str, ban: Ban | None) -> list[Command]:
        if ban is None:
            message = json.dumps({"node": self.node, "op": "unban", "key": key})
            return [("HDEL", self._bans_key, key), ("ZREM", self._until_key, key), ("PUBLISH", self.channel, message)]
        record = {"key": ban.key, "until": ban.until, "reason": ban.reason, "since": ban.since}
        return [
            ("HSET", self._bans_key, key, json.dumps(record)), ("ZADD", self._until_key, repr(ban.until), key),
            ("PUBLISH", self.channel, json.dumps({"node": self.node, "op": "ban", **record})),
        ]

    def _send(self, commands: Sequence[Command], done: Callable[[list[Any]], None], retry: tuple[OrderedDict[str, Ban | None], OrderedDict[tuple[str, str, int], list[Any]]] | None) -> Deferred[Any]:
        self._busy = True
        try:
            sent = self.link.send(commands)
        except Exception as e:  # a connection that died between up() and now
            sent = defer.fail(e)

        def replied(replies: list[Any]) -> None:
            self._busy = False
            self._failing = False
            done(replies)

        def failed(failure: Any) -> None:
            self._busy = False
            if not self._failing and self.link.up():  # an error of Redis's own (not a lost connection): once until a write succeeds
                self.log.warn("state: a write to Redis at {where} failed, retried: {why}", where=self.link.where, why=failure.getErrorMessage())
            self._failing = True
            if retry is None:
                self._resync = True
                return
            bans, counts = retry
            for key, ban in bans.items():  # kept, unless changed again since
                if key not in self._bans_out:
                    self._bans_out[key] = ban
            for k, entry in counts.items():
                if k in self._counts_out:
                    self._counts_out[k][0] += entry[0]
                elif len(self._counts_out) < self.max_pending:
                    self._counts_out[k] = entry
                else:
                    self.dropped += entry[0]

        return sent.addCallbacks(replied, failed)

    def _note(self, up: bool) -> None:
        """Log the moves between up and down, once each."""
        if up:
            if self._subscriptions != self.link.subscriptions:  # reconnected, however briefly: read what was missed
                self._subscriptions = self.link.subscriptions
                self._resync = True
            if self.status != "up":
                if self.status == "connecting":
                    self.log.info("state: Redis at {where} connected: bans, rate limits and failure counts shared (node {node})", where=self.link.where, node=self.node)
                else:
                    self.log.warn("state: Redis at {where} back: shared state resumed", where=self.link.where)
                self.status = "up"
        elif self.status == "up" or (self.status == "connecting" and self.reactor.seconds() - self._started_at >= self.grace):
            self.status = "down"
            self.log.warn("state: Redis at {where} unavailable, serving on local state", where=self.link.where)

    # -- what the other nodes did -------------------------------------------------------------

    def _counted(self, counts: OrderedDict[tuple[str, str, int], list[Any]], replies: Sequence[Any]) -> None:
        """The totals the counters' script returned: what is more than this node counted came from the others."""
        now = self.reactor.seconds()
        for ((kind, key, slot), (n, _ttl, window, keep, rate, burst)), total in zip(counts.items(), replies, strict=False):
            try:
                total = int(total)
            except ValueError:
                continue
            last = self._seen.pop((kind, key), None)
            counted = last[1] if last is not None and last[0] == slot else 0
            if len(self._seen) >= self.local.max_keys:
                self._seen.popitem(last=False)
            self._seen[(kind, key)] = (slot, total)
            others = total - counted - n
            if others <= 0:
                continue
            if kind == "fw":
                for _ in range(min(others, keep)):
                    self.local.hit(key, window, now, keep)
            else:
                self.local.spend(key, others, rate, burst, now)

    def _message(self, raw: str) -> None:
        try:
            data = json.loads(raw)
            if data.get("node") == self.node:
                return  # our own, back from Redis
            if data["op"] == "ban":
                self._remote_ban(_ban_of(data))
            elif data["op"] == "unban":
                self._remote_unban(str(data["key"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.log.warn("state: an unreadable message on {channel} ignored: {why}", channel=self.channel, why=str(e))

    def _remote_ban(self, ban: Ban) -> bool:
        if ban.until <= self.reactor.seconds():
            return False
        self.local.ban(ban)
        if self.local.ban_in_force(ban.key, -math.inf) is not ban:
            return False  # held already, as long or longer
        self._bans_out.pop(ban.key, None)
        for listener in self.listeners:
            listener.remote_banned(ban)
        return True

    def _remote_unban(self, key: str) -> None:
        if self.local.unban(key):
            for listener in self.listeners:
                listener.remote_unbanned(key)

    def _resynced(self, replies: list[Any]) -> None:
        """The bans in force in Redis: take those missing here, publish those missing there."""
        now = self.reactor.seconds()
        self._purged_at = now
        raw = replies[1] if isinstance(replies[1], list) else []
        there: dict[str, float] = {}
        taken = 0
        for value in raw[1::2]:
            try:
                ban = _ban_of(json.loads(value))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            there[ban.key] = ban.until
            taken += self._remote_ban(ban)
        published = 0
        for ban in self.local.bans(now):
            if there.get(ban.key, -math.inf) < ban.until and ban.key not in self._bans_out:
                self._bans_out[ban.key] = ban
                published += 1
        if taken or published:
            self.log.info("state: {taken} ban(s) read from Redis, {published} published to it", taken=taken, published=published)


def _ban_of(data: Any) -> Ban:
    return Ban(str(data["key"]), float(data["until"]), str(data.get("reason", ""))[:200], float(data.get("since", 0.0)))


class TxRedisLink:
    """:class:`RedisLink` over txredisapi: one connection for commands, one
    subscribed to the channel (none when ``channel`` is None: the location
    store needs commands only); both reconnect by themselves, backing off up
    to ``max_delay`` seconds.  txredisapi runs on the global reactor (the
    one twistd runs)."""

    def __init__(self, host: str, port: int, db: int = 0, *, username: str | None = None, password: str | None = None,
                 channel: str | None = "sipshield:events", connect_timeout: float = 2.0, reply_timeout: float = 2.0, max_delay: float = 5.0) -> None:
        self.host, self.port, self.db = host, port, db
        self.where = f"{host}:{port}/{db}"
        self.username, self.password = username, password
        self.channel = channel
        self.connect_timeout, self.reply_timeout, self.max_delay = connect_timeout, reply_timeout, max_delay
        self._commands: Any = None
        self._subscriber: Any = None
        self._subscribed: Any = None
        self.subscriptions = 0

    def _ready(self, subscriber: Any) -> None:
        self._subscribed = subscriber
        self.subscriptions += 1

    def start(self, on_message: Callable[[str], None]) -> None:
        import txredisapi
        from twisted.internet import reactor
        from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint

        link = self

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def connectionMade(self) -> Any:
                ready = super().connectionMade()
                ready.addCallback(lambda _: self.subscribe(link.channel) if self.connected else None)
                ready.addCallback(lambda _: link._ready(self) if self.connected else None)
                ready.addErrback(lambda f: self.transport.loseConnection())
                return ready

            def connectionLost(self, why: Any) -> None:
                if link._subscribed is self:
                    link._subscribed = None
                super().connectionLost(why)

            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                on_message(message.decode() if isinstance(message, bytes) else str(message))

        def endpoint() -> Any:
            # An address needs no resolver (no thread, and none of its delay).
            try:
                version = ipaddress.ip_address(self.host).version
            except ValueError:
                return HostnameEndpoint(reactor, self.host, self.port, timeout=self.connect_timeout)
            kind = TCP4ClientEndpoint if version == 4 else TCP6ClientEndpoint
            return kind(reactor, self.host, self.port, timeout=self.connect_timeout)

        commands = txredisapi.RedisFactory(self.where, self.db, 1, isLazy=True, password=self.password, username=self.username,
                                           replyTimeout=self.reply_timeout)
        subscriber = txredisapi.SubscriberFactory(isLazy=True)
        subscriber.protocol = Subscriber
        subscriber.password, subscriber.username = self.password, self.username
        factories = (commands, subscriber) if self.channel is not None else (commands,)
        for factory in factories:
            factory.maxDelay = self.max_delay
            factory.deferred.addErrback(lambda f: None)  # a failed first attempt is retried, and logged by the state
            # factory.startConnecting(endpoint()), with a ClientService that
            # does not log each retry: the state logs the outage once.
            slot = txredisapi._PoolSlot(factory, endpoint(), factory.reconnect)
            slot.service = _QuietClientService(endpoint(), txredisapi._SlotFactory(factory, slot), retryPolicy=slot._retryDelay,
                                               prepareConnection=slot._prepareConnection)
            factory.slots.append(slot)
            slot.start()
        self._commands, self._subscriber = commands, (subscriber if self.channel is not None else None)

    def up(self) -> bool:
        return self._commands is not None and self._commands.size > 0 and (self._subscribed is not None or self.channel is None)

    def send(self, commands: Sequence[Command]) -> Deferred[list[Any]]:
        return defer.ensureDeferred(self._send(commands))

    async def _send(self, commands: Sequence[Command]) -> list[Any]:
        if len(commands) == 1:
            # Not a pipeline: txredisapi gives a pipeline the connection to
            # itself until it is answered, where single commands share it
            # (several REGISTERs and lookups in flight on one connection).
            return [await self._commands.handler.execute_command(*commands[0])]
        conn = await self._commands.handler.pipeline()
        for command in commands:
            conn.execute_command(*command)
        replies: list[Any] = await conn.execute_pipeline()
        return replies

    def stop(self) -> Deferred[Any]:
        factories = [f for f in (self._commands, self._subscriber) if f is not None]
        self._commands = self._subscriber = self._subscribed = None
        return defer.gatherResults([f.disconnect() for f in factories], consumeErrors=True)


class _QuietClientService(ClientService):
    """A ClientService whose "Scheduling retry" lines go nowhere."""

    _log = Logger(observer=LogPublisher())  # one with no observers


class RedisStateService(Service):
    """Runs a :class:`RedisShieldState`: connects at start, flushes and disconnects at stop."""

    def __init__(self, state: RedisShieldState) -> None:
        self.state = state

    def startService(self) -> None:
        super().startService()
        self.state.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self.state.stop()


def build_shield_state(config: Config, reactor: IReactorTime) -> tuple[MemoryShieldState | RedisShieldState, RedisStateService | None]:
    """The state ``[state]`` asks for, and the service that runs it (None for memory)."""
    local = MemoryShieldState(max_bans=config.bans.max_bans)
    state = config.state
    if state.backend != "redis":
        return local, None
    address = state.redis
    channel = f"{state.key_prefix}events:{address.db}"  # pub/sub ignores the database number
    link = TxRedisLink(address.host, address.port, address.db, username=address.username, password=address.password, channel=channel)
    shared = RedisShieldState(reactor, link, local=local, prefix=state.key_prefix, channel=channel)
    return shared, RedisStateService(shared)
