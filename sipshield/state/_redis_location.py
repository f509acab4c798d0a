"""The Redis location store: the bindings of every node of a cluster (and of
every worker of one node) in one Redis, through txredisapi (docs/scaling.md).

Keys, all under ``prefix`` (``[state] key_prefix``):

- ``loc:aor:<aor>``: a hash, contact -> ``"<order> <json>"``: the binding
  (short JSON keys, see :func:`_encode`) and its first-registration order
  (from the ``loc:order`` counter, kept when the binding is refreshed: among
  equal q values bindings come in that order, as in the other stores);
- ``loc:exp``: a sorted set of binding ids (the order number: unique, a few
  digits, so the small sets stay in Redis's compact encoding) by expiry, for
  ``expire`` and ``count`` (ZCARD); ``loc:ref``: a hash, id -> ``aor \\n contact``;
- ``loc:id:<identity>``: a sorted set of the identity's binding ids by
  expiry, for ``count_for_identity`` (ZCOUNT of the unexpired ones);
- ``loc:aors``: the AORs holding bindings (a sorted set, every score 0, so
  ZRANGE is in AOR order: the admin API's ``listing``).

Every change is one Lua script (``_UPDATE``, ``_EXPIRE``), atomic in Redis:
the registrar's per-AOR locks are per process, so with several nodes the
caps (``max_bindings`` per AOR, ``max_bindings_per_identity``) and the CSeq
rule of RFC 3261 10.3 step 7 are checked again inside the script, against
what Redis holds at that instant; a REGISTER that would pass a cap another
node's REGISTER just took gets :class:`BindingRefused`.

The scripts build key names from the prefix (one Redis, or a primary with
replicas; not Redis Cluster, whose scripts must declare every key).

No local cache: a lookup is one HGETALL (about a tenth of a millisecond on a
LAN, docs/performance.md), and a cache would let a node relay to a contact
unregistered through another node.  Redis down: every call fails at once
with :class:`StoreUnavailable` (the registrar and the lookup answer 503 with
Retry-After); logged once when it goes and once when it is back; the
connection reconnects by itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sipshield.interfaces import ILocationStore
from sipshield.state._binding import Binding, BindingLimits
from sipshield.state._errors import BindingRefused, StoreUnavailable
from sipshield.state._redis import Command, RedisLink

__all__ = ["RedisLocationStore", "redis_location_store"]

WATCH_EVERY = 0.25
"""Seconds between two looks at a lost connection (to log once that it is back)."""
EXPIRE_BATCH = 1000
"""Bindings one expiry script removes at most (Redis runs one script at a time: keep each short)."""

# ARGV: prefix, aor, now, max_aor (-1: no caps, no CSeq rule), max_identity,
# identity ("" for none), call_id, cseq, n_remove (-1: every binding), the
# n_remove contacts, then (contact, expires_at, json) per binding to put.
# Returns {the number of bindings removed, the AOR's hash after the change (HGETALL)},
# or "cseq" / "aor" / "identity" (refused, nothing changed).
_UPDATE = r"""
local prefix, aor, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_aor, max_id, identity, call_id, cseq = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7], tonumber(ARGV[8])
local nrem = tonumber(ARGV[9])
local hkey, ekey, rkey = prefix .. 'loc:aor:' .. aor, prefix .. 'loc:exp', prefix .. 'loc:ref'
local existing = {}
local raw = redis.call('HGETALL', hkey)
for i = 1, #raw, 2 do
  local v = raw[i + 1]
  local sp = string.find(v, ' ', 1, true)
  existing[raw[i]] = {order = string.sub(v, 1, sp - 1), b = cjson.decode(string.sub(v, sp + 1))}
end
local removes, puts = {}, {}
local first = 10
if nrem < 0 then
  for c, _ in pairs(existing) do removes[c] = true end
  nrem = 0
else
  for i = first, first + nrem - 1 do removes[ARGV[i]] = true end
