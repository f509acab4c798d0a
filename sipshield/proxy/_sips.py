"""SIPS (RFC 3261 26.2.2, RFC 5630): a ``sips:`` request travels over TLS on
every hop, or not at all.

RFC 5630 (updating RFC 3261) makes a SIPS Request-URI mean TLS on each hop
between the UAC and the remote UAS, not only up to the proxy responsible
for the domain.  So a request whose Request-URI is ``sips:`` that reached
us over UDP or TCP is refused, and a branch that forwards a ``sips:``
request, or whose Request-URI or next-hop URI is ``sips:``, is never sent
over UDP or TCP.  Only the Request-URI and the route decide here, not the
scheme of To or From (RFC 5630 discusses why those say nothing about how
the request must travel).

The answers: RFC 5630 5.3 has a proxy answer a SIPS request it cannot
deliver securely (only ``sip:`` Contacts registered, a target reachable in
clear only) with ``480 Temporarily Unavailable`` and Warning 380 "SIPS Not
Allowed" (the warn-codes 380 and 381 are RFC 5630's).  A ``sips:`` request
that reached us in clear gets the same 480 with Warning 381 "SIPS
Required": the hop it took had to be TLS (as pjsip's UAS answers an
insecure request in a SIPS dialog).  Not 416 (RFC 3261 16.3 step 2): we do
support the scheme, over TLS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from sipshield.events import SIPS_REFUSED, SecurityEvent, SecurityEvents
from sipshield.interfaces import IExplainableAdmission
from sipshield.message import URI, Request
from sipshield.proxy._decision import Decision
from sipshield.proxy._explain import Explanation

if TYPE_CHECKING:
    from sipshield.transport import Flow

__all__ = ["SIPS_STATUS", "SipsAdmission", "arrived_in_clear", "needs_tls", "sips_warning"]

SIPS_STATUS = 480
SIPS_REASON_INBOUND = "Temporarily Unavailable: sips over a non-TLS hop"
SIPS_REASON_OUTBOUND = "Temporarily Unavailable: sips target not reachable over TLS"
SIPS_NOT_ALLOWED = 380
SIPS_REQUIRED = 381
_WARN_TEXT = {SIPS_NOT_ALLOWED: "SIPS Not Allowed", SIPS_REQUIRED: "SIPS Required"}


def sips_warning(code: int, local: tuple[str, int]) -> tuple[str, str]:
    """The Warning header (RFC 3261 20.43) for warn-code *code* (380 or 381), from our *local* address."""
    host, port = local
    shown = f"[{host}]" if ":" in host else host
    return "Warning", f'{code} {shown}:{port} "{_WARN_TEXT[code]}"'


def needs_tls(request: Request, *uris: URI) -> bool:
    """Must *request* (as it reached us) travel only over TLS, given the
    URIs it goes to next (the forwarded Request-URI, the next-hop URI)?"""
    return request.uri.scheme == "sips" or any(uri.scheme == "sips" for uri in uris)


def arrived_in_clear(request: Request, flow: Flow) -> bool:
    """A sips: Request-URI over a hop that was not TLS (RFC 5630 3.1.3)."""
    return request.uri.scheme == "sips" and flow.transport_name != "TLS"


@implementer(IExplainableAdmission)
class SipsAdmission:
    """The admission step that refuses a sips: request that reached us over
    UDP or TCP, statelessly, before any challenge (its credentials and body
    have crossed a hop in clear already; a challenge would invite more).
    An ACK never comes here: the core drops a sips: one that came in clear
    (``ProxyCore.stray_ack``)."""

    name = "sips"

    def __init__(self, events: SecurityEvents | None = None) -> None:
        self.events = events

    def admission(self, request: Request, flow: Flow) -> Decision | None:
        if not arrived_in_clear(request, flow):
            return None
        if self.events is not None:
            self.events.emit(SecurityEvent(SIPS_REFUSED, flow.remote[0], flow.transport_name, None, self._why(request, flow)))
        return self._refusal(flow)

    @staticmethod
    def _why(request: Request, flow: Flow) -> str:
        return f"{request.method} to a sips: Request-URI over {flow.transport_name}"

    @staticmethod
    def _refusal(flow: Flow) -> Decision:
        return Decision.reply(SIPS_STATUS, SIPS_REASON_INBOUND, (sips_warning(SIPS_REQUIRED, flow.local),))

    def explain_admission(self, context: Any) -> Explanation:
        request, flow = context.request, context.flow
        if not arrived_in_clear(request, flow):
            return Explanation.passes(self.name, "not a sips: Request-URI in clear")
        return Explanation.of(self.name, self._refusal(flow), self._why(request, flow) + " (RFC 5630)")
