"""The admin API: JSON over HTTP (twisted.web), behind a twisted.cred Portal.

The resource tree is the avatar of an authenticated operator: the
:class:`AdminRealm` gives the API to an identity whose roles grant
``manage``, and a 403 resource to any other; ``HTTPAuthSessionWrapper``
(twisted.web.guard) asks the Portal, with :class:`BearerTokenFactory`
turning ``Authorization: Bearer TOKEN`` into :class:`AdminToken`
credentials for :class:`AdminTokenChecker`.  Nothing below the wrapper is
reachable without a token.

On the HTTPS listener (``[admin.tls]``) a verified client certificate is a
credential too: :class:`CertificateAuthWrapper` logs in first with
:class:`ClientCertificate` credentials, which :class:`ClientCertificateChecker`
turns into the avatar id ``cert:IDENTITY`` (the identity named as mutual-TLS
trunks are, sipshield/auth/_mtls.py) when ``[[admin.clients]]`` lists it;
no certificate, or one naming no configured client, falls back to the
bearer token.  The plain-HTTP listener never looks at certificates.

The API never reaches into the service: it is given an :class:`AdminBackend`
(the ban policy, the location store, and callables for the status and the
TLS reload), so ops stays below the wiring.  Documented in
docs/admin-api.yaml (OpenAPI 3.1), which tests/integration/test_admin_api.py
checks every real response against.

    GET    /v1/status                 counters, listeners, bans and registrations held
    GET    /v1/bans                   the bans in force
    POST   /v1/bans                   {"address", "duration"?, "reason"?} -> 201 the ban
    DELETE /v1/bans/{key}             lift a ban (the key URL-encoded: 2001:db8::/64)
    GET    /v1/registrations?limit=N  the bindings, by AOR
    GET    /v1/rates?window=N         message rates over the last N seconds
    GET    /v1/top-talkers?limit=N    the sources sending the most requests (or auth failures: by=auth_failures), recently
    POST   /v1/tls/reload             read the certificate and key files again
    POST   /v1/reload                 read the configuration file again (its reloadable sections, and TLS)
    POST   /v1/explain                {"request", "source", "user"?, "headers"?} -> which step decides what, and why
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

from twisted.application.service import Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.guard import HTTPAuthSessionWrapper
from twisted.web.http import HTTPChannel
from twisted.web.iweb import ICredentialFactory
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import Attribute, implementer

from sipshield.auth._mtls import TrunkAccount, TrunkMap
from sipshield.config import ConfigError
from sipshield.ops._http import listen_http
from sipshield.security import BanPolicy

__all__ = [
    "AdminBackend",
    "AdminService",
    "AdminRealm",
    "AdminToken",
    "AdminTokenChecker",
    "BearerTokenFactory",
    "CertificateAuthWrapper",
    "ClientCertificate",
    "ClientCertificateChecker",
    "IClientCertificate",
    "admin_resource",
    "load_or_create_token",
]

MAX_BODY = 16 * 1024
MAX_LISTING = 10000
MAX_BAN = 365 * 86400
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
REQUEST_DEADLINE = 10.0
"""Seconds from a request's first line to its last body byte (slow-body clients get 408)."""
IDLE_TIMEOUT = 30.0
"""Seconds a connection may sit idle between requests."""
MAX_CONNECTIONS = 64
"""Open connections at a time; one more is closed at once."""


class IAdminToken(ICredentials):
    token = Attribute("The bearer token the client presented (bytes).")


@implementer(IAdminToken)
@dataclass(frozen=True)
class AdminToken:
    token: bytes


@implementer(ICredentialFactory)
class BearerTokenFactory:
    """``Authorization: Bearer TOKEN`` (RFC 6750 2.1) -> :class:`AdminToken`."""

    scheme = b"bearer"

    def getChallenge(self, request: Any) -> dict[str, str]:
        return {"realm": "sipshield-admin"}

    def decode(self, response: bytes, request: Any) -> AdminToken:
        token = response.strip()
        if not token or len(token) > 512:
            raise LoginFailed("no usable bearer token")
        return AdminToken(token)


