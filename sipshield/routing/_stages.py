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

from sipshield.interfaces import IPipelineStage
from sipshield.message import URI
from sipshield.proxy import CONTINUE, Decision, RequestContext, Target
from sipshield.proxy._branch import is_loop

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


@implementer(IPipelineStage)
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


def _to_self(request: Request, is_local: IsLocal) -> bool:
    host = _request_host(request)
    return host is not None and not request.uri.user and is_local(host, request.uri.port)


@implementer(IPipelineStage)
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


@implementer(IPipelineStage)
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
        for route, target in self.routes:
            if route.matches(request):
                if route.external:
                    context.external = True
                return Decision.relay([Target(uri=request.uri, next_hop=target)])
        return CONTINUE


@implementer(IPipelineStage)
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


@implementer(IPipelineStage)
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
        request = context.request
        if request.method == "REGISTER":
            return CONTINUE
        in_dialog = request.to.tag is not None
        if in_dialog and not context.route_set:
            # A mid-dialog request must come through a route set we
            # record-routed; anything else would turn the proxy into an open
            # relay for requests that merely carry a To tag.
            return Decision.reply(404, "Not Here")
        if not in_dialog and "Route" in request.headers and not context.trusted:
            # A route set pre-loaded by an untrusted client would let it pick
            # any next hop (a gateway) past the routing and its permissions.
            return Decision.reply(403, "Forbidden: preloaded Route")
        if in_dialog or "Route" in request.headers:
            host = _request_host(request)
            if host is not None and self.is_local(host, request.uri.port) and "Route" not in request.headers:
                return CONTINUE  # addressed to us: nothing to follow
            return Decision.relay([Target(uri=request.uri)])
        return CONTINUE
