"""Built-in pipeline stages: sanity, options, static routes, final.

The registrar and location lookup live in _registrar.py; security stages
(auth, ACL, rate limits) come from their own packages and are just more
stages in the list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zope.interface import implementer

from sipshield.interfaces import IExplainable, IExplainableAdmission, IPipelineStage
from sipshield.message import URI
from sipshield.proxy import CONTINUE, Decision, RequestContext, Target
from sipshield.proxy._branch import is_loop
from sipshield.proxy._explain import Explanation

if TYPE_CHECKING:
    from sipshield.message import Request

__all__ = ["ALLOW", "DialogStage", "FinalStage", "OptionsStage", "SanityStage", "StaticRoute", "StaticRoutes", "SUPPORTED"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE"
SUPPORTED = "path"
ACCEPT = "application/sdp"
ROUTABLE_SCHEMES = frozenset(("sip", "sips", "tel"))
KNOWN_PROXY_EXTENSIONS: frozenset[str] = frozenset()

IsLocal = Callable[[str, "int | None"], bool]


def _request_host(request: Request) -> str | None:
    uri = request.uri
    return uri.host if uri.scheme in ("sip", "sips") else None


@implementer(IPipelineStage, IExplainable, IExplainableAdmission)
class SanityStage:
    """RFC 3261 16.3 request validation: URI scheme (416), Max-Forwards (483),
    loop detection (482), Proxy-Require (420 with Unsupported).

    OPTIONS addressed to the proxy itself is let through with Max-Forwards 0
    (RFC 3261 11 allows answering it) so the options stage can answer it.
    """

    name = "sanity"

    def __init__(self, is_local: IsLocal) -> None:
        self.is_local = is_local

    def process(self, context: RequestContext) -> Decision:
        if self in context.admitted_by:
            return CONTINUE  # the same checks passed at admission, on the same request
        return self.admission(context.request, context.flow) or CONTINUE

    def admission(self, request: Request, flow: object) -> Decision | None:
        """The same checks before any transaction exists: a refusal is sent
        statelessly (the proxy core's admission step)."""
        uri = request.uri
        if uri.scheme not in ROUTABLE_SCHEMES:
            return Decision.reply(416, "Unsupported URI Scheme")
        if request.max_forwards == 0 and not (request.method == "OPTIONS" and _to_self(request, self.is_local)):
            return Decision.reply(483, "Too Many Hops")
        if len(request.vias) > 1 and is_loop(request, self.is_local):
            return Decision.reply(482, "Loop Detected")
        unsupported = [o for o in request.headers.get_values("Proxy-Require") if o.lower() not in KNOWN_PROXY_EXTENSIONS]
        if unsupported:
            return Decision.reply(420, "Bad Extension", [("Unsupported", ", ".join(unsupported))])
        return None

    def explain_admission(self, context: RequestContext) -> Explanation:
        decision = self.admission(context.request, context.flow)  # reads the request only
        return Explanation.of(self.name, decision, "RFC 3261 16.3 checks" + (" failed" if decision is not None else " pass (scheme, Max-Forwards, loop, Proxy-Require)"))

    def explain(self, context: RequestContext) -> Explanation:
        if self in context.admitted_by:
            return Explanation.passes(self.name, "checked at admission")
        return self.explain_admission(context)


def _to_self(request: Request, is_local: IsLocal) -> bool:
    host = _request_host(request)
    return host is not None and not request.uri.user and is_local(host, request.uri.port)


@implementer(IPipelineStage, IExplainable, IExplainableAdmission)
class OptionsStage:
    """Answer OPTIONS addressed to the proxy itself (no user part) with 200
    and its capabilities (RFC 3261 11.2), statelessly at admission."""

    name = "options"

    def __init__(self, is_local: IsLocal) -> None:
        self.is_local = is_local
        self.headers = (("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", SUPPORTED))

    def process(self, context: RequestContext) -> Decision:
        if self in context.admitted_by:
            return CONTINUE  # the same checks passed at admission, on the same request
        return self.admission(context.request, context.flow) or CONTINUE

    def admission(self, request: Request, flow: object) -> Decision | None:
        """The same answer before any transaction exists, sent statelessly
        by the proxy core's admission step: an OPTIONS to the proxy needs no
        credentials, so a transaction for it (Timer J keeps a non-INVITE one
        32 s over UDP) would be state any forged source could make us keep.
        A retransmitted OPTIONS just gets the 200 again."""
        if request.method == "OPTIONS" and _to_self(request, self.is_local):
            return Decision.reply(200, "OK", self.headers)
        return None

    def explain_admission(self, context: RequestContext) -> Explanation:
        decision = self.admission(context.request, context.flow)  # reads the request only
        return Explanation.of(self.name, decision, "an OPTIONS to the proxy itself" if decision is not None else "not an OPTIONS to the proxy itself")

    def explain(self, context: RequestContext) -> Explanation:
        if self in context.admitted_by:
            return Explanation.passes(self.name, "checked at admission")
        return self.explain_admission(context)


@dataclass(frozen=True)
class StaticRoute:
    """One ``[[routes]]`` entry: match by domain, user prefix or both."""

    target: str
    match_domain: str | None = None
    match_user_prefix: str | None = None
    external: bool = False

    def matches(self, request: Request) -> bool:
        uri = request.uri
        if self.match_domain is not None:
            host = uri.host if uri.scheme in ("sip", "sips") else None
            if host is None or host.lower() != self.match_domain:
                return False
        if self.match_user_prefix is not None:
            user = uri.canonical_user  # a prefix like "+1" matches sip:%2B1...@ too (RFC 3261 19.1.4)
            if not user or not user.startswith(self.match_user_prefix):
                return False
        return True

    def describe(self) -> str:
        what = [f"domain {self.match_domain}"] if self.match_domain is not None else []
        if self.match_user_prefix is not None:
            what.append(f"user prefix {self.match_user_prefix}")
        return " and ".join(what or ["any request"]) + (", external" if self.external else "")


@implementer(IPipelineStage, IExplainable)
class StaticRoutes:
    """Relay requests matching a configured route to its target; the first
    matching route wins.  The Request-URI is kept; the target is the next hop
    (pushed as a loose Route, RFC 3261 16.6 step 7 / 16.12)."""

    name = "routes"

    def __init__(self, routes: list[StaticRoute]) -> None:
        self.routes = [(route, URI.parse(route.target)) for route in routes]

    def process(self, context: RequestContext) -> Decision:
        request = context.request
        if request.method == "REGISTER":
            return CONTINUE
        found = self.match(request)
        if found is None:
            return CONTINUE
        route, target = found
        if route.external:
            context.external = True
        return Decision.relay([Target(uri=request.uri, next_hop=target)])

    def match(self, request: Request) -> tuple[StaticRoute, URI] | None:
        """The first route that matches *request*, with its target."""
        for route, target in self.routes:
            if route.matches(request):
                return route, target
        return None

    def explain(self, context: RequestContext) -> Explanation:
        request = context.request
        if request.method == "REGISTER":
            return Explanation.passes(self.name, "REGISTER is not routed")
        found = self.match(request)
        if found is None:
            return Explanation.passes(self.name, f"no [[routes]] entry matches (of {len(self.routes)})")
        route, target = found
        if route.external:
            context.external = True
        index = next(i for i, (r, _) in enumerate(self.routes) if r is route)
        return Explanation.of(self.name, Decision.relay([Target(uri=request.uri, next_hop=target)]), f"[[routes]] #{index} ({route.describe()})")


@implementer(IPipelineStage, IExplainable)
class FinalStage:
    """Nothing settled the request: 404 for our own domains, 403 for others
    (the proxy is not an open relay)."""

    name = "final"

    def __init__(self, is_local: IsLocal) -> None:
        self.is_local = is_local

    def process(self, context: RequestContext) -> Decision:
        host = _request_host(context.request)
        if host is not None and self.is_local(host, context.request.uri.port):
            return Decision.reply(404, "Not Found")
        return Decision.reply(403, "Relaying Denied")

    def explain(self, context: RequestContext) -> Explanation:
        decision = self.process(context)  # reads the request only
        why = "nothing settled a request for us" if decision.status == 404 else "not for one of our domains and no route carries it (no open relay)"
        return Explanation.of(self.name, decision, why)


_NOT_HERE = Decision.reply(404, "Not Here")
_PRELOADED = Decision.reply(403, "Forbidden: preloaded Route")


@implementer(IPipelineStage, IExplainable)
class DialogStage:
    """In-dialog and pre-routed requests follow their route set (RFC 3261
    16.4, 16.12): a request that still carries Route headers after the proxy
    removed its own, or that is inside a dialog (To tag) and came through
    our Record-Route, is relayed to its Request-URI (the remote target) via
    the first Route.  A To-tagged request that did not come through our
    route set gets 404 (as Kamailio's default config answers "Not here")."""

    name = "dialog"

    def __init__(self, is_local: IsLocal) -> None:
        self.is_local = is_local

    def process(self, context: RequestContext) -> Decision:
        return self._decide(context)[0]

    def _decide(self, context: RequestContext) -> tuple[Decision, str]:
        request = context.request
        if request.method == "REGISTER":
            return CONTINUE, "REGISTER has no route set"
        in_dialog = request.to.tag is not None
        if in_dialog and not context.route_set:
            # A mid-dialog request must come through a route set we
            # record-routed; anything else would turn the proxy into an open
            # relay for requests that merely carry a To tag.
            return _NOT_HERE, "a To tag without our verified Record-Route token"
        if not in_dialog and "Route" in request.headers and not context.trusted:
            # A route set pre-loaded by an untrusted client would let it pick
            # any next hop (a gateway) past the routing and its permissions.
            return _PRELOADED, "a preloaded Route from an untrusted source"
        if in_dialog or "Route" in request.headers:
            host = _request_host(request)
            if host is not None and self.is_local(host, request.uri.port) and "Route" not in request.headers:
                return CONTINUE, "addressed to us: nothing to follow"
            return Decision.relay([Target(uri=request.uri)]), "follows its route set"
        return CONTINUE, "out of dialog, no Route"

    def explain(self, context: RequestContext) -> Explanation:
        return Explanation.of(self.name, *self._decide(context))  # reads the request only
