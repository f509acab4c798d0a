"""Egress and toll-fraud policy: who may dial what through an external route,
and how fast.

Toll fraud is the costly attack on a VoIP edge: a guessed or stolen account
dials premium-rate or international numbers, as many calls as fast as the
gateway takes them, usually at night.  The ``egress`` stage (after ``auth``
and ``rbac`` in the pipeline, so the user and roles are known) looks at
every out-of-dialog INVITE that an ``external = true`` route would carry:

* per role, the dialled number (the Request-URI's user part, unescaped) must
  start with one of the role's ``allow`` prefixes (when it lists any) and
  with none of its ``deny`` prefixes; a user with several roles may dial
  what any of its restricted roles allows, and a role without an entry in
  ``[egress.roles]`` is not restricted by prefix;
* per user, at most ``max_calls_per_minute`` external call attempts within
  60 s.

Over either: ``403`` with a reason and a ``toll-fraud`` security event.  A
trunk (mTLS) and a trusted source without a user carry other people's
calls and are not counted per user.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sipshield.events import TOLL_FRAUD, SecurityEvent, SecurityEvents
from sipshield.interfaces import IPipelineStage
from sipshield.message import Request
from sipshield.proxy import CONTINUE, Decision, RequestContext
from sipshield.state import ShieldState

__all__ = ["EgressPolicy", "RolePrefixes"]


@dataclass(frozen=True, slots=True)
class RolePrefixes:
    """``[egress.roles.NAME]``: the number prefixes a role may and may not dial."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def permits(self, number: str) -> bool:
        if any(number.startswith(p) for p in self.deny):
            return False
        return not self.allow or any(number.startswith(p) for p in self.allow)


@implementer(IPipelineStage)
class EgressPolicy:
    """The ``egress`` stage (see the module docstring)."""

    name = "egress"

    def __init__(
        self, reactor: IReactorTime, state: ShieldState, is_external: Callable[[Request], bool], *,
        roles: Mapping[str, RolePrefixes], max_calls_per_minute: int = 0, events: SecurityEvents | None = None,
    ) -> None:
        self.reactor = reactor
        self.state = state
        self.is_external = is_external
        self.roles = dict(roles)
        self.max_calls_per_minute = max_calls_per_minute
        self.events = events

    def process(self, context: RequestContext) -> Decision:
        request = context.request
        if request.method != "INVITE" or request.to.tag is not None or not self.is_external(request):
            return CONTINUE
        number = request.uri.canonical_user or ""
        restricted = [self.roles[r] for r in sorted(context.roles) if r in self.roles]
        if restricted and not any(rule.permits(number) for rule in restricted):
            return self._refuse(context, number, "Forbidden: destination not allowed for your role", "destination not allowed for the caller's roles")
        user = context.user
        if user is None or context.trunk is not None or not self.max_calls_per_minute:
            return CONTINUE
        key = f"egress:{user[0]}@{user[1]}"
        calls = self.state.hit(key, 60.0, self.reactor.seconds(), self.max_calls_per_minute + 1)
        if calls > self.max_calls_per_minute:
            return self._refuse(context, number, "Forbidden: external call limit reached", f"over {self.max_calls_per_minute} external calls a minute")
        return CONTINUE

    def _refuse(self, context: RequestContext, number: str, reason: str, why: str) -> Decision:
        if self.events is not None:
            user = None if context.user is None else f"{context.user[0]}@{context.user[1]}"
            self.events.emit(SecurityEvent(TOLL_FRAUD, context.source[0], context.flow.transport_name, user, f"{why}: {number[:40]}"))
        return Decision.reply(403, reason)

