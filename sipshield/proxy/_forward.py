"""Building forwarded requests (RFC 3261 16.4, 16.6) and finding next hops."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from typing import NamedTuple

from sipshield.message import URI, Address, ParseError, Request, ip_version
from sipshield.proxy._signer import TOKEN_PARAM, RecordRouteSigner

__all__ = ["Hop", "RouteSet", "apply_route_set", "next_hop", "preprocess_route", "route_set", "endpoints", "record_route_uri", "routed_by_us", "stateless_branch"]

Hop = tuple[str, str, int]
"""(transport, host, port): where the bytes go."""

_DEFAULT_PORT = {"UDP": 5060, "TCP": 5060, "TLS": 5061}

IsLocal = Callable[[str, "int | None"], bool]


def hop_for(uri: URI) -> Hop:
    """RFC 3263-lite: transport from the URI (sips -> TLS, transport param),
    maddr over host, default ports.  Host names are resolved by the caller.
    A transport we do not speak (sctp, ws) and a port 0 are kept as they
    are, so that the branch fails as unusable instead of going elsewhere."""
    transport = (uri.transport or "UDP").upper()
    if uri.scheme == "sips":
        transport = "TLS"
    host = uri.maddr or uri.host or ""
    port = uri.port
    return transport, host.strip("[]"), _DEFAULT_PORT.get(transport, 5060) if port is None else port


def is_ip(host: str) -> bool:
    return ip_version(host.strip("[]")) is not None


def _route_uri(value: str) -> URI:
    return Address.parse(value).uri


class RouteSet(NamedTuple):
    """What RFC 3261 16.4 finds in a request's route set, before it is changed."""

    strict_uri: URI | None
    """The real Request-URI when a strict router rewrote it to our signed Record-Route, else None."""
    ours: int
    """How many Routes at the top name us (after that rewrite)."""
    signed: bool
    """Whether one of our URIs carries a token for this dialog between the source and the next hop."""


NOT_ROUTED = RouteSet(None, 0, False)


def route_set(request: Request, is_local: IsLocal, signer: RecordRouteSigner, source: str) -> RouteSet:
    """Read the route set of *request* as it came from *source* (unchanged).

    If the Request-URI is a URI this proxy put in a Record-Route, the previous
    hop was a strict router: the real Request-URI is the last Route value.
    With double Record-Route two Routes in a row can be ours.  ``signed`` is
    True only when the request was routed to us by a route set we can prove
    we made for this dialog *between these two hosts*: a Route (or
    strict-routed Request-URI) naming us whose token is valid for the
    request's Call-ID, its From or To tag, and the pair (*source*, the host
    it goes to next).  Raises ParseError for a malformed Route.
    """
    routes = request.headers.get_values("Route")
    if not routes:
        return NOT_ROUTED  # no route set (every out-of-dialog request): nothing to read
    uri = request.uri
    if routes and uri.is_sip and uri.lr and uri.host and is_local(uri.host, uri.port):
        real = _route_uri(routes[-1])
        ours, own, destination = _own_prefix(routes[:-1], is_local, real)
        if _signed(uri, request, signer, endpoints(source, destination)):
            return RouteSet(real, ours, True)
    ours, own, destination = _own_prefix(routes, is_local, uri)
    if not own:
        return NOT_ROUTED
    pair = endpoints(source, destination)
    return RouteSet(None, ours, any(_signed(u, request, signer, pair) for u in own))


def apply_route_set(request: Request, found: RouteSet) -> bool:
    """RFC 3261 16.4, with what :func:`route_set` found: undo a strict
    router's rewrite, then drop our own Route(s).  A Route naming us without
    a token is removed all the same, but does not make the request in-dialog
    (it gets the out-of-dialog path), and a strict-routed Request-URI without
    one is not rewritten at all.  Returns ``found.signed``."""
    if found.strict_uri is not None:
        routes = request.headers.get_values("Route")
        request.uri = found.strict_uri
        request.headers.remove("Route")
        for value in routes[:-1]:
            request.headers.add("Route", value)
    if found.ours:
        request.headers.remove_first_values("Route", found.ours)
    return found.signed


def preprocess_route(request: Request, is_local: IsLocal, signer: RecordRouteSigner, source: str) -> bool:
    """:func:`route_set` then :func:`apply_route_set`: True only for a
    request on a route set we made for this dialog between these hosts."""
    return apply_route_set(request, route_set(request, is_local, signer, source))


def routed_by_us(request: Request, is_local: IsLocal, signer: RecordRouteSigner, source: str) -> bool:
    """What ``preprocess_route`` would return, without changing the request.
    For admission, before any state; a malformed Route proves nothing."""
    try:
        return route_set(request, is_local, signer, source).signed
    except ParseError:
        return False


def endpoints(source: str, destination: str) -> tuple[str, str]:
    """The two hosts a dialog's requests travel between, in one canonical
    order (the token does not say which side is the caller)."""
    a, b = _canonical_host(source), _canonical_host(destination)
    return (a, b) if a <= b else (b, a)


def _canonical_host(host: str) -> str:
    host = host.strip("[]").lower()
    if ":" not in host:
        return host  # a host name, or an IPv4 address (only one spelling of which parses)
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def _own_prefix(routes: list[str], is_local: IsLocal, request_uri: URI) -> tuple[int, list[URI], str]:
    """The Route values at the top that name us, and the host the request
    goes to after them (the next Route, else the Request-URI)."""
    own: list[URI] = []
    for value in routes:
        uri = _route_uri(value)
        if not (uri.is_sip and uri.host and is_local(uri.host, uri.port)):
            return len(own), own, hop_for(uri)[1]
        own.append(uri)
    return len(own), own, hop_for(request_uri)[1]


def _signed(uri: URI, request: Request, signer: RecordRouteSigner, pair: tuple[str, str]) -> bool:
    return signer.verify(uri.params.get(TOKEN_PARAM), request.call_id, (request.from_.tag, request.to.tag), pair)


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


def record_route_uri(side: Hop, double: bool, token: str | None = None, sips: bool = False) -> str:
    """Our Record-Route value for one side (RFC 3261 16.6 step 4), with the
    dialog's *token* (see RecordRouteSigner) as the ``ss`` parameter.

    For a *sips* request the TLS side is a ``sips:`` URI (16.6 step 4: a
    SIPS Request-URI or top Route makes the Record-Route SIPS), without the
    ``transport=tls`` that RFC 5630 deprecates; a side in clear (the caller's
    of a sip: request to a sips: target) stays ``sip:``."""
    transport, host, port = side
    shown = f"[{host}]" if ":" in host else host
    extra = ";r2=on" if double else ""
    if token:
        extra += f";{TOKEN_PARAM}={token}"
    if sips and transport == "TLS":
        return f"<sips:{shown}:{port};lr{extra}>"
    return f"<sip:{shown}:{port};transport={transport.lower()};lr{extra}>"


def stateless_branch(request: Request) -> str:
    """RFC 3261 16.11: a stateless forward (ACK for 2xx) must get the same
    branch every time the same request passes: hash the incoming top Via."""
    top = request.headers.get_values("Via")[:1]
    seed = (top[0] if top else "") + "|" + str(request.uri)
    return "z9hG4bK" + hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=10).hexdigest()
