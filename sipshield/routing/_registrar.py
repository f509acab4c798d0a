"""The registrar (RFC 3261 10.3, RFC 3327 Path) and the location lookup stage (RFC 3261 16.5).

Both stages talk to an :class:`~sipshield.interfaces.ILocationStore`.  With
the memory store every store call has already fired, so a REGISTER or a
lookup is answered synchronously; with SQL or Redis the stage returns a
Deferred and the pipeline waits for it.  A store that fails or times out
gives 503 with Retry-After (fail closed: RFC 3261 21.5.4).
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sipshield.events import SIPS_REFUSED, SecurityEvent, SecurityEvents
from sipshield.interfaces import IExplainable, IPipelineStage
from sipshield.message import URI, Address, Contact, ParseError, Request
from sipshield.proxy import CONTINUE, Decision, RequestContext, Target
from sipshield.proxy._explain import Explanation
from sipshield.proxy._sips import SIPS_NOT_ALLOWED, SIPS_REASON_OUTBOUND, SIPS_STATUS, sips_warning
from sipshield.state import Binding, BindingLimits, BindingRefused, StoreUnavailable, aor_of

__all__ = ["LocationLookup", "Registrar"]

IsLocal = Callable[[str, "int | None"], bool]

_STORE_ERRORS = (StoreUnavailable, defer.TimeoutError)
_SUPPORTED_OPTIONS = frozenset(("path",))


class _StoreGuard:
    """Shared by both stages: time out slow store calls, map failures to 503
    with Retry-After, and log them at most once per ``log_every`` seconds
    (an outage must not turn every REGISTER into a log line)."""

    log = Logger()

    def __init__(self, reactor: Any, timeout: float, retry_after: int, log_every: float = 30.0) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.unavailable = Decision.reply(503, "Location Service Unavailable", [("Retry-After", str(retry_after))])
        self.log_every = log_every
        self._failures = 0
        self._last_log = float("-inf")

    def call(self, d: Deferred[Any]) -> Deferred[Any]:
        if not d.called:
            d.addTimeout(self.timeout, self.reactor)
        return d

    def failed(self, failure: Failure, stage: str) -> Decision:
        failure.trap(*_STORE_ERRORS)
        self._failures += 1
        now = self.reactor.seconds()
        if now - self._last_log >= self.log_every:
            self.log.warn(
                "{stage}: location store unavailable ({count} failure(s) since last report): {error}",
                stage=stage, count=self._failures, error=failure.getErrorMessage() or repr(failure.value),
            )
            self._failures = 0
            self._last_log = now
        return self.unavailable


class _KeyedLocks:
    """One REGISTER at a time per AOR and per authenticated identity.

    A REGISTER reads the bindings and the identity's count, then writes; with
    a store that answers later (SQL, Redis) two REGISTERs of one identity
    into different AORs would both read the count before either wrote, and
    both pass ``max_bindings_per_identity`` (likewise two into one AOR and
    ``max_bindings``).  Locks are taken in the order given (the AOR, then the
    identity), so no two REGISTERs wait on each other in a cycle, and a lock
    is forgotten once nobody holds or waits for it: at most two per
    REGISTER in progress, bounded by the transaction caps.  With the memory
    store every lock is free when asked, and the REGISTER stays synchronous.
    """

    def __init__(self, reactor: Any = None, wait: float = 5.0, settled: Callable[[], Deferred[None]] | None = None) -> None:
        self._locks: dict[str, defer.DeferredLock] = {}
        self.reactor = reactor
        self.wait = wait
        """Seconds a REGISTER waits for a lock; past it, a TimeoutError (the 503 of a store that does not answer)."""
        self.settled = settled
        """The store's ``settled()``: after a store call failed (timed out), the
        locks are held until the store's jobs have ended, since a write that
        timed out may still be running and land after the next REGISTER read."""

    async def run(self, keys: tuple[str, ...], work: Callable[[], Deferred[Decision]]) -> Decision:
        held: list[defer.DeferredLock] = []
        locks = self._locks
        try:
            for key in keys:
                lock = locks.get(key)
                if lock is None:
                    lock = locks[key] = defer.DeferredLock()
                acquired = lock.acquire()
                if self.reactor is not None and not acquired.called:
                    acquired.addTimeout(self.wait, self.reactor)
                await acquired  # a cancelled or timed-out wait leaves the lock's queue
                held.append(lock)
            try:
                return await work()
            except _STORE_ERRORS:
                if self.settled is not None:
                    # Answer (503) now; let the next REGISTER in once the write that timed out has ended.
                    later, held = held, []
                    self.settled().addBoth(lambda _: self._release(keys, later))
                raise
        finally:
            self._release(keys, held)

    def _release(self, keys: tuple[str, ...], held: list[defer.DeferredLock]) -> None:
        locks = self._locks
        for lock in reversed(held):
            lock.release()
        for key in keys:
            free = locks.get(key)
            if free is not None and not free.locked and not free.waiting:
                del locks[key]

    def __len__(self) -> int:
        return len(self._locks)


def _served(domains: frozenset[str], is_local: IsLocal | None, host: str, port: int | None) -> bool:
    return host in domains or (is_local is not None and is_local(host, port))


@implementer(IPipelineStage, IExplainable)
class Registrar:
    """A registrar for ``domains`` (RFC 3261 10.3), storing bindings in ``store``.

    A REGISTER whose Request-URI is one of ``domains`` (or this proxy, as
    told by ``is_local(host, port)``) is answered here; anything else goes on
    (``CONTINUE``: RFC 3261 10.3 step 1 lets a proxy forward a REGISTER for
    another domain, and the later stages decide whether to).

    Answers, in the order RFC 3261 10.3 checks them:

    * 420 for a Require option other than ``path`` (step 2, 8.2.2.3);
    * 400 when To is not a SIP or SIPS URI (10.2: the AOR is a SIP URI; RFC
      4475 unksm2), 404 when its domain is not the Request-URI's (step 5);
    * 403 when :meth:`authorize` refuses (steps 3-4, the auth hook);
    * 403 "Forbidden: Path from an untrusted source" for a REGISTER carrying
      Path (RFC 3327) from a source that is not trusted
      (``context.trusted``, set by the auth stage for
      ``[auth] trusted_sources``): only a configured edge proxy may insert
      Path, since a UA's own Path would route its calls through any host it
      chose (refused, not stripped, so a misconfigured edge is noticed);
      400 "Path: malformed value" when a trusted edge sends one that is not a
      SIP name-addr (stored, it would be the Route of every call to the AOR);
    * 400 for ``Contact: *`` with other Contacts or an expiry other than 0
      (step 6), for a Contact that is not a SIP or SIPS URI (a policy: the
      proxy can only relay to SIP URIs), for an invalid q or Expires;
    * 423 with Min-Expires when 0 < expiry < ``min_expires`` (step 7,
      RFC 3261 21.4.17 / 20.23); expiries above ``max_expires`` are capped;
    * 400 "CSeq out of order" when a binding already holds this Call-ID with
      an equal or higher CSeq (step 7 says only that "the request fails").
      Not the 500 of RFC 3261 12.2.2 for out-of-order in-dialog requests: a
      stale or replayed REGISTER is the sender's fault, and sipshield answers
      bad input with 4xx only, so a 5xx always means the proxy or a backend
      is in trouble (what monitoring alerts on);
    * 403 "Too Many Contacts" beyond ``max_bindings`` per AOR (a local
      limit against memory exhaustion);
    * 403 "Too Many Registrations" when a REGISTER would give its
      authenticated identity (``context.identity``) more than
      ``max_bindings_per_identity`` bindings across all its AORs (the same
      local limit per identity, so that one account cannot fill the
      location store through many AORs; 403 rather than 503, since
      retrying will not help until some of its bindings go: RFC 3261
      21.4.4).  Refreshes and removals are never refused;
    * 503 with Retry-After when the store fails or does not answer within
      ``store_timeout`` seconds (fail closed; logged, rate-limited);
    * otherwise 200 listing every current binding with its remaining
      ``expires`` and a Date header (step 8), and the Path values when the
      UA supports path (RFC 3327 5.3).

    Path (RFC 3327 5.3) from a trusted source is stored with the bindings, since
    the edge proxy that added it needs requests routed through it; it is
    echoed in the 200 only when the UA lists ``path`` in Supported.
    """

    name = "registrar"

    def __init__(
        self,
        store: Any,
        domains: Iterable[str],
        reactor: Any,
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
        is_local: IsLocal | None = None,
        *,
        max_bindings: int = 16,
        max_bindings_per_identity: int = 32,
        retry_after: int = 30,
        store_timeout: float = 5.0,
    ) -> None:
        if not 0 < min_expires <= default_expires <= max_expires:
            raise ValueError("need 0 < min_expires <= default_expires <= max_expires")
        self.store = store
        self.domains = frozenset(d.lower() for d in domains)
        self.reactor = reactor
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.is_local = is_local
        self.max_bindings = max_bindings
        self.max_bindings_per_identity = max_bindings_per_identity
        self._guard = _StoreGuard(reactor, store_timeout, retry_after)
        self._serial = _KeyedLocks(reactor, store_timeout, getattr(store, "settled", None))
        self._update = getattr(store, "update", None)
        # A store shared by several nodes (Redis) checks the caps and the
        # CSeq rule itself, atomically: this process's locks do not bind the others.
        self._store_limits = bool(getattr(store, "enforces_limits", False))
        # A store that writes and lists the AOR's bindings in one call (SQL: one trip to its pool).
        self._update_listing: Callable[[str, list[str], list[Binding]], Deferred[list[Binding]]] | None = getattr(store, "update_listing", None)

    # -- the hook for authentication (RFC 3261 10.3 steps 3 and 4) -------------

    def authorize(self, context: RequestContext, aor: str) -> bool:
        """May this request change the bindings of ``aor``?  (RFC 3261 10.3 step 4.)

        The default allows everything: authentication stages run earlier and
        leave ``context.identity``; a deployment that ties identities to AORs
        overrides this (or the auth stage enforces it).  Refusal gives 403.
        """
        return True

    # -- IPipelineStage ------------------------------------------------------------

    def process(self, context: RequestContext) -> Decision | Deferred[Decision]:
        request = context.request
        if request.method != "REGISTER":
            return CONTINUE
        uri = request.uri
        if not uri.is_sip or not uri.host or not _served(self.domains, self.is_local, uri.host, uri.port):
            return CONTINUE
        try:
            checked = self._check(context, request, uri)
        except ParseError as e:
            return Decision.reply(e.status, e.reason)
        if isinstance(checked, Decision):
            return checked
        keys = ("aor " + checked[0],) if context.identity is None else ("aor " + checked[0], "identity " + context.identity)
        work = lambda: defer.ensureDeferred(self._register(context, *checked))  # noqa: E731
        return defer.ensureDeferred(self._serial.run(keys, work)).addErrback(self._guard.failed, self.name)

    def explain(self, context: RequestContext) -> Explanation:
        request = context.request
        if request.method != "REGISTER":
            return Explanation.passes(self.name, "not a REGISTER")
        uri = request.uri
        if not uri.is_sip or not uri.host or not _served(self.domains, self.is_local, uri.host, uri.port):
            return Explanation.passes(self.name, f"not a REGISTER for our domains ({uri.host})")
        try:
            checked = self._check(context, request, uri)  # reads the request only
        except ParseError as e:
            return Explanation.of(self.name, Decision.reply(e.status, e.reason), "a malformed header")
        if isinstance(checked, Decision):
            return Explanation.of(self.name, checked, "RFC 3261 10.3 checks")
        return Explanation(self.name, "register", f"would update the bindings of {checked[0]} (the store's caps then decide: 200, 403, 503); nothing is stored now", decides=True)

    # -- RFC 3261 10.3 steps 2-7, before touching the store ------------------------

    def _check(self, context: RequestContext, request: Request, uri: URI) -> Decision | tuple[str, list[Contact] | None, list[tuple[Contact, int]]]:
        headers = request.headers
        unsupported = [o for o in headers.get_values("Require") if o.lower() not in _SUPPORTED_OPTIONS]
        if unsupported:
            return Decision.reply(420, "Bad Extension", [("Unsupported", ", ".join(unsupported))])
        to = request.to.uri
        if not to.is_sip or not to.host:
            return Decision.reply(400, "To is not a SIP or SIPS URI")
        if uri.host in self.domains:
            if to.host != uri.host:
                return Decision.reply(404, "Not Found")
        elif not (to.host in self.domains if self.domains else _served(self.domains, self.is_local, to.host, to.port)):
            return Decision.reply(404, "Not Found")
        aor = aor_of(to)
        if not self.authorize(context, aor):
            return Decision.reply(403, "Forbidden")
        if "Path" in headers:
            if not context.trusted:
                return Decision.reply(403, "Forbidden: Path from an untrusted source")
            if not all(_is_sip_route(value) for value in headers.get_values("Path")):
                # Checked now: stored, it would become the Route of every call to this AOR.
                return Decision.reply(400, "Path: malformed value")
        request.call_id  # noqa: B018 - a missing Call-ID or CSeq is a 400 now, not later
        request.cseq  # noqa: B018
        contacts = request.contacts
        expires_header: int | None = None
        value = headers.get("Expires")
        if value is not None:
            value = value.strip()
            if not value.isdigit() or len(value) > 10:
                return Decision.reply(400, "Invalid Expires")
            expires_header = int(value)
        if not contacts:
            return aor, None, []
        if any(c.is_star for c in contacts):
            if len(contacts) != 1 or expires_header != 0:
                return Decision.reply(400, "Contact * needs Expires: 0 and no other Contact")
            return aor, contacts, []
        wanted: list[tuple[Contact, int]] = []
        for contact in contacts:
            if not contact.uri.is_sip:
                return Decision.reply(400, "Contact is not a SIP or SIPS URI")
            if "q" in contact.params and contact.q is None:
                return Decision.reply(400, "Invalid q in Contact")
            if "expires" in contact.params and contact.expires is None:
                return Decision.reply(400, "Invalid expires in Contact")
            expires = contact.expires
            if expires is None:
                expires = self.default_expires if expires_header is None else expires_header
            if 0 < expires < self.min_expires:
                return Decision.reply(423, "Interval Too Brief", [("Min-Expires", str(self.min_expires))])
            wanted.append((contact, min(expires, self.max_expires)))
        return aor, contacts, wanted

    # -- steps 6-8 against the store ---------------------------------------------------

    async def _register(self, context: RequestContext, aor: str, contacts: list[Contact] | None, wanted: list[tuple[Contact, int]]) -> Decision:
        request = context.request
        guard = self._guard
        if contacts is not None:
            call_id = request.call_id
            cseq = request.cseq.seq
            current: list[Binding] = await guard.call(self.store.bindings(aor))
            if not wanted:  # Contact: * (step 6)
                if any(b.call_id == call_id and b.cseq >= cseq for b in current):
                    return Decision.reply(400, "CSeq out of order")
                if current and self._store_limits:
                    limits = BindingLimits(self.max_bindings, self.max_bindings_per_identity, context.identity, call_id, cseq)
                    try:
                        await guard.call(self.store.remove_all(aor, limits))
                    except BindingRefused as refused:
                        return Decision.reply(refused.status, refused.reason)
                elif current:
                    await guard.call(self.store.remove_all(aor))
            else:
                decision = await self._apply(context, aor, current, wanted, call_id, cseq)
                if isinstance(decision, Decision):
                    return decision
                if decision is not None:  # the bindings after the update, from a store that answers with them
                    return self._ok(request, decision)
        bindings: list[Binding] = await guard.call(self.store.bindings(aor))
        return self._ok(request, bindings)

    async def _apply(self, context: RequestContext, aor: str, current: list[Binding], wanted: list[tuple[Contact, int]], call_id: str, cseq: int) -> Decision | list[Binding] | None:
        """RFC 3261 10.3 step 7: add, refresh or remove each binding, all or nothing.

        A refusal, or the AOR's bindings once written when the store lists
        them with the write (``update_listing``), else None (read them next).

        Existing bindings are matched with the URI comparison rules (RFC 3261
        19.1.4), so a respelled contact (``sip:A@HOST`` for ``sip:A@host``)
        replaces its binding instead of adding a second one.  A refusal is a
        Decision; a store that checks the limits itself answers with the
        bindings after the update (a list); None: read them again.
        """
        request = context.request
        existing = [(URI.parse(b.contact), b) for b in current]
        current_keys = {b.contact for b in current}
        removals: list[str] = []
        puts: dict[str, Binding] = {}
        now = self.reactor.seconds()
        path = tuple(request.headers.get_values("Path"))
        user_agent = request.headers.get("User-Agent")
        flow = context.flow
        source = (flow.transport_name, flow.remote[0], flow.remote[1])
        for contact, expires in wanted:
            uri = contact.uri
            text = str(uri)
            old = next((b for u, b in existing if u == uri), None)
            if old is not None:
                if old.call_id == call_id and old.cseq >= cseq:
                    return Decision.reply(400, "CSeq out of order")
                if old.contact != text:
                    removals.append(old.contact)
            if expires == 0:
                puts.pop(text, None)
                if text in current_keys:
                    removals.append(text)
                continue
            puts[text] = Binding(
                aor=aor,
                contact=text,
                expires_at=now + expires,
                q=1.0 if contact.q is None else contact.q,
                call_id=call_id,
                cseq=cseq,
                path=path,
                source=source,
                instance=contact.params.get("+sip.instance"),
                reg_id=_reg_id(contact),
                user_agent=user_agent,
                identity=context.identity,
            )
        total = len(current_keys.difference(removals, puts)) + len(puts)
        if total > self.max_bindings and not current_keys.issuperset(puts):
            return Decision.reply(403, "Too Many Contacts")
        identity = context.identity
        if self._store_limits and self._update is not None:
            # Checked again inside the store against what it holds now (another
            # node may have written since our read); no count_for_identity round trip.
            limits = BindingLimits(self.max_bindings, self.max_bindings_per_identity, identity, call_id, cseq)
            try:
                after: list[Binding] = await self._guard.call(self._update(aor, removals, list(puts.values()), limits))
            except BindingRefused as refused:
                return Decision.reply(refused.status, refused.reason)
            return after
        if identity is not None:
            # New to this identity: added, or taken over from another identity.
            mine = {b.contact: b for b in current if b.identity == identity}
            added = sum(1 for key in puts if key not in mine)
            if added:
                freed = sum(1 for key in set(removals) if key in mine and key not in puts)
                held = await self._guard.call(self.store.count_for_identity(identity))
                if held - freed + added > self.max_bindings_per_identity:
                    return Decision.reply(403, "Too Many Registrations")
        if self._update_listing is not None:
            return await self._guard.call(self._update_listing(aor, removals, list(puts.values())))
        update = self._update
        if update is not None:
            await self._guard.call(update(aor, removals, list(puts.values())))
        else:
            for contact_text in removals:
                await self._guard.call(self.store.remove(aor, contact_text))
            for binding in puts.values():
                await self._guard.call(self.store.put(binding))
        return None

    def _ok(self, request: Request, bindings: list[Binding]) -> Decision:
        """RFC 3261 10.3 step 8: every current binding with its expires, and Date."""
        now = self.reactor.seconds()
        headers: list[tuple[str, str]] = []
        for b in bindings:
            value = f"<{b.contact}>;expires={b.expires_in(now)}"
            if b.q != 1.0:
                value += f";q={b.q:.3g}"
            headers.append(("Contact", value))
        if request.headers.get("Path") is not None and _supports_path(request):
            for value in request.headers.get_values("Path"):
                headers.append(("Path", value))
        headers.append(("Date", email.utils.formatdate(now, usegmt=True)))
        return Decision.reply(200, "OK", headers)


def _is_sip_route(value: str) -> bool:
    """A Path value is a name-addr with a SIP or SIPS URI (RFC 3327 4, RFC 3261 20.34)."""
    try:
        return Address.parse(value).uri.is_sip
    except ParseError:
        return False


def _supports_path(request: Request) -> bool:
    return any(o.lower() == "path" for o in request.headers.get_values("Supported"))


def _reg_id(contact: Contact) -> int | None:
    value = contact.params.get("reg-id")
    return int(value) if value is not None and value.isdigit() and len(value) < 10 else None


@implementer(IPipelineStage, IExplainable)
class LocationLookup:
    """Relay a request for a registered user to its contacts (RFC 3261 16.5, 16.6).

    Applies to every request but REGISTER whose Request-URI is a SIP or
    SIPS URI with a user part in one of ``domains`` (or this proxy, as told
    by ``is_local``).  Each unexpired binding of ``aor_of(Request-URI)``
    becomes a :class:`Target`: its contact as the new Request-URI (16.5),
    its Path as the route set (RFC 3327 5.4), its source address so the
    branch reaches a phone behind NAT or on its own TCP/TLS connection;
    highest q first.  For a ``sips`` Request-URI only ``sips`` contacts are
    targets (RFC 3261 19.1.4 / 26.2.2: SIPS asks for TLS on every hop, so
    a ``sip`` contact may not be used).

    When the AOR has no bindings the stage passes the request on
    (``CONTINUE``) unless ``miss_status`` is set: a location store cannot
    tell an unregistered user from an unknown one, and later stages may
    still route the user (static routes by user prefix, a PSTN gateway).
    The ``final`` stage then answers 404 for our domains.  Deployments that
    want RFC 3261 16.5's "SHOULD be 480" for an empty target set pass
    ``miss_status=480``.

    With the memory store the answer is synchronous (no Deferred reaches the
    pipeline); no per-request logging.
    """

    name = "location"

    def __init__(
        self,
        store: Any,
        domains: Iterable[str],
        reactor: Any,
        is_local: IsLocal | None = None,
        *,
        miss_status: int | None = None,
        retry_after: int = 30,
        store_timeout: float = 5.0,
        events: SecurityEvents | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.domains = frozenset(d.lower() for d in domains)
        self.reactor = reactor
        self.is_local = is_local
        self.miss = CONTINUE if miss_status is None else Decision.reply(miss_status)
        self._guard = _StoreGuard(reactor, store_timeout, retry_after)
        self._serial = _KeyedLocks()
        # The memory store can answer without a Deferred: skip the Deferred
        # machinery on the call path when it can.
        self._bindings_now: Callable[[str], list[Binding]] | None = getattr(store, "bindings_now", None)

    def process(self, context: RequestContext) -> Decision | Deferred[Decision]:
        request = context.request
        if request.method == "REGISTER":
            return CONTINUE
        uri = request.uri
        if not uri.user or not uri.is_sip or not _served(self.domains, self.is_local, uri.host or "", uri.port):
            return CONTINUE
        aor = aor_of(uri)
        if self._bindings_now is not None:
            return self._targets(self._bindings_now(aor), context)
        d = self.store.bindings(aor)
        box: list[Any] = []
        d.addBoth(_keep, box)
        if box:  # already fired (memory store): answer synchronously
            result = box[0]
            if isinstance(result, Failure):
                d.addErrback(_ignore)
                return self._guard.failed(result, self.name)
            return self._targets(result, context)
        return self._guard.call(d).addCallbacks(self._targets, self._guard.failed, callbackArgs=(context,), errbackArgs=(self.name,))

    def _targets(self, bindings: list[Binding], context: RequestContext) -> Decision:
        targets = _usable(bindings, context.request)
        if targets:
            return Decision.relay(targets)
        if bindings:
            return self._no_sips_contact(context, len(bindings))
        return self.miss

    def _no_sips_contact(self, context: RequestContext, count: int) -> Decision:
        """A sips: Request-URI whose AOR has only sip: contacts: not relayed
        to any of them, 480 with Warning 380 (RFC 5630 5.3)."""
        flow = context.flow
        if self.events is not None:
            user = context.user
            self.events.emit(SecurityEvent(SIPS_REFUSED, flow.remote[0], flow.transport_name, None if user is None else user[0],
                                           f"{context.request.method} {context.request.uri}: {count} contact(s), none of them sips:"))
        return _sips_refusal(flow)

    def explain(self, context: RequestContext) -> Explanation | Deferred[Explanation]:
        request = context.request
        uri = request.uri
        if request.method == "REGISTER" or not uri.user or not uri.is_sip or not _served(self.domains, self.is_local, uri.host or "", uri.port):
            return Explanation.passes(self.name, "not a request for a user of our domains")
        aor = aor_of(uri)

        def found(bindings: list[Binding]) -> Explanation:
            targets = _usable(bindings, request)
            if targets:
                return Explanation.of(self.name, Decision.relay(targets), f"{len(targets)} registered contact(s) of {aor}")
            if bindings:
                return Explanation.of(self.name, _sips_refusal(context.flow), f"{len(bindings)} contact(s) of {aor}, none of them sips:")
            return Explanation.of(self.name, self.miss, f"{aor} has no registered contact")

        def failed(failure: Failure) -> Explanation:
            return Explanation(self.name, "not explained", f"the location store did not answer: {failure.getErrorMessage()}")

        if self._bindings_now is not None:
            return found(self._bindings_now(aor))
        return self._guard.call(self.store.bindings(aor)).addCallbacks(found, failed)


def _usable(bindings: list[Binding], request: Request) -> list[Target]:
    """The targets of *bindings* for *request*: for a sips: Request-URI, its sips: contacts only."""
    sips = request.uri.scheme == "sips"
    return [
        Target(uri=URI.parse(b.contact), q=b.q, route=b.path, source=b.source)
        for b in bindings
        if not sips or b.contact[:5].lower() == "sips:"
    ]


def _sips_refusal(flow: Any) -> Decision:
    return Decision.reply(SIPS_STATUS, SIPS_REASON_OUTBOUND, (sips_warning(SIPS_NOT_ALLOWED, flow.local),))


def _keep(result: Any, box: list[Any]) -> Any:
    box.append(result)
    return result


def _ignore(failure: Failure) -> None:
    return None
