"""Admission steps of the shield: scanner blocking and rate limits.

Both run in the proxy core's admission step, synchronously, between parsing
and the transaction layer, before the auth stage's challenge (cheap refusals
first), so what they refuse costs no transaction, no 100 Trying and no
nonce.  Each returns None (no objection), a stateless reply, or a drop.

The return-path rule again: over UDP the source address is one forged
datagram away, so what a request looks like never gets its claimed source
*banned* over UDP (it is dropped or answered once, that is all); over TCP
and TLS the handshake proved the address, and a scanner or a source that
keeps exceeding its limits is banned (Kamailio's pike idea).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sipshield.config import Config
from sipshield.events import ACL_DENY, RATE_LIMIT, SCANNER, SecurityEvent, SecurityEvents
from sipshield.interfaces import IAdmissionStep, IExplainable, IExplainableAdmission, IPipelineStage
from sipshield.message import Request
from sipshield.proxy import CONTINUE, DROP, Decision, RequestContext
from sipshield.proxy._explain import Explanation
from sipshield.security._bans import BanPolicy
from sipshield.state import ShieldState

__all__ = ["SCANNER_USER_AGENTS", "ACLRule", "AccessList", "Bucket", "RateLimiter", "ScannerBlock", "UserRateLimiter", "build_admission_steps", "rate_refusal"]

_PROBED = frozenset(("REGISTER", "INVITE", "OPTIONS", "SUBSCRIBE", "MESSAGE"))
"""The methods whose distinct To users count as probing."""

SCANNER_USER_AGENTS = ("friendly-scanner", "sipvicious", "sipcli", "vaxsipuseragent", "sipscan", "sundayddr", "iwar", "sip-scan", "pplsip")
"""User-Agent substrings of SIP scanners and war-dialers (compared without case)."""


def _proven(flow: Any) -> bool:
    """Has the source proven its address?  (A TCP or TLS handshake has.)"""
    return bool(flow.reliable)


@implementer(IAdmissionStep, IExplainableAdmission)
class ScannerBlock:
    """Drop requests whose User-Agent names a scanner; ban a proven source
    (TCP/TLS) that sends one, and one that probes many distinct users.

    Probing: SIPVicious' svwar tells extensions apart by how the proxy
    answers each (sipshield answers existing and unknown users alike, so it
    learns nothing), but it still costs us one answer per guess; a proven
    source that names more than ``max_users`` distinct To users within
    ``window`` seconds is banned.
    """

    name = "scanners"

    def __init__(
        self, reactor: IReactorTime, state: ShieldState, *, user_agents: Sequence[str] = SCANNER_USER_AGENTS,
        bans: BanPolicy | None = None, events: SecurityEvents | None = None, max_users: int = 20, window: float = 60.0,
    ) -> None:
        self.reactor = reactor
        self.state = state
        self.bans = bans
        self.events = events
        self.max_users = max_users
        self.window = window
        self._pattern = re.compile("|".join(re.escape(ua.lower()) for ua in user_agents)) if user_agents else None
        self._users: dict[str, set[str]] = {}
        self.dropped = 0

    def admission(self, request: Request, flow: Any) -> Decision | None:
        user_agent = self.scanner_agent(request)
        if user_agent is not None:
            self.dropped += 1
            self._report(flow, f"scanner User-Agent {user_agent[:80]!r}", ban=_proven(flow))
            return DROP
        if self._counts_probes(request, flow):
            return self._probing(request, flow)
        return None

    def scanner_agent(self, request: Request) -> str | None:
        """The request's User-Agent when it names a scanner, else None."""
        pattern = self._pattern
        if pattern is None:
            return None
        user_agent = request.headers.get("User-Agent")
        if user_agent is not None and pattern.search(user_agent.lower()) is not None:
            return user_agent
        return None

    def _counts_probes(self, request: Request, flow: Any) -> bool:
        return self.bans is not None and _proven(flow) and request.method in _PROBED

    def explain_admission(self, context: Any) -> Explanation:
        request, flow = context.request, context.flow
        user_agent = self.scanner_agent(request)
        if user_agent is not None:
            banned = " and bans the source (proven over TCP/TLS)" if _proven(flow) and self.bans is not None else ""
            return Explanation.of(self.name, DROP, f"User-Agent {user_agent[:80]!r} names a scanner: dropped{banned}")
        if not self._counts_probes(request, flow):
            return Explanation.passes(self.name, "no scanner User-Agent" + ("" if _proven(flow) else "; probing is counted over TCP/TLS only"))
        user, source, now = request.to.uri.user or "", flow.remote[0], self.reactor.seconds()
        seen = self.state.recent(f"probe:{source}:{user}", self.window, now) > 0
        distinct = self.state.recent("probes:" + source, self.window, now)
        counted = f"{distinct} distinct users probed from {source} in {self.window:g} s (at most {self.max_users})"
        if not seen and distinct + 1 > self.max_users:
            return Explanation.of(self.name, DROP, f"one more user than allowed: {counted}; the source would be banned")
        return Explanation.passes(self.name, f"no scanner User-Agent; {counted}")

    def _probing(self, request: Request, flow: Any) -> Decision | None:
        user = request.to.uri.user or ""
        source = flow.remote[0]
        now = self.reactor.seconds()
        # One event per (source, user) pair first seen: the window counts distinct users.
        key = f"probe:{source}:{user}"
        if self.state.hit(key, self.window, now, 2) > 1:
            return None
        distinct = self.state.hit("probes:" + source, self.window, now, self.max_users + 1)
        if distinct > self.max_users:
            self.dropped += 1
            self._report(flow, f"{distinct} distinct users probed in {self.window:g} s", ban=True)
            return DROP
        return None

    def _report(self, flow: Any, reason: str, *, ban: bool) -> None:
        source, transport = flow.remote[0], flow.transport_name
        if self.events is not None:
            self.events.emit(SecurityEvent(SCANNER, source, transport, None, reason))
        if ban and self.bans is not None:
            self.bans.ban(self.bans.key(source), reason, transport=transport)


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: ``rate`` requests per second on average, ``burst`` at once."""

    rate: float
    burst: float

    def over(self, what: str, events: SecurityEvents | None, source: str, transport: str, user: str | None) -> str:
        """Report a request over this bucket (a ``rate-limit`` event); the reason."""
        reason = self.describe(what)
        if events is not None:
            events.emit(SecurityEvent(RATE_LIMIT, source, transport, user, reason))
        return reason


    def describe(self, what: str) -> str:
        return f"over {self.rate:g} {what}/s (burst {self.burst:g})"

    def explain(self, state: ShieldState, key: str, what: str, now: float) -> tuple[bool, str]:
        """Would a request now find a token in *key*'s bucket (read, none taken), and the tokens it holds."""
        tokens = state.tokens(key, self.rate, self.burst, now)
        if tokens >= 1.0:
            return True, f"{what}: {tokens:.1f} of {self.burst:g} tokens left ({self.rate:g}/s)"
        return False, f"{self.describe(what)}: {tokens:.2f} tokens left"


