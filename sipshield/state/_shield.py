"""The shield's state: failure windows, token buckets, bans and counted calls, in memory.

One interface (:class:`ShieldState`) for what the protections count and
remember, so that a shared implementation (Redis, for several workers and
nodes) can stand in for this one later.  Time is always passed in (the
caller reads its reactor's clock), so this module needs no reactor and a
test drives it with plain numbers.

Every table is bounded: remote input decides the keys (a forged source
address per datagram), so each table holds at most ``max_keys`` entries and
forgets the least recently touched one first; what was forgotten is
counted (``evicted``), never silently grown.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Ban", "MemoryShieldState", "ShieldState"]


@dataclass(frozen=True, slots=True)
class Ban:
    """One banned source: a host, or an IPv6 network such as ``2001:db8::/64``."""

    key: str
    until: float
    """Time (the reactor's clock, seconds since the epoch) the ban ends."""
    reason: str
    since: float = 0.0


@dataclass(slots=True)
class _Call:
    """One counted call: whose, until when, and the tag that answered it."""

    owner: str
    until: float
    tag: str | None = None


class ShieldState(Protocol):
    """What bans, rate limits and scanner detection count and remember.

    Reads answer synchronously (they sit on the path of every datagram);
    an implementation shared between processes keeps a local view of what
    is read often (the bans) and publishes its writes.
    """

    def hit(self, key: str, window: float, now: float, keep: int) -> int:
        """Record one event under *key* now; how many fall within the last
        *window* seconds (counting at most the latest *keep*)."""
        ...

    def forget(self, key: str) -> None:
        """Drop the events recorded under *key* (after it led to a ban, say)."""
        ...

    def take(self, key: str, rate: float, burst: float, now: float) -> bool:
        """Take one token from *key*'s bucket (refilled at *rate* per second
        up to *burst*); False when it is empty."""
        ...

    def ban(self, ban: Ban) -> None:
        """Ban ``ban.key`` until ``ban.until`` (replacing a shorter ban)."""
        ...

    def unban(self, key: str) -> bool:
        """Lift the ban on *key*; whether there was one."""
        ...

    def banned(self, key: str, now: float) -> Ban | None:
        """The ban on *key* in force at *now*, if any."""
        ...

    def bans(self, now: float) -> list[Ban]:
        """Every ban in force at *now*, soonest to end first."""
        ...

    def holds_bans(self) -> bool:
        """Whether any ban may be in force (cheap: the drop path asks it
        for every datagram, and answers False at once while it is False)."""
        ...

    def open_call(self, owner: str, call: str, limit: int, until: float, now: float) -> bool:
        """Count *call* (a dialog's key) for *owner* until *until*, if
        *owner* has fewer than *limit* calls counted at *now* (those past
        their *until* are not) and *call* is not counted already; whether
        it is counted now."""
        ...

    def answer_call(self, call: str, tag: str) -> None:
        """*call* was answered (2xx) with the remote *tag*: only a request
        of that dialog (:meth:`close_call` with this tag) ends it now."""
        ...

    def close_call(self, call: str, tag: str | None = None) -> bool:
        """Stop counting *call*: any counted call when *tag* is None, else
        only an answered call whose remote tag is *tag*; whether it was."""
        ...

    # Reads that change nothing (``sipshield explain``): no entry made,
    # moved, refilled or expired.

    def recent(self, key: str, window: float, now: float) -> int:
        """How many events recorded under *key* fall within the last *window* seconds."""
        ...

    def tokens(self, key: str, rate: float, burst: float, now: float) -> float:
        """The tokens *key*'s bucket would hold at *now* (a full one, *burst*, if it has none)."""
        ...

    def ban_in_force(self, key: str, now: float) -> Ban | None:
        """The ban on *key* in force at *now*, if any (as :meth:`banned`, without forgetting an ended one)."""
        ...

    def calls_open(self, owner: str, now: float) -> int:
        """How many calls are counted for *owner* at *now* (those past their end are not)."""
        ...


class MemoryShieldState:
    """:class:`ShieldState` in this process's memory, bounded per table."""

    def __init__(self, max_keys: int = 100_000, max_bans: int = 100_000) -> None:
        if max_keys < 1 or max_bans < 1:
            raise ValueError("max_keys and max_bans must be positive")
        self.max_keys = max_keys
        self.max_bans = max_bans
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, last refill]
        self._bans: dict[str, Ban] = {}
        self._ending: list[tuple[float, str]] = []  # heap of (until, key); stale entries skipped
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        self._owners: dict[str, set[str]] = {}
        self.evicted = 0
        """Entries forgotten because a table was full (failure windows, buckets, bans, calls)."""

    # -- failure windows ----------------------------------------------------------------

    def hit(self, key: str, window: float, now: float, keep: int) -> int:
        times = self._hits.get(key)
        if times is None:
            self._make_room(self._hits)
            times = self._hits[key] = deque(maxlen=max(1, keep))
        else:
            self._hits.move_to_end(key)
        times.append(now)
        start = now - window
        while times and times[0] <= start:
            times.popleft()
        return len(times)

    def forget(self, key: str) -> None:
        self._hits.pop(key, None)

    # -- token buckets ----------------------------------------------------------------------

    def take(self, key: str, rate: float, burst: float, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(self._buckets)
            bucket = self._buckets[key] = [burst, now]
        else:
            self._buckets.move_to_end(key)
            tokens, last = bucket
            bucket[0] = min(burst, tokens + (now - last) * rate) if now > last else tokens
            bucket[1] = max(now, last)
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        return False

    def spend(self, key: str, tokens: float, rate: float, burst: float, now: float) -> None:
        """Take *tokens* more from *key*'s bucket, taken elsewhere (another
        node: sipshield/state/_redis.py); it may owe down to -*burst*."""
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(self._buckets)
            bucket = self._buckets[key] = [burst, now]
        elif now > bucket[1]:
            bucket[0] = min(burst, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
        bucket[0] = max(-burst, bucket[0] - tokens)

    # -- bans ------------------------------------------------------------------------------

    def ban(self, ban: Ban) -> None:
        bans = self._bans
        old = bans.get(ban.key)
        if old is not None and old.until >= ban.until:
            return
        if old is None and len(bans) >= self.max_bans:
            # Full: the ban that would end first makes room (a flood of
            # sources must not lift the bans that matter, nor grow the
            # table); found in O(log n) from the heap of end times.
            self._pop_soonest()
            self.evicted += 1
        bans[ban.key] = ban
        heapq.heappush(self._ending, (ban.until, ban.key))
        if len(self._ending) > 2 * len(bans) + 64:
            # Entries of lifted or replaced bans: rebuild rather than grow.
            self._ending = [(b.until, b.key) for b in bans.values()]
            heapq.heapify(self._ending)

    def _pop_soonest(self) -> Ban | None:
        ending, bans = self._ending, self._bans
        while ending:
            until, key = heapq.heappop(ending)
            ban = bans.get(key)
            if ban is not None and ban.until == until:
                del bans[key]
                return ban
        return None

    def unban(self, key: str) -> bool:
        return self._bans.pop(key, None) is not None

    def banned(self, key: str, now: float) -> Ban | None:
        ban = self._bans.get(key)
        if ban is None:
            return None
        if ban.until <= now:
            del self._bans[key]
            return None
        return ban

    def bans(self, now: float) -> list[Ban]:
        ending, bans = self._ending, self._bans
        while ending and ending[0][0] <= now:
            until, key = heapq.heappop(ending)
            ban = bans.get(key)
            if ban is not None and ban.until == until:
                del bans[key]
        return sorted(self._bans.values(), key=lambda b: b.until)

    def holds_bans(self) -> bool:
        return bool(self._bans)

    # -- concurrent calls ----------------------------------------------------------------

    def open_call(self, owner: str, call: str, limit: int, until: float, now: float) -> bool:
        calls = self._calls
        if call in calls:
            return False
        mine = self._owners.get(owner)
        if mine:
            for key in [k for k in mine if calls[k].until <= now]:
                self._drop_call(key)
            if len(mine) >= limit:
                return False
        elif limit < 1:
            return False
        if len(calls) >= self.max_keys:
            self._drop_call(next(iter(calls)))
            self.evicted += 1
        calls[call] = _Call(owner, until)
        self._owners.setdefault(owner, set()).add(call)
        return True

    def answer_call(self, call: str, tag: str) -> None:
        entry = self._calls.get(call)
        if entry is not None and entry.tag is None:
            entry.tag = tag

    def close_call(self, call: str, tag: str | None = None) -> bool:
        entry = self._calls.get(call)
        if entry is None or (tag is not None and entry.tag != tag):
            return False
        self._drop_call(call)
        return True

    # -- reads that change nothing ------------------------------------------------------------

    def recent(self, key: str, window: float, now: float) -> int:
        times = self._hits.get(key)
        start = now - window
        return 0 if times is None else sum(1 for t in times if t > start)

    def tokens(self, key: str, rate: float, burst: float, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return burst
        tokens, last = bucket
        return min(burst, tokens + (now - last) * rate) if now > last else tokens

    def ban_in_force(self, key: str, now: float) -> Ban | None:
        ban = self._bans.get(key)
        return ban if ban is not None and ban.until > now else None

    def calls_open(self, owner: str, now: float) -> int:
        return sum(1 for key in self._owners.get(owner, ()) if self._calls[key].until > now)

    def _drop_call(self, call: str) -> None:
        entry = self._calls.pop(call)
        mine = self._owners[entry.owner]
        mine.discard(call)
        if not mine:
            del self._owners[entry.owner]

    def load(self, bans: Iterable[Ban], now: float) -> int:
        """Put back bans kept from an earlier run; how many are still in force."""
        kept = 0
        for ban in bans:
            if ban.until > now:
                self.ban(ban)
                kept += 1
        return kept

    def _make_room(self, table: OrderedDict[str, Any]) -> None:
        if len(table) >= self.max_keys:
            table.popitem(last=False)
            self.evicted += 1