@implementer(ICredentialsChecker)
class AdminTokenChecker:
    """Tokens known by their SHA-256 digest only, compared in constant time;
    the avatar id is the token's name."""

    credentialInterfaces = (IAdminToken,)

    def __init__(self, tokens: Mapping[str, bytes]) -> None:
        self.digests = {name: hashlib.sha256(token).digest() for name, token in tokens.items()}

    def requestAvatarId(self, credentials: AdminToken) -> defer.Deferred[bytes | tuple[()]]:
        presented = hashlib.sha256(credentials.token).digest()
        found = None
        for name, digest in self.digests.items():
            if hmac.compare_digest(presented, digest):
                found = name
        if found is None:
            return defer.fail(UnauthorizedLogin("unknown token"))
        return defer.succeed(found.encode())


class IClientCertificate(ICredentials):
    certificate = Attribute("The client certificate the TLS handshake verified against [admin.tls] client_ca (a pyOpenSSL X509).")


@implementer(IClientCertificate)
@dataclass(frozen=True)
class ClientCertificate:
    certificate: Any


CERTIFICATE_AVATAR = "cert:"
"""The prefix of a certificate's avatar id (``cert:ops.example.net``); a token's is its name (``local``)."""


@implementer(ICredentialsChecker)
class ClientCertificateChecker:
    """``[[admin.clients]]`` identities -> the avatar id ``cert:IDENTITY`` of
    the first of the certificate's identities (subjectAltName ``sip:`` URIs,
    then DNS names, the CN only without a subjectAltName: RFC 5922 7.1, as
    for trunks) that is configured; exact matches, no wildcards.  The TLS
    layer has verified the chain; a certificate naming no configured client
    is refused (UnauthorizedLogin)."""

    credentialInterfaces = (IClientCertificate,)

    def __init__(self, identities: Sequence[str]) -> None:
        # The trunks' map, for its naming and matching (the accounts' names are the identities).
        self.clients = TrunkMap({identity: TrunkAccount(identity, "") for identity in identities})

    def requestAvatarId(self, credentials: ClientCertificate) -> defer.Deferred[bytes | tuple[()]]:
        account = self.clients.match(credentials.certificate)
        if account is None:
            return defer.fail(UnauthorizedLogin("no configured client in the certificate"))
        return defer.succeed((CERTIFICATE_AVATAR + account.name).encode())


def _peer_certificate(request: Request) -> Any:
    """The verified client certificate of *request*'s TLS connection, None
    without one (or on plain TCP)."""
    from twisted.internet.interfaces import ISSLTransport

    transport = request.channel.transport if request.channel is not None else None
    if transport is None or not ISSLTransport.providedBy(transport):
        return None
    return transport.getPeerCertificate()


class CertificateAuthWrapper(HTTPAuthSessionWrapper):
    """``HTTPAuthSessionWrapper`` for the HTTPS listener: a client certificate
    (verified in the handshake) logs in first, through the same Portal; when
    none was presented, or it names no ``[[admin.clients]]`` entry, the
    ``Authorization`` header decides as on the plain listener (401 without
    one).  A configured identity whose roles lack ``manage`` gets the realm's
    403, whatever token comes with it."""

    def _authorizedResource(self, request: Request) -> IResource:
        certificate = _peer_certificate(request)
        if certificate is None:
            return cast(IResource, super()._authorizedResource(request))
        d = self._portal.login(ClientCertificate(certificate), None, IResource)

        def refused(failure: Failure) -> Any:
            failure.trap(UnauthorizedLogin)
            return HTTPAuthSessionWrapper._authorizedResource(self, request)

        d.addCallbacks(self._loginSucceeded, refused)
        from twisted.web.util import DeferredResource

        return cast(IResource, DeferredResource(d))