def _acl_why(index: int | None, allowed: bool) -> str:
    if index is not None:
        return f"rule {index}"
    return "default allow" if allowed else "default deny"


def rate_refusal(action: str, retry_after: int) -> Decision:
    """What a request over a rate gets: a ``503`` with Retry-After, or nothing (``drop``)."""
    if action not in ("503", "drop"):
        raise ValueError("action is 503 or drop")
    return DROP if action == "drop" else Decision.reply(503, "Rate Limit Exceeded", [("Retry-After", str(retry_after))])


@implementer(IAdmissionStep, IExplainableAdmission)
class RateLimiter:
    """Token buckets per source (every new request) and per source and
    method; over a limit, a stateless ``503`` with Retry-After or a drop
    (``action``).  A proven source (TCP/TLS) over its limits ``ban_after``
    times within ``ban_window`` seconds is banned.  Sources in
    ``exempt`` (trusted networks, the allowlist) and TLS connections that
    presented a client certificate (trunks, checked in the handshake) are
    not limited.  ACKs and CANCELs are never limited (they end state).
    """

    name = "ratelimit"

    def __init__(
        self, reactor: IReactorTime, state: ShieldState, *, per_source: Bucket | None, per_method: Mapping[str, Bucket],
        action: str = "503", retry_after: int = 5, ban_after: int = 0, ban_window: float = 60.0,
        exempt: Callable[[str, str], bool] | None = None, bans: BanPolicy | None = None, events: SecurityEvents | None = None,
    ) -> None:
        self.reactor = reactor
        self.state = state
        self.per_source = per_source
        self.per_method = dict(per_method)
        self.refusal = rate_refusal(action, retry_after)
        self.ban_after = ban_after
        self.ban_window = ban_window
        self.exempt = exempt
        self.bans = bans
        self.events = events
        self.refused = 0

    def admission(self, request: Request, flow: Any) -> Decision | None:
        if self.unlimited(request, flow) is not None:
            return None
        source = flow.remote[0]
        now = self.reactor.seconds()
        take = self.state.take
        for what, bucket, key in self._buckets(source, request.method):
            if bucket is not None and not take(key, bucket.rate, bucket.burst, now):
                return self._over(flow, what, bucket, now)
        return None

    def unlimited(self, request: Request, flow: Any) -> str | None:
        """Why no limit applies to this request, or None when its buckets decide."""
        if request.method in ("ACK", "CANCEL"):
            return "ACK and CANCEL are never limited"
        exempt = self.exempt
        if exempt is not None and exempt(flow.remote[0], flow.transport_name):
            return "the source is exempt ([ratelimit] allowlist or a trusted source)"
        if flow.secure and flow.peer_certificate() is not None:
            return "a TLS client certificate (a trunk) is not limited"
        return None

    def _buckets(self, source: str, method: str) -> tuple[tuple[str, Bucket | None, str], ...]:
        """(what, bucket, key) of each bucket a request takes from, in order."""
        return (("requests", self.per_source, "rate:" + source), (method, self.per_method.get(method), f"rate:{source}:{method}"))

    def explain_admission(self, context: Any) -> Explanation:
        request, flow = context.request, context.flow
        why = self.unlimited(request, flow)
        if why is not None:
            return Explanation.passes(self.name, why)
        source, now = flow.remote[0], self.reactor.seconds()
        seen = []
        for what, bucket, key in self._buckets(source, request.method):
            if bucket is None:
                continue
            within, text = bucket.explain(self.state, key, what, now)
            if not within:
                if self.ban_after and self.bans is not None and _proven(flow) and self.state.recent("over:" + source, self.ban_window, now) + 1 >= self.ban_after:
                    return Explanation.of(self.name, DROP, f"{text}; the source would be banned ({self.ban_after} times within {self.ban_window:g} s)")
                return Explanation.of(self.name, self.refusal, text)
            seen.append(text)
        return Explanation.passes(self.name, "within its limits: " + "; ".join(seen) if seen else f"no limit set for {request.method}")

    def _over(self, flow: Any, what: str, bucket: Bucket, now: float) -> Decision:
        self.refused += 1
        source, transport = flow.remote[0], flow.transport_name
        reason = bucket.over(what, self.events, source, transport, None)
        if self.ban_after and self.bans is not None and _proven(flow):
            if self.state.hit("over:" + source, self.ban_window, now, self.ban_after) >= self.ban_after:
                self.state.forget("over:" + source)
                self.bans.ban(self.bans.key(source), f"{self.ban_after} times {reason} within {self.ban_window:g} s", transport=transport)
                return DROP
        return self.refusal


