"""The media policy: SRTP for every call (``[media] srtp``).

The proxy never sees the media, only the SDP offers and answers that set it
up (RFC 3264), so this is what it can enforce: in ``mandatory`` mode every
active audio or video stream (an ``m=audio`` / ``m=video`` line with a port
other than 0; port 0 declines a stream) must be

* ``RTP/SAVP`` or ``RTP/SAVPF`` with an ``a=crypto`` key (SDES, RFC 4568), or
* ``UDP/TLS/RTP/SAVP`` or ``UDP/TLS/RTP/SAVPF`` with an ``a=fingerprint``
  (DTLS-SRTP, RFC 5763/5764; the keys are agreed on the media path).

Other media types (``image`` for T.38 fax, ``application``, ``text``,
``message``) are not checked: SRTP does not apply to most of them.  SDES
keys travel in clear inside the SDP, so an SDP carrying ``a=crypto`` is
refused in ``mandatory`` mode when it arrived over UDP or TCP, or when, as an
answer, it would be relayed onto a non-TLS upstream hop: whoever reads the
signalling would have the media keys.  An SDP that cannot be inspected
(:class:`sipshield.message.SDPError`) is refused too (fail closed).  The
body is never changed (ICE and every other attribute pass as they are).

Requests (INVITE, re-INVITE, UPDATE, PRACK: the ``media`` stage) are
answered ``488 Not Acceptable Here`` with a ``Warning`` (RFC 3261 20.43)
saying why.  Answers (each provisional and each 2xx of those requests: the
stage's response filter) that fail are not relayed: a provisional is
dropped, a 2xx becomes ``488`` with the Warning for that branch (the caller
gets it, or a better answer of another branch; the callee gets no ACK and
ends the dialog itself, RFC 3261 13.3.1.4).  Each refusal is an
``srtp-refused`` security event; ``prefer`` lets everything through and
reports ``srtp-plain`` events instead; ``off`` looks at nothing.  An ACK
for a 2xx (the answer to an offer in the 2xx) passes no pipeline:
:meth:`MediaPolicy.check_ack`, which the proxy core calls before it
forwards one statelessly, gives it the same verdict.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from zope.interface import implementer

from sipshield.config import SRTP_MODES
from sipshield.events import SRTP_PLAIN, SRTP_REFUSED, SecurityEvent, SecurityEvents
from sipshield.interfaces import IExplainable, IPipelineStage
from sipshield.message import MediaSection, Message, Request, Response, SDPError, media_sections
from sipshield.proxy import CONTINUE, BranchCheck, Decision, RequestContext, ResponseFilter
from sipshield.proxy._explain import Explanation
from sipshield.transport import Flow

__all__ = ["CHECKED_METHODS", "SRTP_MODES", "MediaPolicy", "MediaRefusal", "srtp_refusal"]

CHECKED_METHODS = frozenset(("INVITE", "UPDATE", "PRACK"))
"""Requests that carry offers or answers and pass the pipeline (RFC 3261 13, RFC 3311, RFC 3262)."""
_CHECKED_MEDIA = frozenset(("audio", "video"))
_SDES = frozenset(("RTP/SAVP", "RTP/SAVPF"))
_DTLS = frozenset(("UDP/TLS/RTP/SAVP", "UDP/TLS/RTP/SAVPF"))
_UNSHOWN = re.compile(r"[^A-Za-z0-9/_.+-]")
_UNQUOTABLE = re.compile(r'[^\x20-\x7e]|["\\]')
"""What may not stand in a Warning's quoted text as it is (RFC 3261 25.1 quoted-string), nor in a log line."""


@dataclass(frozen=True, slots=True)
class MediaRefusal:
    """Why an SDP fails the policy: a Warning code (RFC 3261 20.43) and text."""

    code: int
    """302 Incompatible transport protocol (plain RTP), else 399 Miscellaneous warning."""
    text: str

    def warning(self, agent: str) -> str:
        """The Warning header value, ``code agent "text"``."""
        return f'{self.code} {agent} "{self.text}"'