def load_or_create_token(path: Path) -> bytes:
    """The local operator's token in *path* (mode 0600), made on first use.

    Created with O_EXCL (two processes starting at once agree on one token)
    and never through a symbolic link (O_NOFOLLOW: a link planted in
    data_dir would point the write, or the read, elsewhere); a token file
    found readable by group or others is made 0600 again."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        with open(os.open(path, os.O_RDWR | os.O_NOFOLLOW), "r+b") as existing:
            if os.fstat(existing.fileno()).st_mode & 0o077:
                os.fchmod(existing.fileno(), 0o600)
            held = existing.read().strip()
            if held:
                return held
            existing.seek(0)
            existing.write(token + b"\n")
            existing.truncate()
        return token
    with open(fd, "wb") as created:
        created.write(token + b"\n")
    return token


@dataclass(frozen=True)
class AdminBackend:
    """What the API acts on (the service builds it)."""

    bans: BanPolicy | None
    location: Any
    """The ILocationStore."""
    status: Callable[[], dict[str, Any]]
    reload_tls: Callable[[], dict[str, Any]] | None
    """Read the TLS files again; returns what is served now; raises ConfigError. None: no TLS listener."""
    seconds: Callable[[], float]
    reload: Callable[[], dict[str, Any]] | None = None
    """Read the configuration file again and apply its reloadable sections (and the TLS files); raises ConfigError."""
    activity: Any = None
    """The ActivityMonitor (sipshield/ops/_rates.py): ``rates(window)``, ``talkers(limit, by)``; None: 404."""
    explain: Callable[[str, str, str | None, Sequence[str]], defer.Deferred[dict[str, Any]]] | None = None
    """``explain(request_line, source, user, headers)``: which step decides what, changing nothing; raises ValueError for bad input."""


# -- resources ------------------------------------------------------------------------------------


def _send(request: Request, code: int, body: Any, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    for name, value in headers:
        request.setHeader(name, value)
    return json.dumps(body, sort_keys=True).encode() + b"\n"


def _error(request: Request, code: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    return _send(request, code, {"error": message}, headers)


class _JSONResource(Resource):
    """A leaf that answers its methods with JSON, 405 otherwise."""

    isLeaf = True
    log = Logger()

    def __init__(self, backend: AdminBackend) -> None:
        super().__init__()
        self.backend = backend

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, f"do_{method}", None)
        if handler is None:
            allowed = ", ".join(sorted(n[3:] for n in dir(self) if n.startswith("do_")))
            return _error(request, 405, f"{method} not allowed here", [(b"allow", allowed.encode())])
        try:
            result: bytes | int = handler(request)
            return result
        except Exception:
            self.log.failure("admin API: {method} {path} failed", method=method, path=request.path)
            return _error(request, 500, "internal error (logged)")


def _body(request: Request) -> dict[str, Any]:
    content = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(content) > MAX_BODY:
        raise ValueError(f"body over {MAX_BODY} bytes")
    try:
        data = json.loads(content or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("the body is not JSON (or nests too deep)") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


class _Status(_JSONResource):
    def do_GET(self, request: Request) -> bytes:
        return _send(request, 200, self.backend.status())


def _ban_json(ban: Any, now: float) -> dict[str, Any]:
    return {"key": ban.key, "reason": ban.reason, "since": ban.since, "until": ban.until, "remaining": max(0, round(ban.until - now))}


class _Bans(_JSONResource):
    """/v1/bans and, as a leaf below it, /v1/bans/{key}."""

    def do_GET(self, request: Request) -> bytes:
        bans = self.backend.bans
        if request.postpath and request.postpath != [b""]:
            return _error(request, 405, "GET /v1/bans lists them all", [(b"allow", b"DELETE")])
        now = self.backend.seconds()
        return _send(request, 200, {"bans": [] if bans is None else [_ban_json(b, now) for b in bans.bans()]})

    def do_POST(self, request: Request) -> bytes:
        bans = self.backend.bans
        if bans is None:
            return _error(request, 409, "bans are off ([bans] enabled = false)")
        try:
            data = _body(request)
            address = data.get("address")
            if not isinstance(address, str):
                raise ValueError("address: an IP address is required")
            ip = ipaddress.ip_address(address)
            if ip.is_unspecified or ip.is_multicast or ip == _BROADCAST:
                raise ValueError(f"address: {ip} is not one host (unspecified, multicast or broadcast)")
            host = str(ip)
            duration = data.get("duration", bans.ban_time)
            if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 1 <= duration <= MAX_BAN:
                raise ValueError(f"duration: seconds, 1 to {MAX_BAN}")
            reason = data.get("reason", "banned by an operator")
            if not isinstance(reason, str) or len(reason) > 200:
                raise ValueError("reason: a string of at most 200 characters")
            unknown = set(data) - {"address", "duration", "reason"}
            if unknown:
                raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        except ValueError as e:
            return _error(request, 400, str(e))
        if bans.allowlisted(host):
            return _error(request, 409, f"{host} is in [bans] allowlist: never banned")
        ban = bans.ban(bans.key(host), f"operator: {reason}", float(duration), transport="admin")
        return _send(request, 201, _ban_json(ban, self.backend.seconds()))

    def do_DELETE(self, request: Request) -> bytes:
        bans = self.backend.bans
        key = unquote(b"/".join(request.postpath or ()).decode("utf-8", "replace"))
        if not key:
            return _error(request, 405, "DELETE /v1/bans/{key}", [(b"allow", b"GET, POST")])
        if bans is None or not bans.unban(key):
            return _error(request, 404, f"no ban on {key}")
        return _send(request, 200, {"unbanned": key})


class _Registrations(_JSONResource):
    def do_GET(self, request: Request) -> bytes | int:
        try:
            limit = _number(request, "limit", 1000, MAX_LISTING)
        except ValueError as e:
            return _error(request, 400, str(e))
        now = self.backend.seconds()

        def listed(bindings: list[Any]) -> None:
            rows = [{
                "aor": b.aor, "contact": b.contact, "expires_in": b.expires_in(now), "q": b.q, "identity": b.identity,
                "user_agent": b.user_agent, "source": None if b.source is None else f"{b.source[0]} {b.source[1]}:{b.source[2]}",
            } for b in bindings]  # fmt: skip
            request.write(_send(request, 200, {"registrations": rows}))
            request.finish()

        def failed(failure: Any) -> None:
            request.write(_error(request, 503, f"location store unavailable: {failure.getErrorMessage()}"))
            request.finish()

        self.backend.location.listing(limit).addCallbacks(listed, failed)
        return NOT_DONE_YET


class _Reload(_JSONResource):
    """POST: one of the backend's reload callables; 409 with what was kept when it raises ConfigError."""

    def __init__(self, backend: AdminBackend, action: Callable[[AdminBackend], Callable[[], dict[str, Any]] | None], missing: str, kept: str) -> None:
        super().__init__(backend)
        self.action = action
        self.missing = missing
        self.kept = kept

    def do_POST(self, request: Request) -> bytes:
        reload = self.action(self.backend)
        if reload is None:
            return _error(request, 404, self.missing)
        try:
            return _send(request, 200, reload())
        except ConfigError as e:
            return _error(request, 409, f"kept {self.kept}: {e}")