@implementer(IPipelineStage, IExplainable)
class UserRateLimiter:
    """The ``ratelimit`` stage: token buckets per authenticated user (every
    new request, whatever its source) and per user and method, once the
    ``auth`` stage has named the user (the admission step runs before it
    and knows only the source).  Over a limit: ``action`` as for the
    source limits, and a ``rate-limit`` event naming the user.  Trunks
    (mTLS), trusted sources and ``exempt`` sources are not limited; a
    request without a user (in dialog, trusted) passes untouched."""

    name = "ratelimit"

    def __init__(
        self, reactor: IReactorTime, state: ShieldState, *, per_user: Bucket | None, per_method: Mapping[str, Bucket],
        action: str = "503", retry_after: int = 5, exempt: Callable[[str, str], bool] | None = None, events: SecurityEvents | None = None,
    ) -> None:
        self.reactor = reactor
        self.state = state
        self.per_user = per_user
        self.per_method = dict(per_method)
        self.refusal = rate_refusal(action, retry_after)
        self.exempt = exempt
        self.events = events
        self.refused = 0

    def process(self, context: RequestContext) -> Decision:
        user = context.user
        if user is None or self.unlimited(context) is not None:
            return CONTINUE
        flow = context.flow
        source, transport = flow.remote[0], flow.transport_name
        now = self.reactor.seconds()
        for what, bucket, bucket_key in self._buckets(context):
            if bucket is not None and not self.state.take(bucket_key, bucket.rate, bucket.burst, now):
                self.refused += 1
                bucket.over(f"{what} of user", self.events, source, transport, f"{user[0]}@{user[1]}")
                return self.refusal
        return CONTINUE

    def unlimited(self, context: RequestContext) -> str | None:
        """Why no per-user limit applies, or None when the user's buckets decide."""
        if context.user is None:
            return "no authenticated user (in dialog, or a trusted source)"
        if context.trunk is not None:
            return "a trunk (mTLS) is not limited per user"
        flow = context.flow
        if self.exempt is not None and self.exempt(flow.remote[0], flow.transport_name):
            return "the source is exempt ([ratelimit] allowlist or a trusted source)"
        return None

    def _buckets(self, context: RequestContext) -> tuple[tuple[str, Bucket | None, str], ...]:
        user = context.user
        key = context.identity or (f"{user[0]}@{user[1]}" if user is not None else "")
        method = context.request.method
        return (("requests", self.per_user, "urate:" + key), (method, self.per_method.get(method), f"urate:{key}:{method}"))

    def explain(self, context: RequestContext) -> Explanation:
        why = self.unlimited(context)
        if why is not None:
            return Explanation.passes(self.name, why)
        now = self.reactor.seconds()
        seen = []
        for what, bucket, key in self._buckets(context):
            if bucket is None:
                continue
            within, text = bucket.explain(self.state, key, f"{what} of user", now)
            if not within:
                return Explanation.of(self.name, self.refusal, text)
            seen.append(text)
        return Explanation.passes(self.name, "within the user's limits: " + "; ".join(seen) if seen else "no per-user limit set")