def _shown(token: str) -> str:
    """A token from the SDP, safe inside a quoted Warning text and a log line."""
    return _UNSHOWN.sub("?", token[:32])


def srtp_refusal(message: Message, plaintext_hop: str | None) -> MediaRefusal | None:
    """Why the SDP of *message* fails ``mandatory``, or None when it passes
    (no SDP at all passes: there is nothing to set up).  *plaintext_hop* is
    the transport name (``UDP``, ``TCP``) of a non-TLS hop that this SDP has
    crossed or would cross, None when every hop is TLS.  One verdict for
    offers and answers, requests and responses."""
    try:
        sections = _sections(message)
    except SDPError as e:
        return MediaRefusal(399, "SRTP required: SDP cannot be inspected: " + _UNQUOTABLE.sub("?", e.reason[:80]))
    if sections is None:
        return None
    for section in sections:
        if section.media not in _CHECKED_MEDIA or section.port == 0:
            continue
        proto = section.proto.upper()
        where = f"m={_shown(section.media)}"
        if proto in _SDES:
            if not section.crypto:
                return MediaRefusal(399, f"SRTP required: {where} {_shown(section.proto)} without a=crypto")
        elif proto in _DTLS:
            if not section.fingerprint:
                return MediaRefusal(399, f"SRTP required: {where} {_shown(section.proto)} without a=fingerprint")
        else:
            return MediaRefusal(302, f"SRTP required: {where} uses {_shown(section.proto)}")
        if section.crypto and plaintext_hop is not None:
            return _keys_in_clear(plaintext_hop)
    return None


def _sections(message: Message) -> tuple[MediaSection, ...] | None:
    """The media sections of *message*'s SDP, every Content-Type and
    Content-Encoding line of it weighed (two Content-Types: SDPError)."""
    headers = message.headers
    return media_sections(message.body, headers.get_all("Content-Type"), headers.get_all("Content-Encoding"))


def _keys_in_clear(transport: str) -> MediaRefusal:
    return MediaRefusal(399, f"SRTP keys (a=crypto) in clear over {transport}: SDES needs TLS on every hop")


def _sdes_keys(message: Message) -> bool:
    """Does *message* carry an SDES key for an active audio or video stream?
    (An SDP that cannot be read carries none here: it was refused on arrival.)"""
    if b"crypto" not in message.body.lower():
        return False  # no a=crypto line anywhere in the body, in any case or part
    try:
        sections = _sections(message)
    except SDPError:
        return False
    return any(s.crypto and s.port != 0 and s.media in _CHECKED_MEDIA for s in sections or ())


