"""Digest nonce-counts shared between nodes through Redis (issue 11, docs/scaling.md).

A nonce is an HMAC under the secret every node shares (``[auth]
nonce_secret_file``), so any node can check it; what a node cannot know
alone is whether another node already accepted this (nonce, nc): a replay
there.  :class:`RedisNonceCounts` asks Redis, atomically: one Lua script
records the count if it is above the highest any node recorded for that
nonce (RFC 7616 3.4: nc grows with each use; without qop a nonce serves
once), in a key that expires with the nonce.

Asked only for a request whose digest response verified (the auth stage's
``_logged_in``), never for unauthenticated traffic: a forged nonce fails its
HMAC locally, so nothing an attacker sends unauthenticated writes to Redis.

Every use asked in one reactor turn goes in one script call (one command,
one argument, one reply), on the shield state's connection (its
:class:`~sipshield.state.RedisLink`).  Never waits on Redis: a link that is
down answers "unavailable" at once, and a reply that has not come within
``timeout`` seconds is "unavailable" too (the auth stage then answers 503
with Retry-After: fail closed, docs/scaling.md "Nonce counts").
"""

from __future__ import annotations

from typing import Any, Literal

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sipshield.state._redis import RedisLink

__all__ = ["RedisNonceCounts", "SharedUse"]

SharedUse = Literal["fresh", "replayed", "unavailable"]
"""What the shared nonce-counts say of one use: the first time any node saw
this (nonce, nc), seen before (a replay), or not known now (Redis is down)."""

# Lines of key TAB nc TAB ttl-ms; one letter per line back: "a" accepted
# (recorded), "r" refused (a count as high was recorded before, or the nonce
# was used without qop).  Letters, not digits: txredisapi turns a reply of
# digits into a number.  nc -1 is a use without qop: only as the first use.
_USE = r"""
local out = {}
for key, nc, ttl in string.gmatch(ARGV[1], "([^\t\n]+)\t(%-?%d+)\t(%d+)") do
  local last = redis.call('GET', key)
  local n = tonumber(nc)
  if last and (n < 0 or tonumber(last) < 0 or tonumber(last) >= n) then
    out[#out + 1] = 'r'
  else
    redis.call('SET', key, nc, 'PX', ttl)
    out[#out + 1] = 'a'
  end
end
return table.concat(out)
"""

TIMEOUT = 2.0
"""Seconds a use waits for Redis before it is "unavailable"."""


class RedisNonceCounts:
    """:class:`~sipshield.auth.SharedNonceCounts` in Redis: the key
    ``<prefix>nonce:<nonce>`` holds the highest nc any node accepted."""

    log = Logger()

    def __init__(self, reactor: IReactorTime, link: RedisLink, prefix: str = "sipshield:", timeout: float = TIMEOUT) -> None:
        self.reactor = reactor
        self.link = link
        self.prefix = prefix
        self.timeout = timeout
        self._pending: list[tuple[str, int, int, Deferred[SharedUse]]] = []
        self._flush_call: IDelayedCall | None = None
        self.unavailable = 0
        """Uses answered "unavailable" (Redis down, or too slow)."""
        self._outage = False

    def use(self, nonce: str, nc: int, ttl_ms: int) -> Deferred[SharedUse]:
        if not self.link.up():
            return defer.succeed(self._unavailable("not connected"))
        d: Deferred[SharedUse] = Deferred()
        self._pending.append((nonce, nc, ttl_ms, d))
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._flush_call = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        prefix = self.prefix
        lines = "\n".join(f"{prefix}nonce:{nonce}\t{nc}\t{ttl}" for nonce, nc, ttl, _ in batch)
        try:
            sent = self.link.send([("EVAL", _USE, 0, lines)])
        except Exception as e:  # a connection that died between up() and now
            sent = defer.fail(e)
        done = [False]

        def answer(replies: list[Any]) -> None:
            if done[0]:
                return
            done[0] = True
            if deadline.active():
                deadline.cancel()
            letters = replies[0].decode() if isinstance(replies[0], bytes) else str(replies[0])
            if len(letters) != len(batch) or not set(letters) <= {"a", "r"}:
                fail(f"an unexpected reply {letters[:40]!r}")
                return
            if self._outage:
                self._outage = False
                self.log.info("auth: nonce counts in Redis at {where} answer again: digest answers accepted", where=self.link.where)
            for (_, _, _, d), letter in zip(batch, letters, strict=True):
                d.callback("fresh" if letter == "a" else "replayed")

        def fail(why: str) -> None:
            done[0] = True
            if deadline.active():
                deadline.cancel()
            for *_, d in batch:
                d.callback(self._unavailable(why))

        def failed(failure: Any) -> None:
            if not done[0]:
                fail(failure.getErrorMessage())

        deadline = self.reactor.callLater(self.timeout, lambda: None if done[0] else fail(f"no reply within {self.timeout:g} s"))
        sent.addCallbacks(answer, failed)

    def _unavailable(self, why: str) -> SharedUse:
        self.unavailable += 1
        if not self._outage:
            self._outage = True
            self.log.warn("auth: nonce counts in Redis at {where} unavailable ({why}): digest answers get 503 until it answers",
                          where=self.link.where, why=why)
        return "unavailable"