def build_admission_steps(
    config: Config, reactor: IReactorTime, state: ShieldState, events: SecurityEvents, bans: BanPolicy | None,
    exempt: Callable[[str, str], bool] | None,
) -> tuple[AccessList | ScannerBlock | RateLimiter, ...]:
    """The shield's admission steps ``[acl]``, ``[scanners]`` and
    ``[ratelimit]`` ask for, in the order they run (the ACL first: a denied
    source costs no bucket; scanners next: they drop without counting)."""
    from sipshield.auth._stages import SourceNetworks

    steps: list[AccessList | ScannerBlock | RateLimiter] = []
    acl = config.acl
    if acl.rules or not acl.default_allow:
        rules = [
            ACLRule(r.allow, SourceNetworks((n, True) for n in r.networks) if r.networks else None, frozenset(r.methods), r.listeners)
            for r in acl.rules
        ]
        steps.append(AccessList(rules, default_allow=acl.default_allow, action=acl.action, events=events))
    scanners = config.scanners
    if scanners.enabled:
        steps.append(ScannerBlock(
            reactor, state, user_agents=SCANNER_USER_AGENTS if scanners.user_agents is None else scanners.user_agents,
            bans=bans, events=events, max_users=scanners.max_users, window=scanners.window,
        ))
    limits = config.ratelimit
    if limits.enabled:
        steps.append(RateLimiter(
            reactor, state, per_source=None if limits.per_source is None else Bucket(*limits.per_source),
            per_method={m: Bucket(*b) for m, b in limits.methods.items()}, action=limits.action, retry_after=limits.retry_after,
            ban_after=limits.ban_after, ban_window=limits.ban_window, exempt=exempt, bans=bans, events=events,
        ))
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class ACLRule:
    """One ``[[acl.rules]]`` entry: ``allow`` or ``deny`` the requests that
    match every criterion it gives (an empty one matches anything)."""

    allow: bool
    networks: Any = None
    """A SourceNetworks of the source CIDRs, or None for any source."""
    methods: frozenset[str] = frozenset()
    listeners: tuple[tuple[str, int | None], ...] = ()
    """(transport, port or None): the listener the request came in on."""

    def matches(self, request: Request, flow: Any) -> bool:
        if self.methods and request.method not in self.methods:
            return False
        if self.listeners:
            transport, port = flow.transport_name, flow.local[1]
            if not any(t == transport and (p is None or p == port) for t, p in self.listeners):
                return False
        return self.networks is None or any(True for _ in self.networks.matching(flow.remote[0]))

    def describe(self) -> str:
        """The rule as its config says it: ``deny 203.0.113.0/24 INVITE, REGISTER on udp:5060``."""
        parts = ["allow" if self.allow else "deny", "any source" if self.networks is None else ", ".join(str(n) for n, _ in self.networks.entries)]
        if self.methods:
            parts.append(", ".join(sorted(self.methods)))
        if self.listeners:
            parts.append("on " + ", ".join(t.lower() if p is None else f"{t.lower()}:{p}" for t, p in self.listeners))
        return " ".join(parts)