def _number(request: Request, name: str, default: int, maximum: int) -> int:
    """The integer query parameter *name*, 1 to *maximum*; ValueError naming it."""
    raw = request.args.get(name.encode(), [str(default).encode()])[0]
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ValueError(f"{name}: 1 to {maximum}")
    return int(raw)


class _Rates(_JSONResource):
    """GET /v1/rates?window=N: message rates over the last N seconds (sipshield/ops/_rates.py)."""

    def do_GET(self, request: Request) -> bytes:
        from sipshield.ops._rates import DEFAULT_WINDOW, MAX_WINDOW

        if self.backend.activity is None:
            return _error(request, 404, "no activity monitor")
        try:
            window = _number(request, "window", int(DEFAULT_WINDOW), int(MAX_WINDOW))
        except ValueError as e:
            return _error(request, 400, str(e))
        return _send(request, 200, self.backend.activity.rates(float(window)))


MAX_TALKERS = 100


class _TopTalkers(_JSONResource):
    """GET /v1/top-talkers?limit=N&by=requests|auth_failures: the sources sending the most, recently."""

    def do_GET(self, request: Request) -> bytes:
        if self.backend.activity is None:
            return _error(request, 404, "no activity monitor")
        try:
            limit = _number(request, "limit", 10, MAX_TALKERS)
        except ValueError as e:
            return _error(request, 400, str(e))
        by = request.args.get(b"by", [b"requests"])[0]
        if by not in (b"requests", b"auth_failures"):
            return _error(request, 400, "by: requests or auth_failures")
        return _send(request, 200, self.backend.activity.talkers(limit, by.decode()))


