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
  60 s;
* per user, at most ``max_concurrent_calls`` external calls up at once.

Over any: ``403`` with a reason and a ``toll-fraud`` security event.  A
trunk (mTLS) and a trusted source without a user carry other people's
calls and are not counted per user.

A concurrent call is counted (in the ShieldState, keyed by its Call-ID and
the caller's From tag) from its INVITE until its final answer if that is
not a 2xx (a refusal, a timeout, the 487 of a CANCEL, the proxy's own
answer when a later stage did not relay it: a response hook), or else until
a BYE of that dialog got a 2xx or a 481.  Such a BYE must follow the route
set we record-routed (``context.route_set``: our token, valid for its
Call-ID, one of its tags and the hosts it travels between) and carry both
of the dialog's tags (the caller's, and the one the 2xx brought), in either
direction: a BYE that names only a Call-ID, or another dialog's tag, ends
nobody's count.  Freeing on the BYE's answer rather than on the BYE means
a BYE the far end refuses (a wrong CSeq: the call goes on) frees nothing.
``max_call_duration`` ends the count of a call whose BYE was lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sipshield.events import TOLL_FRAUD, SecurityEvent, SecurityEvents
from sipshield.interfaces import IExplainable, IPipelineStage
from sipshield.message import Request, Response
from sipshield.proxy import CONTINUE, Decision, RequestContext
from sipshield.proxy._explain import Explanation
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


@implementer(IPipelineStage, IExplainable)
class EgressPolicy:
    """The ``egress`` stage (see the module docstring)."""

    name = "egress"

    def __init__(
        self, reactor: IReactorTime, state: ShieldState, is_external: Callable[[Request], bool], *,
        roles: Mapping[str, RolePrefixes], max_calls_per_minute: int = 0, max_concurrent_calls: int = 0,
        max_call_duration: float = 4 * 3600.0, events: SecurityEvents | None = None,
    ) -> None:
        self.reactor = reactor
        self.state = state
        self.is_external = is_external
        self.roles = dict(roles)
        self.max_calls_per_minute = max_calls_per_minute
        self.max_concurrent_calls = max_concurrent_calls
        self.max_call_duration = max_call_duration
        self.events = events

    def process(self, context: RequestContext) -> Decision:
        request = context.request
        if request.to.tag is not None:
            if request.method == "BYE" and context.route_set and self.max_concurrent_calls:
                context.response_hooks += (self._bye_answered,)
            return CONTINUE
        if request.method != "INVITE" or not self.is_external(request):
            return CONTINUE
        number = request.uri.canonical_user or ""
        if not self._may_dial(context, number):
            return self._refuse(context, number, *_DESTINATION)
        user = context.user
        if user is None or context.trunk is not None or not self.max_calls_per_minute:
            return CONTINUE
        key = f"egress:{user[0]}@{user[1]}"
        calls = self.state.hit(key, 60.0, self.reactor.seconds(), self.max_calls_per_minute + 1)
        if calls > self.max_calls_per_minute:
            return self._refuse(context, number, *self._per_minute())
        limit = self.max_concurrent_calls
        if limit:
            now = self.reactor.seconds()
            if not self.state.open_call(key, _call_key(request.call_id, request.from_.tag), limit, now + self.max_call_duration, now):
                return self._refuse(context, number, *self._at_once())
            context.response_hooks += (self._invite_answered,)
        return CONTINUE

    def _may_dial(self, context: RequestContext, number: str) -> bool:
        """May the caller's roles dial *number* (any of its restricted roles allows it)?"""
        restricted = [self.roles[r] for r in sorted(context.roles) if r in self.roles]
        return not restricted or any(rule.permits(number) for rule in restricted)

    def _per_minute(self) -> tuple[str, str]:
        return "Forbidden: external call limit reached", f"over {self.max_calls_per_minute} external calls a minute"

    def _at_once(self) -> tuple[str, str]:
        return "Forbidden: too many external calls at once", f"over {self.max_concurrent_calls} external calls at once (or this one counted already)"

    def explain(self, context: RequestContext) -> Explanation:
        """What ``process`` would decide, read from the same counts (none taken)."""
        request = context.request
        if request.to.tag is not None:
            return Explanation.passes(self.name, "in dialog: not checked")
        if request.method != "INVITE" or not self.is_external(request):
            return Explanation.passes(self.name, "not an INVITE an external route would carry")
        number = request.uri.canonical_user or ""
        roles = ", ".join(sorted(context.roles)) or "none"
        if not self._may_dial(context, number):
            return Explanation.of(self.name, Decision.reply(403, _DESTINATION[0]), f"{number[:40]} is not allowed for roles {roles} ([egress.roles])")
        user = context.user
        if user is None or context.trunk is not None or not self.max_calls_per_minute:
            return Explanation.passes(self.name, f"{number[:40]} allowed for roles {roles}; no per-user call limit applies")
        key = f"egress:{user[0]}@{user[1]}"
        now = self.reactor.seconds()
        calls = self.state.recent(key, 60.0, now) + 1
        if calls > self.max_calls_per_minute:
            reason, why = self._per_minute()
            return Explanation.of(self.name, Decision.reply(403, reason), f"{why}: this would be call {calls}")
        counted = f"call {calls} of {self.max_calls_per_minute} this minute"
        if self.max_concurrent_calls:
            up = self.state.calls_open(key, now)
            if up >= self.max_concurrent_calls:
                reason, why = self._at_once()
                return Explanation.of(self.name, Decision.reply(403, reason), f"{why}: {up} up now")
            counted += f", {up} of {self.max_concurrent_calls} up at once"
        return Explanation.passes(self.name, f"{number[:40]} allowed for roles {roles}; {counted}")

    def _invite_answered(self, context: RequestContext, response: Response) -> None:
        """The INVITE's final answer: a 2xx keeps the call counted, with the
        tag that answered it; anything else ends it."""
        request = context.request
        call = _call_key(request.call_id, request.from_.tag)
        tag = response.to.tag if 200 <= response.status < 300 else None
        if tag is not None:
            self.state.answer_call(call, tag)
        else:
            self.state.close_call(call)

    def _bye_answered(self, context: RequestContext, response: Response) -> None:
        """A BYE of a dialog we record-routed was answered: a 2xx (or 481,
        the dialog is gone) ends the count of the call it names by both tags."""
        if not (200 <= response.status < 300 or response.status == 481):
            return
        request = context.request
        call_id, from_tag, to_tag = request.call_id, request.from_.tag, request.to.tag
        if from_tag is None or to_tag is None:
            return
        # From the caller, From is the caller's tag; from the callee, To is.
        if not self.state.close_call(_call_key(call_id, from_tag), to_tag):
            self.state.close_call(_call_key(call_id, to_tag), from_tag)

    def _refuse(self, context: RequestContext, number: str, reason: str, why: str) -> Decision:
        if self.events is not None:
            user = None if context.user is None else f"{context.user[0]}@{context.user[1]}"
            self.events.emit(SecurityEvent(TOLL_FRAUD, context.source[0], context.flow.transport_name, user, f"{why}: {number[:40]}"))
        return Decision.reply(403, reason)


_DESTINATION = ("Forbidden: destination not allowed for your role", "destination not allowed for the caller's roles")


def _call_key(call_id: str, from_tag: str | None) -> str:
    """A counted call's key: the dialog's Call-ID and the caller's From tag."""
    return f"call:{len(call_id)}:{call_id}|{from_tag or ''}"