@implementer(IAdmissionStep, IExplainableAdmission)
class AccessList:
    """CIDR allow/deny rules, globally, per listener and per method; the
    first rule that matches decides, ``default_allow`` when none does.  A
    denied request gets a stateless ``403`` or, with ``action = "drop"``,
    nothing; an ``acl-deny`` event either way.  ACKs are not checked (an
    ACK creates nothing; one for a 2xx follows a route set we signed)."""

    name = "acl"

    def __init__(self, rules: Sequence[ACLRule], *, default_allow: bool = True, action: str = "403", events: SecurityEvents | None = None) -> None:
        if action not in ("403", "drop"):
            raise ValueError("action is 403 or drop")
        self.rules = tuple(rules)
        self.default_allow = default_allow
        self.refusal = DROP if action == "drop" else Decision.reply(403, "Forbidden: Not Allowed From This Source")
        self.events = events
        self.denied = 0

    def admission(self, request: Request, flow: Any) -> Decision | None:
        if request.method == "ACK":
            return None
        allowed, index = self.match(request, flow)
        return None if allowed else self._deny(request, flow, _acl_why(index, allowed))

    def match(self, request: Request, flow: Any) -> tuple[bool, int | None]:
        """Whether the request is allowed, and the index of the rule that
        says so (None: no rule matched, ``default_allow`` decides).  The
        one reading of the rules, for ``admission`` and ``explain_admission``."""
        for index, rule in enumerate(self.rules):
            if rule.matches(request, flow):
                return rule.allow, index
        return self.default_allow, None

    def explain_admission(self, context: Any) -> Explanation:
        request, flow = context.request, context.flow
        if request.method == "ACK":
            return Explanation.passes(self.name, "ACKs are not checked")
        allowed, index = self.match(request, flow)
        why = _acl_why(index, allowed)
        if index is not None:
            why += f" ({self.rules[index].describe()})"
        source = f"{flow.transport_name} {flow.remote[0]} to port {flow.local[1]}"
        if allowed:
            return Explanation.passes(self.name, f"{request.method} from {source} allowed by acl {why}")
        return Explanation.of(self.name, self.refusal, f"{request.method} from {source} denied by acl {why}")

    def _deny(self, request: Request, flow: Any, why: str) -> Decision:
        self.denied += 1
        if self.events is not None:
            self.events.emit(SecurityEvent(ACL_DENY, flow.remote[0], flow.transport_name, None, f"{request.method} denied by acl {why}"))
        return self.refusal
