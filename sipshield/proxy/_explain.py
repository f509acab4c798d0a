"""``sipshield explain``: which step decides what about one request, and why,
from the live objects of the running service, changing nothing.

A synthetic request (built from a request line and parsed by the message
layer, as any datagram is) is put to each admission step and each pipeline
stage in the order the proxy core runs them.  Each step that can explain
itself has an ``explain(context)`` method (:class:`IExplainable`) that
returns an :class:`Explanation` from the same rule its real check uses (an
ACL's matching rule, a ban, a route), read without side effects: no ban
counted, no token taken, no nonce issued, no event emitted, nothing sent or
stored.  A step without one is reported as not explained.  The walk stops at
the first step that decides.

Explaining never runs the real steps on a fake flow and rolls back: what a
step writes (counters, buckets, nonces, events) is exactly what explaining
must not touch, so each explanation is a read of the state its check reads.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from sipshield.message import ParseError, Request, parse_message
from sipshield.proxy._decision import Decision, RequestContext

__all__ = ["ExplainContext", "ExplainFlow", "Explanation", "explain_request", "not_explained", "parse_source", "synthetic_request"]

TRANSPORTS = ("udp", "tcp", "tls")
MAX_LINE = 1024
MAX_HEADERS = 20


@dataclass(frozen=True, slots=True)
class Explanation:
    """What one step would do with a request: its name, its verdict (``pass``,
    ``answer 403 Forbidden``, ``drop``, ``forward to sip:gw``, ``not
    explained``), why, and whether the walk ends here (``decides``)."""

    stage: str
    verdict: str
    reason: str
    decides: bool = False
    phase: str = "pipeline"
    """``transport`` (before parsing), ``admission`` (before any transaction) or ``pipeline``."""

    @classmethod
    def passes(cls, stage: str, reason: str) -> Explanation:
        return cls(stage, "pass", reason)

    @classmethod
    def of(cls, stage: str, decision: Decision | None, reason: str) -> Explanation:
        """The explanation of *decision* (None or CONTINUE: it passes)."""
        if decision is None or decision.kind == "continue":
            return cls.passes(stage, reason)
        return cls(stage, verdict(decision), reason, decides=True)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "verdict": self.verdict, "reason": self.reason, "decides": self.decides, "phase": self.phase}


def verdict(decision: Decision) -> str:
    """A decision in words: ``pass``, ``drop``, ``answer 403 Forbidden``, ``forward to sip:gw``."""
    if decision.kind == "continue":
        return "pass"
    if decision.kind == "drop":
        return "drop"
    if decision.kind == "reply":
        return f"answer {decision.status} {decision.reason}"
    hops = [str(t.next_hop if t.next_hop is not None else t.uri) for t in decision.targets]
    return "forward to " + (", ".join(hops) or "nobody")


def not_explained(stage: str) -> Explanation:
    return Explanation(stage, "not explained", "this step cannot explain itself; it would run here")


@dataclass(slots=True)
class ExplainContext(RequestContext):
    """A RequestContext for explaining: ``assumed_user`` is the (username,
    domain) the operator asked to take as authenticated, with
    ``assumed_roles`` (looked up in the user stores); the auth stage's
    explanation applies them as a verified login would."""

    assumed_user: tuple[str, str] | None = None
    assumed_roles: frozenset[str] = frozenset()
    assumed_note: str = ""
    """How the roles were found (which store, or that the user is unknown)."""


class ExplainFlow:
    """The flow a synthetic request 'came in on': its source and transport,
    the local listener it names, and nothing to send on (a step that tried to
    send would be a bug: it raises)."""

    def __init__(self, remote: tuple[str, int], transport: str, local: tuple[str, int]) -> None:
        self.remote = remote
        self.local = local
        self.transport_name = transport.upper()
        self.reliable = self.transport_name != "UDP"
        self.secure = self.transport_name == "TLS"
        self.authenticated = False

    def send(self, data: bytes) -> None:
        raise RuntimeError("explaining sends nothing")

    def peer_certificate(self) -> None:
        return None


def parse_source(text: str) -> tuple[str, str, int]:
    """``udp 203.0.113.5:5060``, ``tls [2001:db8::1]:5061``, ``203.0.113.5``
    (UDP, port 5060) -> (transport, host, port); ValueError saying what is wrong."""
    parts = text.split()
    if not 1 <= len(parts) <= 2:
        raise ValueError("source: '[udp|tcp|tls] ADDRESS[:PORT]'")
    transport = parts[0].lower() if len(parts) == 2 else "udp"
    if transport not in TRANSPORTS:
        raise ValueError(f"source: transport {parts[0]!r} is not one of {', '.join(TRANSPORTS)}")
    address = parts[-1]
    port = "5060"
    if address.startswith("["):
        host, closed, rest = address[1:].partition("]")
        if not closed:
            raise ValueError(f"source: {address!r} is not [IPv6]:PORT")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"source: {address!r} is not [IPv6]:PORT")
            port = rest[1:]
    elif address.count(":") == 1:
        host, port = address.split(":")
    else:
        host = address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"source: {host!r} is not an IP address") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"source: port {port!r} is not 1-65535")
    return transport, str(ip), int(port)


def synthetic_request(line: str, flow: ExplainFlow, from_uri: str, headers: Sequence[str] = ()) -> Request:
    """The request *line* (``INVITE sip:+4930123@pbx.example.com SIP/2.0``)
    with the headers a phone at *flow*'s source would send, From *from_uri*,
    and the extra header lines *headers*; parsed by the message layer, so
    what it refuses is refused here (ValueError with its reason)."""
    if len(line) > MAX_LINE or any(c in line for c in "\r\n\0"):
        raise ValueError(f"request: one request line of at most {MAX_LINE} characters")
    if len(headers) > MAX_HEADERS or any(len(h) > MAX_LINE or any(c in h for c in "\r\n\0") or ":" not in h for h in headers):
        raise ValueError(f"headers: at most {MAX_HEADERS} 'Name: value' lines")
    parts = line.split()
    if len(parts) != 3 or parts[2] != "SIP/2.0":
        raise ValueError("request: 'METHOD URI SIP/2.0'")
    method, uri, _ = parts
    host, port = flow.remote
    sent_by = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # A REGISTER is for the sender's own address-of-record, with a contact at its source.
    to = from_uri if method == "REGISTER" else uri
    contact = [f"Contact: <{from_uri.split('@')[0]}@{sent_by}>"] if method == "REGISTER" else []
    text = "\r\n".join(
        [
            line,
            f"Via: SIP/2.0/{flow.transport_name} {sent_by};branch=z9hG4bKexplain{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            f"From: <{from_uri}>;tag=explain{secrets.token_hex(4)}",
            f"To: <{to}>",
            f"Call-ID: explain-{secrets.token_hex(8)}",
            f"CSeq: 1 {method}",
            *contact,
            *headers,
            "Content-Length: 0",
            "",
            "",
        ]
    )
    try:
        message = parse_message(text.encode("utf-8"))
        if not isinstance(message, Request):
            raise ValueError("request: a request line, not a status line")
        for _ in (message.uri, message.to, message.from_, message.vias):
            pass  # each parsed now, so a bad one is a 400 here
    except ParseError as e:
        raise ValueError(f"request: {e.reason}") from None
    except UnicodeError:
        raise ValueError("request: not UTF-8") from None
    return message


async def explain_request(
    context: ExplainContext,
    admission: Sequence[Any],
    stages: Sequence[Any],
    *,
    source_check: Callable[[str], Explanation] | None = None,
    caps: Callable[[Request, Any], Explanation] | None = None,
    fallback: Decision | None = None,
) -> list[Explanation]:
    """Walk *context*'s request through the transport's source check, the
    *admission* steps, the transaction *caps* and the pipeline *stages*, in
    order, until one decides; each explanation in turn.  No step changes any
    state."""
    steps: list[Explanation] = []
    if source_check is not None:
        steps.append(_in_phase(source_check(context.source[0]), "transport"))
        if steps[-1].decides:
            return steps
    for step in admission:
        explain = getattr(step, "explain_admission", None)
        found = explain(context) if callable(explain) else not_explained(getattr(step, "name", type(step).__name__))
        steps.append(_in_phase(found, "admission"))
        if found.decides:
            return steps
    if caps is not None:
        steps.append(_in_phase(caps(context.request, context.flow), "admission"))
        if steps[-1].decides:
            return steps
    context.admitted_by = tuple(admission)
    for stage in stages:
        explain = getattr(stage, "explain", None)
        result: Explanation | Deferred[Explanation] = explain(context) if callable(explain) else not_explained(stage.name)
        found = await result if isinstance(result, Deferred) else result
        steps.append(found)
        if found.decides:
            return steps
    if fallback is not None:
        steps.append(Explanation.of("pipeline", fallback, "no stage settled the request"))
    return steps


def _in_phase(explanation: Explanation, phase: str) -> Explanation:
    return Explanation(explanation.stage, explanation.verdict, explanation.reason, explanation.decides, phase)


def outcome(steps: Sequence[Explanation]) -> str:
    """One line: who decides what (or that nothing the walk could see decided)."""
    for step in steps:
        if step.decides:
            return f"{step.verdict} ({step.phase} step {step.stage}: {step.reason})"
    return "no step decided (admitted; what the unexplained steps would do is not known)"