class _Explain(_JSONResource):
    """POST /v1/explain: {"request", "source", "user"?, "headers"?} -> the steps and the outcome (changes nothing)."""

    def do_POST(self, request: Request) -> bytes | int:
        explain = self.backend.explain
        if explain is None:
            return _error(request, 404, "explain is not available here")
        try:
            data = _body(request)
            line, source, user, headers = data.get("request"), data.get("source"), data.get("user"), data.get("headers", [])
            if not isinstance(line, str):
                raise ValueError("request: a request line is required ('INVITE sip:bob@example.com SIP/2.0')")
            if not isinstance(source, str):
                raise ValueError("source: '[udp|tcp|tls] ADDRESS[:PORT]' is required")
            if user is not None and not isinstance(user, str):
                raise ValueError("user: a user name, or user@domain")
            if not isinstance(headers, list) or not all(isinstance(h, str) for h in headers):
                raise ValueError("headers: a list of 'Name: value' strings")
            unknown = set(data) - {"request", "source", "user", "headers"}
            if unknown:
                raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
            d = explain(line, source, user, headers)
        except ValueError as e:
            return _error(request, 400, str(e))

        def explained(result: dict[str, Any]) -> None:
            request.write(_send(request, 200, result))
            request.finish()

        def failed(failure: Failure) -> None:
            self.log.failure("admin API: explain failed", failure)
            request.write(_error(request, 500, "internal error (logged)"))
            request.finish()

        d.addCallbacks(explained, failed)
        return NOT_DONE_YET


class _Forbidden(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _error(request, 403, "these credentials' roles do not grant manage")


def _api(backend: AdminBackend) -> Resource:
    root = Resource()
    v1 = Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"status", _Status(backend))
    v1.putChild(b"bans", _Bans(backend))
    v1.putChild(b"registrations", _Registrations(backend))
    v1.putChild(b"rates", _Rates(backend))
    v1.putChild(b"top-talkers", _TopTalkers(backend))
    v1.putChild(b"explain", _Explain(backend))
    v1.putChild(b"reload", _Reload(backend, lambda b: b.reload, "nothing to reload", "the running configuration"))
    tls = Resource()
    v1.putChild(b"tls", tls)
    tls.putChild(b"reload", _Reload(backend, lambda b: b.reload_tls, "no TLS listener", "the certificate in use"))
    return root


@implementer(IRealm)
class AdminRealm:
    """The API for an identity whose roles grant ``manage``; 403 otherwise."""

    def __init__(self, api: Resource, permissions: Callable[[str], frozenset[str]]) -> None:
        self.api = api
        self.permissions = permissions

    def requestAvatar(self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any) -> tuple[Any, Any, Callable[[], None]]:
        if IResource not in interfaces:
            raise NotImplementedError("the admin realm serves web resources only")
        name = avatarId.decode() if isinstance(avatarId, bytes) else ""
        avatar = self.api if "manage" in self.permissions(name) else _Forbidden()
        return IResource, avatar, lambda: None


def admin_resource(
    backend: AdminBackend,
    tokens: Mapping[str, bytes],
    permissions: Callable[[str], frozenset[str]],
    *,
    certificates: Sequence[str] | None = None,
) -> IResource:
    """The whole API behind its Portal: bearer tokens only, or (the HTTPS
    listener's, *certificates* given) client certificates of those
    identities first.  *permissions* maps an avatar id (a token's name,
    ``cert:IDENTITY``) to what its roles grant now."""
    checkers: list[ICredentialsChecker] = [AdminTokenChecker(tokens)]
    if certificates is not None:
        checkers.append(ClientCertificateChecker(certificates))
    portal = Portal(AdminRealm(_api(backend), permissions), checkers)
    wrapper: IResource
    if certificates is None:
        wrapper = HTTPAuthSessionWrapper(portal, [BearerTokenFactory()])
    else:
        wrapper = CertificateAuthWrapper(portal, [BearerTokenFactory()])
    return wrapper