@implementer(IPipelineStage, IExplainable)
class MediaPolicy:
    """The ``media`` stage (see the module docstring), and the response
    filter it puts on each request it checks."""

    name = "media"

    def __init__(self, mode: str, events: SecurityEvents | None = None) -> None:
        if mode not in SRTP_MODES:
            raise ValueError(f"srtp mode {mode!r} is not one of {', '.join(SRTP_MODES)}")
        self.mode = mode
        self.events = events
        # Bound once: a request checked here carries these two for the rest of
        # its call (the proxy keeps its context for late 2xx answers), so one
        # method object each, not one per call.
        self._answer_filters: tuple[ResponseFilter, ...] = (self.check_answer,)
        self._branch_checks: tuple[BranchCheck, ...] = (self.check_branch,)

    def process(self, context: RequestContext) -> Decision:
        request = context.request
        if self.mode == "off" or request.method not in CHECKED_METHODS:
            return CONTINUE
        context.response_filters = context.response_filters + self._answer_filters if context.response_filters else self._answer_filters
        context.branch_checks = context.branch_checks + self._branch_checks if context.branch_checks else self._branch_checks
        refusal = srtp_refusal(request, None if context.flow.secure else context.transport)
        if refusal is None:
            return CONTINUE
        self._report(context, context.source[0], context.transport, f"{request.method}: {refusal.text}")
        if self.mode != "mandatory":
            return CONTINUE
        return Decision.reply(488, "Not Acceptable Here", (("Warning", refusal.warning(_agent(context))),))

    def explain(self, context: RequestContext) -> Explanation:
        request = context.request
        if self.mode == "off" or request.method not in CHECKED_METHODS:
            return Explanation.passes(self.name, f"[media] srtp = {self.mode}: {request.method} not checked" if self.mode != "off" else "[media] srtp = off")
        refusal = srtp_refusal(request, None if context.flow.secure else context.transport)  # reads the SDP only
        if refusal is None:
            return Explanation.passes(self.name, f"no SDP, or an offer that meets [media] srtp = {self.mode} (its answer is checked as it comes back)")
        if self.mode != "mandatory":
            return Explanation.passes(self.name, f"{refusal.text}: reported, let through ([media] srtp = {self.mode})")
        return Explanation.of(self.name, Decision.reply(488, "Not Acceptable Here"), f"{refusal.text} ([media] srtp = mandatory)")

    def check_branch(self, context: RequestContext, request: Request, hop: tuple[str, str, int]) -> Response | None:
        """The BranchCheck: an SDES offer is not relayed onto a non-TLS hop
        in ``mandatory`` (that branch ends with 488); the rest of its SDP was
        checked when it arrived."""
        transport, host, _ = hop
        if transport == "TLS" or not _sdes_keys(request):
            return None
        refusal = _keys_in_clear(transport)
        self._report(context, host, transport, f"{request.method} not relayed: {refusal.text}")
        return self._refusal(context, refusal) if self.mode == "mandatory" else None

    def check_answer(self, context: RequestContext, response: Response, hop: tuple[str, str, int]) -> Response | None:
        """The ResponseFilter: a provisional or 2xx whose SDP fails is not
        relayed in ``mandatory`` (a provisional is dropped, a 2xx becomes 488);
        in ``prefer`` it is reported and relayed."""
        transport, host, _ = hop
        refusal = srtp_refusal(response, _plaintext_hop(transport, context.flow))
        if refusal is None:
            return response
        self._report(context, host, transport, f"{response.status} to {context.request.method}: {refusal.text}")
        if self.mode != "mandatory":
            return response
        if response.status < 200:
            return None
        return self._refusal(context, refusal)

    def check_ack(self, ack: Request, flow: Flow, hop: tuple[str, str, int]) -> bool:
        """The AckCheck: the SDP answer in an ACK for a 2xx (to an offer in
        the 2xx) passes the same verdict, over the hop it came on and the one
        it would go on; in ``mandatory`` a failing one is not forwarded."""
        if self.mode == "off":
            return True
        refusal = srtp_refusal(ack, _plaintext_hop(hop[0], flow))
        if refusal is None:
            return True
        if self.events is not None:
            kind = SRTP_REFUSED if self.mode == "mandatory" else SRTP_PLAIN
            self.events.emit(SecurityEvent(kind, flow.remote[0], flow.transport_name, None, f"ACK not relayed: {refusal.text}"))
        return self.mode != "mandatory"

    def _refusal(self, context: RequestContext, refusal: MediaRefusal) -> Response:
        """The proxy's own 488 with the Warning, for a branch it ends."""
        answer = context.request.make_response(488, "Not Acceptable Here", to_tag=secrets.token_hex(6))
        answer.headers.add("Warning", refusal.warning(_agent(context)))
        return answer

    def _report(self, context: RequestContext, source: str, transport: str, reason: str) -> None:
        if self.events is None:
            return
        user = None if context.user is None else f"{context.user[0]}@{context.user[1]}"
        kind = SRTP_REFUSED if self.mode == "mandatory" else SRTP_PLAIN
        self.events.emit(SecurityEvent(kind, source, transport, user, reason))


def _plaintext_hop(transport: str, flow: Flow) -> str | None:
    """The non-TLS transport an SDP crossed (*flow*, where it came from) or
    would cross (*transport*, where it goes), None when both are TLS."""
    if transport != "TLS":
        return transport
    return None if flow.secure else flow.transport_name


def _agent(context: RequestContext) -> str:
    """Our warn-agent (RFC 3261 20.43): the address the request reached us on."""
    host, port = context.flow.local
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
