"""What a pipeline stage sees (RequestContext) and what it returns (Decision).

They live with the proxy core, which builds the one and acts on the other;
the routing layer (the pipeline and its stages) sits above and imports them
from here, so the core never imports routing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from sipshield.message import URI, Request, Response
    from sipshield.transport import Flow

__all__ = ["CONTINUE", "DROP", "AckCheck", "BranchCheck", "Decision", "RequestContext", "RequestPipeline", "ResponseFilter", "ResponseHook", "Target"]


@dataclass(slots=True)
class Target:
    """Where one branch of a relayed request goes (RFC 3261 16.5, 16.6).

    ``uri`` becomes the Request-URI of the branch.  ``route`` is a route set
    to push in front of it (Path from the registrar, RFC 3327).  ``flow`` is
    an existing connection to prefer (a phone registered over TCP/TLS or from
    behind NAT is reachable only through the flow it registered on).
    """

    uri: URI
    q: float = 1.0
    route: tuple[str, ...] = ()
    flow: Flow | None = None
    source: tuple[str, str, int] | None = None
    next_hop: URI | None = None
    """Send here instead of to ``uri`` (an outbound proxy or gateway),
    keeping ``uri`` as the Request-URI."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one stage.  Build with the class methods."""

    kind: str
    status: int = 0
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    targets: tuple[Target, ...] = ()

    @classmethod
    def reply(cls, status: int, reason: str | None = None, headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()) -> Decision:
        """Answer the request from the proxy with ``status``."""
        from sipshield.message import REASON_PHRASES

        return cls("reply", status, reason or REASON_PHRASES.get(status, "Unknown"), tuple(headers))

    @classmethod
    def relay(cls, targets: list[Target] | tuple[Target, ...]) -> Decision:
        """Forward the request to every target (parallel fork, RFC 3261 16.6)."""
        return cls("relay", targets=tuple(targets))

    @property
    def final(self) -> bool:
        return self.kind != "continue"


CONTINUE = Decision("continue")
"""Not settled here: the next stage decides."""

DROP = Decision("drop")
"""Discard silently (no answer at all; for floods and scanners)."""


ResponseHook = Callable[["RequestContext", "Response"], "Response | None"]
"""``hook(context, response)``: may return a Response to send upstream instead
of ``response`` (None keeps it).  Called synchronously, in order; one that
raises is logged and skipped, and the response still goes upstream."""


ResponseFilter = Callable[["RequestContext", "Response", "tuple[str, str, int]"], "Response | None"]
"""``filter(context, response, hop)``: sees each provisional response (101-199)
and each 2xx (retransmissions and the 2xx of every branch too) of a relayed
request before it goes upstream; *hop* is the branch's next hop (transport,
host, port): where the response came from, over which transport.  Returns
the response to relay (the same or another), or None to relay nothing.

A provisional is relayed or dropped (a filter cannot turn it into a final).
A 2xx replaced by a non-2xx (or dropped: then the proxy's own ``502 Bad
Gateway: answer refused``) is not relayed: that becomes its branch's final
response, which takes part in the best-response choice (RFC 3261 16.7 step
6) like any other, and the branch's later 2xx retransmissions are dropped,
also once the response context is gone.  Called synchronously, in order; a
filter that raises is logged and the response counts as dropped (fail
closed: a filter is there to stop what must not pass).

A 2xx that comes after the response context has ended (a retransmission,
or another fork's, on the client transaction in Accepted for up to 64*T1)
is judged with a copy of the context whose ``request`` carries only the
start line and the headers a response echoes (Via, From, To, Call-ID, CSeq:
enough for ``make_response``); its other headers and body are not kept
that long."""


BranchCheck = Callable[["RequestContext", "Request", "tuple[str, str, int]"], "Response | None"]
"""``check(context, request, hop)``: sees each branch's copy of a relayed
request and its next hop (transport, host, port) just before it is sent.
Returns None to send it, or a final response (made from
``context.request``) that ends the branch unsent instead; that response is
weighed with the other branches' answers (RFC 3261 16.7 step 6).  Called
synchronously, in order; a check that raises is logged and the branch ends
unsent with 500 (fail closed)."""


AckCheck = Callable[["Request", "Flow", "tuple[str, str, int]"], bool]
"""``check(ack, flow, hop)``: sees each ACK for a 2xx that follows a route set
this proxy made, with the flow it came on and its next hop, before it is
forwarded statelessly (RFC 3261 16.11: it passes no pipeline).  False keeps
it from being forwarded (the callee then retransmits its 2xx and ends the
dialog, RFC 3261 13.3.1.4).  A stage offers one as its ``check_ack`` method."""


@dataclass(slots=True)
class RequestContext:
    """Everything a stage may look at for one new request, and the typed
    notes stages leave for the stages after them.

    ``identity`` and ``roles`` are filled by authentication stages, as are
    ``trusted``, ``trunk`` and ``user``.  ``attributes`` is a free-form
    space for third-party stages to talk to each other (no built-in stage
    reads or writes it); built-in stages use the typed fields only.
    """

    request: Request
    flow: Flow
    now: float = 0.0
    identity: str | None = None
    roles: frozenset[str] = frozenset()
    trusted: bool = False
    """The source is in ``[auth] trusted_sources`` (set by the auth stage):
    it is not challenged, may pre-load a Route, and may register a Path."""
    trunk: str | None = None
    """The name of the ``[auth] trunks`` account whose TLS client certificate
    authenticated the request (RFC 5922); its From may be anyone."""
    user: tuple[str, str] | None = None
    """The authenticated (username, domain), as the credentials named them."""
    route_set: bool = False
    """The request follows a route set this proxy record-routed: the proxy
    core verified our token in its Route (in dialog, no challenge)."""
    external: bool = False
    """A static route marked ``external`` carries it (set by the routes stage)."""
    response_hooks: tuple[ResponseHook, ...] = ()
    """Called with the final response before it goes upstream (a Router that
    relayed the request adds its ``on_response``); see ResponseHook.  Also
    with the proxy's own final answer when a later stage answered the
    request instead of relaying it (the egress stage, which counted the
    call, learns it ended)."""
    response_filters: tuple[ResponseFilter, ...] = ()
    """Called with every provisional and every 2xx before it goes upstream
    (the media policy adds its answer check); see ResponseFilter."""
    branch_checks: tuple[BranchCheck, ...] = ()
    """Called with each branch's request and next hop before it is sent (the
    media policy keeps SDES keys off non-TLS hops); see BranchCheck."""
    attributes: dict[str, Any] = field(default_factory=dict)
    """Free-form notes for third-party stages; unused by sipshield itself."""
    admitted_by: tuple[object, ...] = ()
    """The admission steps the proxy core ran on this very request (as it is
    now: no strict-route rewrite since), none of which objected; a stage in
    it whose ``process`` only repeats its admission checks can skip them."""

    @property
    def source(self) -> tuple[str, int]:
        return self.flow.remote

    @property
    def transport(self) -> str:
        return self.flow.transport_name

    @property
    def peer_certificate(self) -> Any:
        return self.flow.peer_certificate()


class RequestPipeline(Protocol):
    """What the proxy core runs a new request through (sipshield.routing's
    ``Pipeline`` is the one the service gives it)."""

    def run(self, context: RequestContext) -> Decision | Deferred[Decision]:
        """Return, or fire with, the final Decision for ``context.request``."""
        ...