class _AdminRequest(Request):
    """A request whose body may not pass :data:`MAX_BODY` nor take longer than
    :data:`REQUEST_DEADLINE`: the token is checked only once the whole
    request is in, so without these anyone who can connect could stream
    gigabytes into a temporary file or hold connections open for good."""

    _received = 0
    _deadline: Any = None
    _refused = False

    def __init__(self, channel: HTTPChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self._deadline = cast(Any, channel).callLater(REQUEST_DEADLINE, self._refuse, b"408 Request Timeout")

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > MAX_BODY:
            self._refuse(b"413 Content Too Large")

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse(b"413 Content Too Large")  # chunked: no Content-Length said so
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._stop_deadline()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

    def _stop_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _refuse(self, status: bytes) -> None:
        """Answer before the request is complete, and close (RFC 9110 15.5.14, 15.5.9)."""
        self._stop_deadline()
        if self._refused:
            return
        self._refused = True
        transport = self.channel.transport
        if transport is not None:
            transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.channel.loseConnection()


class _AdminChannel(HTTPChannel):
    """Gives its place back to :class:`_AdminSite` when it closes."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        cast(_AdminSite, cast(Any, self).site).open -= 1
        super().connectionLost(reason)


class _AdminSite(Site):
    """The admin API's HTTP factory: bounded requests (:class:`_AdminRequest`),
    an idle timeout, at most :data:`MAX_CONNECTIONS` at a time, and no form
    parsing (twisted.web would parse a multipart/form-data body into memory
    before any resource, the token check included, sees the request)."""

    requestFactory = _AdminRequest
    protocol = _AdminChannel  # type: ignore[assignment]
    displayTracebacks = False
    noisy = False

    def __init__(self, resource: IResource, reactor: Any) -> None:
        super().__init__(resource, timeout=IDLE_TIMEOUT, reactor=reactor, parsePOSTFormSubmission=False)
        self.open = 0

    def buildProtocol(self, addr: Any) -> Any:
        if self.open >= MAX_CONNECTIONS:
            return None  # the reactor closes the connection
        self.open += 1
        return super().buildProtocol(addr)


class AdminService(Service):
    """Listens for the admin API on ``[admin] host:port`` (plain HTTP: keep
    it on loopback or a management network); logs the address it got.  A
    port it cannot bind is logged, and the proxy runs on without the API.

    With *tls* (``tls()`` gives the ServerTLSContext, loaded at start) it
    also listens on ``host:tls_port`` over HTTPS, serving what
    *tls_resource* makes (client certificates as credentials)."""

    log = Logger()
    name = "admin-api"

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        resource: Callable[[], IResource],
        *,
        tls: Callable[[], Any] | None = None,
        tls_port: int = 0,
        tls_resource: Callable[[], IResource] | None = None,
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.resource = resource
        self.listening: Any = None
        self.tls = tls
        self.tls_port = tls_port
        self.tls_resource = tls_resource
        self.tls_listening: Any = None

    def startService(self) -> None:
        super().startService()
        if self.listening is None:
            self.listening = listen_http(self.reactor, self.host, self.port, self.site, "admin API", "/v1/")
        if self.tls_listening is None and self.tls is not None and self.tls_resource is not None:
            make = self.tls_resource
            self.tls_listening = listen_http(
                self.reactor,
                self.host,
                self.tls_port,
                lambda: _AdminSite(make(), self.reactor),
                "admin API",
                "/v1/",
                tls=self.tls(),
            )

    def site(self) -> Site:
        """The HTTP factory serving the API (tests drive it over a StringTransport)."""
        return _AdminSite(self.resource(), self.reactor)

    def stopService(self) -> Any:
        super().stopService()
        stopping = []
        for name in ("listening", "tls_listening"):
            listening = getattr(self, name)
            setattr(self, name, None)
            if listening is not None:
                stopping.append(defer.maybeDeferred(listening.stopListening))
        return defer.DeferredList(stopping) if stopping else None
