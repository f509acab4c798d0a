"""Building forwarded requests (RFC 3261 16.4, 16.6) and finding next hops."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable

from sipshield.message import URI, Address, ParseError, Request
from sipshield.proxy._signer import TOKEN_PARAM, RecordRouteSigner

__all__ = ["Hop", "next_hop", "preprocess_route", "record_route_uri", "routed_by_us", "strip_own_routes", "stateless_branch"]

Hop = tuple[str, str, int]
"""(transport, host, port): where the bytes go."""

_DEFAULT_PORT = {"UDP": 5060, "TCP": 5060, "TLS": 5061}

IsLocal = Callable[[str, "int | None"], bool]


def hop_for(uri: URI) -> Hop:
    """RFC 3263-lite: transport from the URI (sips -> TLS, transport param),
    maddr over host, default ports.  Host names are resolved by the caller."""
    transport = (uri.transport or "").upper()
    if uri.scheme == "sips":
        transport = "TLS"
    elif transport not in ("UDP", "TCP", "TLS"):
        transport = "UDP"
    host = uri.maddr or uri.host or ""
    return transport, host.strip("[]"), uri.port or _DEFAULT_PORT[transport]


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _route_uri(value: str) -> URI:
    return Address.parse(value).uri


def preprocess_route(request: Request, is_local: IsLocal, signer: RecordRouteSigner) -> bool:
    """RFC 3261 16.4: undo a strict router's rewrite, then drop our own Route(s).

    If the Request-URI is a URI this proxy put in a Record-Route, the previous
    hop was a strict router: the real Request-URI is the last Route value.
    With double Record-Route two Routes in a row can be ours.  Returns True
    only when the request was routed to us by a route set we can prove we
    made: a Route (or strict-routed Request-URI) naming us that carries a
    valid *signer* token for this request's Call-ID and its From or To tag.
    A Route naming us without one is removed all the same, but does not make
    the request in-dialog (it gets the out-of-dialog path), and a
    strict-routed Request-URI without one is not rewritten at all.
    """
    strict = False
    if _strict_routed_to_us(request, is_local, signer):
        routes = request.headers.get_values("Route")
        if routes:
            last = routes[-1]
            request.uri = _route_uri(last)
            values = routes[:-1]
            request.headers.remove("Route")
            for value in values:
                request.headers.add("Route", value)
            strict = True
    return strip_own_routes(request, is_local, signer) or strict


def routed_by_us(request: Request, is_local: IsLocal, signer: RecordRouteSigner) -> bool:
    """What ``preprocess_route`` would return, without changing the request:
    does a Route (or a strict-routed Request-URI) naming us carry a valid
    token for this request's dialog?  For admission, before any state; a
    malformed Route proves nothing."""
    try:
        return _strict_routed_to_us(request, is_local, signer) or _own_routes(request, is_local, signer)[1]
    except ParseError:
        return False


def _strict_routed_to_us(request: Request, is_local: IsLocal, signer: RecordRouteSigner) -> bool:
    uri = request.uri
    return bool(uri.is_sip and uri.lr and uri.host and is_local(uri.host, uri.port) and _signed(uri, request, signer))


def _signed(uri: URI, request: Request, signer: RecordRouteSigner) -> bool:
    return signer.verify(uri.params.get(TOKEN_PARAM), request.call_id, (request.from_.tag, request.to.tag))


def _own_routes(request: Request, is_local: IsLocal, signer: RecordRouteSigner) -> tuple[int, bool]:
    """How many Route values at the top name us, and whether one of them
    carries a valid token for this request's dialog."""
    signed = False
    ours = 0
    for value in request.headers.get_values("Route"):
        uri = _route_uri(value)
        if not (uri.is_sip and uri.host and is_local(uri.host, uri.port)):
            break
        ours += 1
        signed = signed or _signed(uri, request, signer)
    return ours, signed


def strip_own_routes(request: Request, is_local: IsLocal, signer: RecordRouteSigner) -> bool:
    """Remove the Route values at the top that are ours; True if one of them
    carried a valid token for this request's dialog.

    The Routes are split once and removed in one pass: linear in the route
    set (popping them one by one re-split the whole set each time)."""
    ours, signed = _own_routes(request, is_local, signer)
    request.headers.remove_first_values("Route", ours)
    return signed


def next_hop(request: Request, override: URI | None = None) -> tuple[URI, Hop]:
    """Where to send a request (RFC 3261 16.6 steps 6-7, 16.12): the override,
    else the top Route (loose), else the Request-URI.  A top Route without
    ``lr`` is a strict router: the Request-URI moves to the end of the Route
    set and the Route becomes the Request-URI."""
    if override is not None:
        return override, hop_for(override)
    routes = request.headers.get_values("Route")
    if routes:
        top = _route_uri(routes[0])
        if not top.lr:
            request.headers.remove_first("Route")
            request.headers.add("Route", f"<{request.uri}>")
            request.uri = top
        return top, hop_for(top)
    return request.uri, hop_for(request.uri)


def record_route_uri(side: Hop, double: bool, token: str | None = None) -> str:
    """Our Record-Route value for one side (RFC 3261 16.6 step 4), with the
    dialog's *token* (see RecordRouteSigner) as the ``ss`` parameter."""
    transport, host, port = side
    shown = f"[{host}]" if ":" in host else host
    extra = ";r2=on" if double else ""
    if token:
        extra += f";{TOKEN_PARAM}={token}"
    scheme = "sip"
    return f"<{scheme}:{shown}:{port};transport={transport.lower()};lr{extra}>"


def stateless_branch(request: Request) -> str:
    """RFC 3261 16.11: a stateless forward (ACK for 2xx) must get the same
    branch every time the same request passes: hash the incoming top Via."""
    top = request.headers.get_values("Via")[:1]
    seed = (top[0] if top else "") + "|" + str(request.uri)
    return "z9hG4bK" + hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=10).hexdigest()