end
for i = first + nrem, #ARGV, 3 do puts[#puts + 1] = {c = ARGV[i], e = ARGV[i + 1], json = ARGV[i + 2]} end
local putting = {}
for _, p in ipairs(puts) do putting[p.c] = true end
local function live(c)
  local e = existing[c]
  if e ~= nil and e.b.e > now then return e end
  return nil
end
if max_aor >= 0 then
  for c, _ in pairs(existing) do
    local e = live(c)
    if e ~= nil and (removes[c] or putting[c]) and e.b.i == call_id and e.b.s >= cseq then return 'cseq' end
  end
  local kept, refresh = 0, true
  for c, _ in pairs(existing) do
    if live(c) ~= nil and not removes[c] and not putting[c] then kept = kept + 1 end
  end
  for _, p in ipairs(puts) do if live(p.c) == nil then refresh = false end end
  if kept + #puts > max_aor and not refresh then return 'aor' end
  if identity ~= '' then
    local added, freed = 0, 0
    for _, p in ipairs(puts) do
      local e = live(p.c)
      if e == nil or e.b.d ~= identity then added = added + 1 end
    end
    if added > 0 then
      for c, _ in pairs(removes) do
        local e = live(c)
        if e ~= nil and e.b.d == identity and not putting[c] then freed = freed + 1 end
      end
      local held = redis.call('ZCOUNT', prefix .. 'loc:id:' .. identity, '(' .. ARGV[3], '+inf')
      if held - freed + added > max_id then return 'identity' end
    end
  end
end
local removed = 0
for c, _ in pairs(removes) do
  local e = existing[c]
  if e ~= nil then
    redis.call('HDEL', hkey, c)
    redis.call('ZREM', ekey, e.order)
    redis.call('HDEL', rkey, e.order)
    if e.b.d ~= nil then redis.call('ZREM', prefix .. 'loc:id:' .. e.b.d, e.order) end
    existing[c] = nil
    removed = removed + 1
  end
end
for _, p in ipairs(puts) do
  local b = cjson.decode(p.json)
  local e = existing[p.c]
  local order
  if e ~= nil then
    order = e.order
    if e.b.d ~= nil and e.b.d ~= b.d then redis.call('ZREM', prefix .. 'loc:id:' .. e.b.d, order) end
  else
    order = tostring(redis.call('INCR', prefix .. 'loc:order'))
    redis.call('HSET', rkey, order, aor .. '\n' .. p.c)
  end
  redis.call('HSET', hkey, p.c, order .. ' ' .. p.json)
  redis.call('ZADD', ekey, p.e, order)
  if b.d ~= nil then redis.call('ZADD', prefix .. 'loc:id:' .. b.d, p.e, order) end
  existing[p.c] = {order = order, b = b}
end
if redis.call('EXISTS', hkey) == 1 then
  redis.call('ZADD', prefix .. 'loc:aors', 0, aor)
else
  redis.call('ZREM', prefix .. 'loc:aors', aor)
end
return {removed, redis.call('HGETALL', hkey)}
"""

# ARGV: prefix, now, batch.  Removes up to *batch* bindings due at or before
# *now*; returns how many it looked at (a full batch: call again).
_EXPIRE = r"""
local prefix, now = ARGV[1], ARGV[2]
local ekey, rkey = prefix .. 'loc:exp', prefix .. 'loc:ref'
local due = redis.call('ZRANGEBYSCORE', ekey, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  local ref = redis.call('HGET', rkey, id)
  if ref then
    local nl = string.find(ref, '\n', 1, true)
    local aor, contact = string.sub(ref, 1, nl - 1), string.sub(ref, nl + 1)
    local hkey = prefix .. 'loc:aor:' .. aor
    local v = redis.call('HGET', hkey, contact)
    if v then
      local sp = string.find(v, ' ', 1, true)
      if string.sub(v, 1, sp - 1) == id then
        local b = cjson.decode(string.sub(v, sp + 1))
        if b.d ~= nil then redis.call('ZREM', prefix .. 'loc:id:' .. b.d, id) end
        redis.call('HDEL', hkey, contact)
        if redis.call('EXISTS', hkey) == 0 then redis.call('ZREM', prefix .. 'loc:aors', aor) end
      end
    end
    redis.call('HDEL', rkey, id)
  end
  redis.call('ZREM', ekey, id)
end
return #due
"""

_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_UPDATE, _EXPIRE)}
_REFUSED = {
    "cseq": (400, "CSeq out of order"),
    "aor": (403, "Too Many Contacts"),
    "identity": (403, "Too Many Registrations"),
}


def _encode(b: Binding) -> str:
    """The binding as the hash keeps it (aor and contact are the key and field); None fields left out."""
    data: dict[str, Any] = {"e": b.expires_at, "q": b.q, "i": b.call_id, "s": b.cseq}
    if b.path:
        data["p"] = list(b.path)
    if b.source is not None:
        data["t"] = list(b.source)
    if b.instance is not None:
        data["n"] = b.instance
    if b.reg_id is not None:
        data["r"] = b.reg_id
    if b.user_agent is not None:
        data["u"] = b.user_agent
    if b.identity is not None:
        data["d"] = b.identity
    if b.extra:
        data["x"] = b.extra
    return json.dumps(data, separators=(",", ":"))


def _decode(aor: str, contact: str, value: str) -> tuple[int, Binding]:
    order, _, raw = value.partition(" ")
    data = json.loads(raw)
    source = data.get("t")
    return int(order), Binding(
        aor=aor, contact=contact, expires_at=float(data["e"]), q=float(data["q"]), call_id=str(data["i"]), cseq=int(data["s"]),
        path=tuple(data.get("p", ())), source=(str(source[0]), str(source[1]), int(source[2])) if source else None,
        instance=data.get("n"), reg_id=data.get("r"), user_agent=data.get("u"), identity=data.get("d"), extra=data.get("x", {}),
    )


def _sorted(aor: str, flat: Any, now: float) -> list[Binding]:
    """The unexpired bindings of one HGETALL reply, highest q first, then first registered first."""
    if not isinstance(flat, list):
        return []
    found = [_decode(aor, str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]
    found.sort(key=lambda pair: (-pair[1].q, pair[0]))
    return [b for _, b in found if b.expires_at > now]


def _applied(result: Any) -> list[Any]:
    """The update script's answer: [the count removed, the AOR's hash after], or the rule that refused it."""
    if isinstance(result, str) and result in _REFUSED:
        status, reason = _REFUSED[result]
        raise BindingRefused(status, reason)
    if not isinstance(result, list) or len(result) != 2:
        raise StoreUnavailable(f"location store: unexpected answer from the update script: {result!r:.100}")
    return result


def _removed(result: Any) -> int:
    return int(_applied(result)[0])


def _number(value: float) -> str:
    return repr(float(value))


@implementer(ILocationStore)
class RedisLocationStore:
    """Bindings in Redis (RFC 3261 10.2 location service), shared by every
    node and worker pointing at the same Redis and ``prefix``.

    ``link`` is a :class:`~sipshield.state._redis.RedisLink` with no channel
    (``TxRedisLink(..., channel=None)``); ``start()`` connects it, ``stop()``
    disconnects.  Times are on the reactor's clock.  ``enforces_limits``
    tells the registrar to hand its caps to :meth:`update`, which checks
    them inside Redis.
    """

    enforces_limits = True
    log = Logger()

    def __init__(self, link: RedisLink, reactor: IReactorTime, prefix: str = "sipshield:") -> None:
        self.link = link
        self.reactor = reactor
        self.prefix = prefix
        self._started = False
        self._down = False
        self._in_flight = 0
        self._settled: list[Deferred[None]] = []

    # -- lifecycle -----------------------------------------------------------------

    def start(self, grace: float = 3.0) -> Deferred[None]:
        """Connect (and keep reconnecting); fires once connected, or after
        *grace* seconds without (logged: calls fail with StoreUnavailable,
        503, until the connection is up)."""
        if self._started:
            return defer.succeed(None)
        self._started = True
        self.link.start(lambda _message: None)
        ready: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + grace

        def poll() -> None:
            if not self._started:
                ready.callback(None)
            elif self.link.up():
                self.log.info("location store: Redis at {where} connected (keys {prefix}loc:*)", where=self.link.where, prefix=self.prefix)
                ready.callback(None)
            elif self.reactor.seconds() >= deadline:
                self._went_down(f"not connected within {grace:g} s")
                ready.callback(None)
            else:
                self.reactor.callLater(0.02, poll)

        poll()
        return ready

    def stop(self) -> Deferred[Any]:
        if not self._started:
            return defer.succeed(None)
        self._started = False
        return self.link.stop()

    # -- ILocationStore ---------------------------------------------------------------

    def bindings(self, aor: str) -> Deferred[list[Binding]]:
        now = self.reactor.seconds()
        return self._send([("HGETALL", self._aor_key(aor))]).addCallback(lambda replies: _sorted(aor, replies[0], now))

    def put(self, binding: Binding) -> Deferred[None]:
        return self.update(binding.aor, (), (binding,)).addCallback(lambda _: None)

    def remove(self, aor: str, contact: str) -> Deferred[bool]:
        return self._script(_UPDATE, self._update_args(aor, [contact], (), None)).addCallback(lambda result: _removed(result) > 0)

    def remove_all(self, aor: str, limits: BindingLimits | None = None) -> Deferred[int]:
        """``Contact: *``; with *limits*, refused (BindingRefused, nothing
        removed) when a binding holds their Call-ID with an equal or higher CSeq."""
        return self._script(_UPDATE, self._update_args(aor, None, (), limits)).addCallback(_removed)

    def expire(self, now: float) -> Deferred[int]:
        return defer.ensureDeferred(self._expire(now))

    def count(self) -> Deferred[int]:
        return self._send([("ZCARD", self.prefix + "loc:exp")]).addCallback(lambda replies: int(replies[0]))

    def count_for_identity(self, identity: str) -> Deferred[int]:
        now = self.reactor.seconds()
        return self._send([("ZCOUNT", self.prefix + "loc:id:" + identity, "(" + _number(now), "+inf")]).addCallback(lambda replies: int(replies[0]))

    def listing(self, limit: int) -> Deferred[list[Binding]]:
        return defer.ensureDeferred(self._listing(limit))

    # -- beyond the interface -----------------------------------------------------------

    def update(self, aor: str, remove: Iterable[str] = (), put: Iterable[Binding] = (), limits: BindingLimits | None = None) -> Deferred[list[Binding]]:
        """Remove contacts then add or replace bindings of one AOR, in one
        script (RFC 3261 10.3 step 7: all or nothing).  With *limits*, the
        caps and the CSeq rule are checked first inside Redis; a REGISTER
        that breaks one fails with :class:`BindingRefused` and changes nothing.

        Fires with the AOR's unexpired bindings after the change (what
        ``bindings(aor)`` would answer next), read by the same script: the
        registrar's 200 lists them without another round trip."""
        now = self.reactor.seconds()
        d = self._script(_UPDATE, self._update_args(aor, list(remove), tuple(put), limits))
        return d.addCallback(lambda result: _sorted(aor, _applied(result)[1], now))

    def settled(self) -> Deferred[None]:
        """Fires once no call of this store awaits Redis's answer (see SQLLocationStore.settled)."""
        if not self._in_flight:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._settled.append(d)
        return d

    # -- internals ----------------------------------------------------------------------

    def _aor_key(self, aor: str) -> str:
        return self.prefix + "loc:aor:" + aor

    def _update_args(self, aor: str, remove: Sequence[str] | None, put: Sequence[Binding], limits: BindingLimits | None) -> list[str]:
        now = _number(self.reactor.seconds())
        if limits is None:
            args = [self.prefix, aor, now, "-1", "0", "", "", "0"]
        else:
            args = [self.prefix, aor, now, str(limits.max_bindings), str(limits.max_bindings_per_identity), limits.identity or "", limits.call_id, str(limits.cseq)]
        if remove is None:
            args.append("-1")
        else:
            args.append(str(len(remove)))
            args.extend(remove)
        for b in put:
            if b.aor != aor:
                raise ValueError(f"binding of {b.aor} in an update of {aor}")
            args.extend((b.contact, _number(b.expires_at), _encode(b)))
        return args

    async def _expire(self, now: float) -> int:
        removed = 0
        while True:
            done = int(await self._script(_EXPIRE, [self.prefix, _number(now), str(EXPIRE_BATCH)]))
            removed += done
            if done < EXPIRE_BATCH:
                return removed

    async def _listing(self, limit: int) -> list[Binding]:
        found: list[Binding] = []
        start = 0
        now = self.reactor.seconds()
        while len(found) < limit:
            aors = (await self._send([("ZRANGE", self.prefix + "loc:aors", start, start + limit - 1)]))[0]
            if not isinstance(aors, list) or not aors:
                break
            replies = await self._send([("HGETALL", self._aor_key(str(aor))) for aor in aors])
            for aor, flat in zip(aors, replies, strict=True):
                found += _sorted(str(aor), flat, now)[: limit - len(found)]
            start += limit
        return found

    def _script(self, script: str, args: Sequence[str]) -> Deferred[Any]:
        """EVALSHA, and EVAL once when Redis does not have the script yet (after a restart)."""
        sha = _SHA[script]

        def missing(failure: Failure) -> Deferred[Any] | Failure:
            if "NOSCRIPT" in failure.getErrorMessage():
                return self._send([("EVAL", script, 0, *args)]).addCallback(lambda replies: replies[0])
            return failure

        return self._send([("EVALSHA", sha, 0, *args)], raw=True).addCallback(lambda replies: replies[0]).addErrback(missing).addErrback(self._unavailable)

    def _send(self, commands: Sequence[Command], raw: bool = False) -> Deferred[list[Any]]:
        """One pipelined round trip; StoreUnavailable at once when Redis is not connected."""
        if not self._started or not self.link.up():
            self._went_down("not connected")
            return defer.fail(StoreUnavailable(f"location store: Redis at {self.link.where} is not connected"))
        try:
            sent = self.link.send(commands)
        except Exception as e:  # noqa: BLE001 - a connection lost between up() and now: txredisapi raises its own ConnectionError
            sent = defer.fail(e)
        self._in_flight += 1

        def answered(result: Any) -> Any:
            self._in_flight -= 1
            if not self._in_flight:
                waiting, self._settled = self._settled, []
                for d in waiting:
                    d.callback(None)
            if not isinstance(result, Failure) and self._down:
                self._back()
            return result

        sent.addBoth(answered)
        return sent if raw else sent.addErrback(self._unavailable)

    def _unavailable(self, failure: Failure) -> Failure:
        if failure.check(StoreUnavailable, BindingRefused):
            return failure
        self._went_down(failure.getErrorMessage() or type(failure.value).__name__)
        raise StoreUnavailable(f"location store: Redis at {self.link.where}: {failure.getErrorMessage() or type(failure.value).__name__}")

    def _went_down(self, why: str) -> None:
        if not self._down:
            self._down = True
            self.log.warn("location store: Redis at {where} unavailable ({why}): REGISTERs and lookups get 503 until it is back", where=self.link.where, why=why)
            self.reactor.callLater(WATCH_EVERY, self._watch)

    def _watch(self) -> None:
        """While down, look at the connection now and then, to log once when it is back."""
        if not self._down or not self._started:
            return
        if self.link.up():
            self._back()
        else:
            self.reactor.callLater(WATCH_EVERY, self._watch)

    def _back(self) -> None:
        self._down = False
        self.log.info("location store: Redis at {where} back", where=self.link.where)


def redis_location_store(url: str, prefix: str, reactor: IReactorTime) -> RedisLocationStore:
    """The store at ``url`` (a checked ``redis://`` URL), on its own command connection."""
    from sipshield.config import parse_redis_url
    from sipshield.state._redis import TxRedisLink

    address = parse_redis_url(url)
    link = TxRedisLink(address.host, address.port, address.db, username=address.username, password=address.password, channel=None)
    return RedisLocationStore(link, reactor, prefix)
