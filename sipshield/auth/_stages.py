"""The authentication and authorization pipeline stages.

``auth`` challenges and verifies SIP digest (RFC 3261 22, RFC 7616,
RFC 8760) through a twisted.cred Portal; ``rbac`` enforces what the
authenticated identity's roles allow (register, call, call:external).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sipshield.auth._bearer import InvalidToken, parse_bearer
from sipshield.auth._bearer import challenge_value as bearer_challenge
from sipshield.auth._checkers import BackendUnavailable, Identity, IIdentity
from sipshield.auth._credentials import SIPDigestCredentials
from sipshield.auth._digest import DigestResponse, challenge_values, credentials_refusal
from sipshield.auth._downgrade import DowngradeLock, DowngradeRefused
from sipshield.auth._unanswered import UnansweredChallenges
from sipshield.config import AlgorithmProfile, TrustedSource
from sipshield.events import AUTH_DOWNGRADE, AUTH_FAILURE, BEARER_REFUSED, SecurityEvent, SecurityEvents
from sipshield.interfaces import IExplainable, IExplainableAdmission, IPipelineStage
from sipshield.message import URI, ParseError, Request, ip_version, parse_auth
from sipshield.proxy._explain import Explanation
from sipshield.routing import CONTINUE, Decision, RequestContext

if TYPE_CHECKING:
    from sipshield.state import SharedUse

__all__ = ["DigestAuthStage", "RBACStage", "DomainMap", "SourceNetworks"]

IsLocal = Callable[[str, "int | None"], bool]
_NO_CHALLENGE = frozenset(("ACK", "CANCEL"))
_T = TypeVar("_T")


class SourceNetworks(Generic[_T]):
    """Networks (IPv4 and IPv6 CIDRs), each with a value, and the values of
    those that hold a source address, in the order given: what trusted
    sources and algorithm profiles are matched with.

    Asked for every request, so an IPv4 source (the usual case) is matched
    with integer masks, without building ipaddress objects.  An IPv4-mapped
    IPv6 source (``::ffff:10.20.0.5``, from a dual-stack listener on ``::``)
    is the IPv4 host it maps and matches IPv4 networks.
    """

    def __init__(self, entries: Iterable[tuple[str, _T]]) -> None:
        self.entries = [(ipaddress.ip_network(network, strict=False), value) for network, value in entries]
        self._v4 = [(int(net.network_address), int(net.netmask), value) for net, value in self.entries if net.version == 4]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def matching(self, host: str) -> Iterator[_T]:
        """The value of every network holding *host*, in order (none for a
        host that is not an IP address)."""
        if ip_version(host) == 4:
            address = int.from_bytes(socket.inet_aton(host), "big")
            return (value for network, mask, value in self._v4 if address & mask == network)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return iter(())
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return self.matching(str(ip.ipv4_mapped))
        return (value for net, value in self.entries if ip in net)


class _Offer(NamedTuple):
    """The algorithms challenged to a source, in order, those accepted from
    it (their -sess forms too), and the profile's label for the logs."""

    algorithms: tuple[str, ...]
    accepted: frozenset[str]
    label: str

    @classmethod
    def of(cls, algorithms: Sequence[str], label: str) -> _Offer:
        return cls(tuple(algorithms), frozenset(algorithms) | frozenset(a + "-sess" for a in algorithms), label)


class _NotOffered(UnauthorizedLogin):
    """A digest answer with an algorithm its source was not challenged with."""


class DomainMap:
    """Which domain (digest realm) a host stands for: one of ours as itself,
    one of the proxy's own addresses as the default domain, others as given."""

    def __init__(self, domains: Sequence[str], is_local: IsLocal) -> None:
        self.domains = frozenset(domains)
        self.default = domains[0] if domains else "localhost"
        self.is_local = is_local

    def domain_of(self, uri: URI) -> str | None:
        if not uri.is_sip or not uri.host:
            return None
        host = uri.host.lower()
        if host in self.domains:
            return host
        if self.is_local(host, None):
            return self.default
        return host

    def options_to_proxy(self, request: Request) -> bool:
        """An OPTIONS addressed to the proxy itself (no user part, one of
        our hosts), answered by the proxy (RFC 3261 11.2), relayed nowhere."""
        uri = request.uri
        return request.method == "OPTIONS" and uri.is_sip and not uri.user and self.is_local(uri.host or "", uri.port)

    def same_user(self, uri: URI, username: str, domain: str) -> bool:
        """Does ``uri`` (a From or a REGISTER's To) name the authenticated
        ``username`` in ``domain``?

        The URI side is compared in its canonical form (``URI.canonical_user``,
        %HH unescaped, RFC 3261 19.1.4), the form the registrar keys AORs by,
        so ``sip:%61lice@example.com`` is alice's and nobody else's.  The
        digest ``username`` is taken as sent: it is a quoted string (RFC 7616
        3.4), not a URI user, and the HA1 was computed over exactly those
        characters; unescaping it too would let a stored user ``%61lice``
        pass as ``alice``.
        """
        return uri.is_sip and uri.canonical_user == username and self.domain_of(uri) == domain


class _BearerAnswer(NamedTuple):
    """A Bearer token offered for ``realm`` in ``header`` (RFC 8898), to validate."""

    token: str
    realm: str
    header: str


@implementer(IPipelineStage, IExplainable, IExplainableAdmission)
class DigestAuthStage:
    """Challenge out-of-dialog requests and verify the answer.

    REGISTER gets 401/WWW-Authenticate, other requests 407/Proxy-Authenticate
    (RFC 3261 22.1, 22.3); one challenge per algorithm, in the configured order
    (RFC 8760).  Unknown users and wrong passwords get the same answer.  A
    backend that is down gives 503 with Retry-After (fail closed).  Requests
    from ``trusted`` networks are not challenged and act with ``trusted_role``:
    over TCP and TLS only, and over UDP too for an entry that says ``udp``
    (a plain string entry is a TCP/TLS one).

    The algorithms challenged, and the only ones accepted, depend on the
    source address alone (never on the user, whose existence must not
    show): those of the first of ``profiles`` whose networks hold it, else
    ``algorithms``.  An answer with an algorithm its source was not offered
    is refused as a wrong password is (no downgrade to MD5 from a network
    that is offered SHA-256 only).
    In-dialog requests (To tag) that come through our Record-Route are not
    challenged (the dialog was); a To tag alone does not exempt a request.
    """

    name = "auth"
    log = Logger()

    def __init__(
        self, portal: Any, nonces: Callable[[], Any], domains: DomainMap, algorithms: Sequence[str],
        trusted: Sequence[TrustedSource | str] = (), trusted_role: str | None = None, retry_after: int = 30,
        trunks: Any = None, bearer: Any = None, in_dialog: Callable[[Request, Any], bool] | None = None,
        events: SecurityEvents | None = None, downgrade: DowngradeLock | None = None, unanswered: UnansweredChallenges | None = None,
        profiles: Sequence[AlgorithmProfile] = (),
    ) -> None:
        self.events = events
        self.downgrade = downgrade
        self.unanswered = unanswered
        self.logins = 0
        """Credentials verified (digest or bearer), read by the metrics."""
        self.in_dialog = in_dialog
        self.trunks = trunks
        self.bearer = bearer
        self.portal = portal
        self.nonces = nonces
        self.domains = domains
        self.algorithms = tuple(algorithms)
        self._default_offer = _Offer.of(self.algorithms, "default")
        self.profiles = tuple(profiles)
        self._offers = SourceNetworks(
            (network, _Offer.of(profile.algorithms, f"profile {profile.label}")) for profile in self.profiles for network in profile.networks
        )
        entries = [TrustedSource(t) if isinstance(t, str) else t for t in trusted]
        self.trusted = SourceNetworks((t.network, t.udp) for t in entries)
        self.trusted_role = trusted_role
        self._trusted_roles = frozenset((trusted_role,)) if trusted_role else frozenset()
        self.retry_after = str(retry_after)
        self._admitted: tuple[Request, _BearerAnswer | tuple[DigestResponse, str, str]] | None = None

    def _is_trusted(self, host: str, transport: str) -> bool:
        if not self.trusted:
            return False
        # A UDP source address is one forged datagram away: only where asked.
        connected = transport in ("TCP", "TLS")
        return any(connected or udp for udp in self.trusted.matching(host))

    def _offer(self, host: str) -> _Offer:
        """What *host* is challenged with and may answer with: its address
        alone decides (the first profile holding it, else the default)."""
        if not self._offers:
            return self._default_offer
        return next(self._offers.matching(host), self._default_offer)

    def process(self, context: RequestContext) -> Decision | defer.Deferred[Decision]:
        screened: Decision | _BearerAnswer | tuple[DigestResponse, str, str]
        admitted = self._admitted
        if admitted is not None and admitted[0] is context.request:
            # Admission already parsed these credentials and checked the nonce
            # a moment ago, in the same reactor turn (no side effects to redo).
            self._admitted = None
            screened = admitted[1]
        else:
            screened = self._screen(context)
        if isinstance(screened, Decision):
            return screened
        if isinstance(screened, _BearerAnswer):
            return self._check_bearer(screened.token, context, screened.realm, screened.header)
        response, realm, header = screened
        if not self.nonces().begin(response.nonce):
            # [auth] max_nonce_failures guesses failed (or are being verified) with this nonce.
            return self._challenge(context.request, context, realm, stale=False)
        d: defer.Deferred[Any]
        offer = self._offer(context.source[0])
        if response.algorithm not in offer.accepted:
            # Not offered to this source (MD5 from a SHA-256 network): the
            # answer a wrong password gets, and the nonce's failure count.
            d = defer.fail(_NotOffered(f"{response.algorithm} not offered to this source ({offer.label})"))
        else:
            credentials = SIPDigestCredentials(response, context.request.method, context.request.body)
            d = self._login(credentials, response)
        d.addCallbacks(self._logged_in, self._refused, callbackArgs=(context, response, realm, header), errbackArgs=(context, realm, response))
        return d

    def _login(self, credentials: SIPDigestCredentials, response: DigestResponse) -> defer.Deferred[Any]:
        """The Portal login, under the MD5 downgrade lock when there is one."""
        d: defer.Deferred[Any] = self.portal.login(credentials, None, IIdentity)
        if self.downgrade is None:
            return d
        return self.downgrade.guard(d, response.username, response.realm, response.algorithm)

    def admission(self, request: Request, flow: Any) -> Decision | None:
        """The challenge decision, synchronously and before any transaction
        exists: a request that carries no credentials for our realm, or whose
        nonce this proxy did not issue to that source address (a source that
        has not proven its return path), gets a challenge to send
        statelessly (RFC 3261 26.3.2.4: no retransmission of 401/407).
        None admits the request to a transaction and to ``process``.

        An in-dialog request whose route set carries our token (``in_dialog``,
        the proxy core's check) is left to ``process``; one with a Route we
        cannot verify is screened like any out-of-dialog request, so it is
        challenged statelessly too (no transaction, no 100 Trying).
        """
        if request.to.tag is not None and request.method != "REGISTER" and ("Route" in request.headers or request.uri.lr):
            if self.in_dialog is None or self.in_dialog(request, flow):
                if self._is_trusted(flow.remote[0], flow.transport_name):
                    flow.authenticated = True  # a trusted edge: the core's per-source cap does not apply
                return None
        screened = self._screen(RequestContext(request, flow))
        if isinstance(screened, Decision):
            return screened if screened.kind == "reply" else None
        # Credentials to verify: keep the parsed answer for ``process``, which
        # the transaction layer calls next for this very request object.
        self._admitted = (request, screened)
        return None

    def _screen(self, context: RequestContext) -> Decision | _BearerAnswer | tuple[DigestResponse, str, str]:
        """Everything decided without the credential backends: CONTINUE (no
        challenge here), a challenge Decision, a bearer token to check, or
        the digest answer to verify with its realm and header."""
        if self._unchallenged(context) is not None:
            return CONTINUE
        request = context.request
        method = request.method
        realm = self._realm(request)
        header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
        refusal = credentials_refusal(request.headers.get_all(header))
        if refusal is not None:
            return Decision.reply(400, refusal)  # before anything parses them (CPU bound)
        if self.bearer is not None:
            token = self._bearer_token(request, header)
            if token is not None:
                return _BearerAnswer(token, realm, header)
        response = self._credentials(request, header, realm)
        if response is None:
            return self._challenge(request, context, realm, stale=False)
        state = self.nonces().check(response.nonce, realm, context.source[0])
        if state != "valid":
            return self._challenge(request, context, realm, stale=state == "stale")
        if not _same_uri(response.uri, request):
            return self._challenge(request, context, realm, stale=False)
        return response, realm, header

    def _unchallenged(self, context: RequestContext) -> str | None:
        """Why the request needs no credentials (and, for a trusted source or
        a trunk, what it acts as: set on *context*), or None."""
        request = context.request
        if request.method in _NO_CHALLENGE:
            return "ACK and CANCEL are never challenged"
        if self._is_trusted(context.source[0], context.flow.transport_name):
            context.trusted = True
            context.flow.authenticated = True
            context.roles = self._trusted_roles  # one set for every trusted request
            return "a trusted source ([auth] trusted_sources): not challenged"
        if self.trunks is not None and context.flow.transport_name == "TLS":
            # RFC 5922: a client certificate that chained to [tls] client_ca
            # (checked in the handshake) and names a configured trunk.
            account = self.trunks.match(context.peer_certificate)
            if account is not None:
                self._authenticated(context, account.identity())
                context.trunk = account.name
                return "a trunk's client certificate ([[auth.tls.trunks]])"
        if _in_our_dialog(context):
            return "in a dialog on our verified route set"  # the dialog was authorized
        if self.domains.options_to_proxy(request):
            return "an OPTIONS to the proxy itself needs no credentials"
        return None

    def _realm(self, request: Request) -> str:
        """The realm a request is challenged in: its From's domain (a REGISTER's To) when it is ours, else the default."""
        realm = self.domains.domain_of(request.to.uri if request.method == "REGISTER" else request.from_.uri) or self.domains.default
        if realm not in self.domains.domains and realm != self.domains.default:
            realm = self.domains.default
        return realm

    # -- sipshield explain: the same rules, read only (no nonce issued, nothing noted) ---------

    def explain_admission(self, context: Any) -> Explanation:
        scratch = RequestContext(context.request, context.flow, route_set=context.route_set)  # as admission's own throwaway context
        why = self._unchallenged(scratch)
        if why is not None:
            return Explanation.passes(self.name, why)
        if context.assumed_user is not None:
            return Explanation.passes(self.name, "credentials assumed (verified in the pipeline); no challenge")
        return self._explain_challenge(context)

    def explain(self, context: Any) -> Explanation:
        why = self._unchallenged(context)
        if why is not None:
            if context.trusted:
                why += f", acting with role {self.trusted_role}" if self.trusted_role else ", with no role ([auth] trusted_role unset)"
            elif context.trunk is not None:
                why += f": trunk {context.trunk}, roles {_listed(context.roles)}"
            return Explanation.passes(self.name, why)
        user = context.assumed_user
        if user is None:
            return self._explain_challenge(context)
        self._authenticated(context, Identity(user[0], user[1], context.assumed_roles))
        note = f" ({context.assumed_note})" if context.assumed_note else ""
        return Explanation.passes(self.name, f"user {user[0]}@{user[1]} authenticated (assumed), roles {_listed(context.roles)}{note}")

    def _explain_challenge(self, context: Any) -> Explanation:
        request = context.request
        realm = self._realm(request)
        offer = self._offer(context.source[0])
        status, phrase = _challenge_status(request.method)
        bearer = self.bearer is not None and (context.flow.transport_name == "TLS" or not self.bearer.require_tls)
        why = f"no credentials: challenged in realm {realm} with {', '.join(offer.algorithms)} ({offer.label})" + (" and Bearer" if bearer else "")
        return Explanation.of(self.name, Decision.reply(status, phrase), why)

    def _credentials(self, request: Request, header: str, realm: str) -> DigestResponse | None:
        for value in request.headers.get_all(header):
            try:
                auth = parse_auth(value)
            except ParseError:
                continue
            if auth.scheme.lower() != "digest" or auth.params.get("realm") != realm:
                continue
            try:
                return DigestResponse.parse(value)
            except ValueError:
                return None
        return None

    def _challenge(self, request: Request, context: RequestContext, realm: str, stale: bool, bearer_error: str | None = None) -> Decision:
        name = "WWW-Authenticate" if request.method == "REGISTER" else "Proxy-Authenticate"
        nonce = self.nonces().issue(realm, context.source[0])
        algorithms = self._offer(context.source[0]).algorithms
        values = challenge_values(realm, nonce, algorithms, stale=stale)
        self._note_challenge(context, realm, algorithms)
        if self.bearer is not None and (context.flow.transport_name == "TLS" or not self.bearer.require_tls):
            # RFC 8898 2.3: offer Bearer beside Digest.
            values.append(bearer_challenge(realm, self.bearer.authz_server, bearer_error))
        return Decision.reply(*_challenge_status(request.method), [(name, v) for v in values])

    def _note_challenge(self, context: RequestContext, realm: str, algorithms: Sequence[str]) -> None:
        if self.unanswered is not None:
            self.unanswered.challenged(context.source[0], _challenged_user(context.request), context.flow.transport_name, realm, algorithms)

    def _note_answer(self, context: RequestContext, authenticated: bool) -> None:
        if authenticated:
            self.logins += 1
        if self.unanswered is not None:
            if authenticated:
                self.unanswered.answered(context.source[0], _challenged_user(context.request))
            else:
                self.unanswered.refused(context.source[0], _challenged_user(context.request))

    def _bearer_token(self, request: Request, header: str) -> str | None:
        for value in request.headers.get_all(header):
            token = parse_bearer(value)
            if token is not None:
                return token
        return None

    def _check_bearer(self, token: str, context: RequestContext, realm: str, header: str) -> Decision:
        """RFC 8898: a Bearer access token instead of Digest; only over TLS
        unless configured otherwise (RFC 6750 5.3)."""
        if self.bearer.require_tls and context.flow.transport_name != "TLS":
            return Decision.reply(403, "Forbidden: bearer tokens only over TLS")
        try:
            identity = self.bearer.validator.validate(token)
        except InvalidToken as e:
            # A guess like a wrong password: over TCP/TLS (the source proven by
            # the handshake) an auth-failure, which bans count; over UDP (bearer
            # allowed there by config) the source may be forged: reported, not counted.
            if self.events is not None:
                flow = context.flow
                kind = AUTH_FAILURE if flow.reliable else BEARER_REFUSED
                self.events.emit(SecurityEvent(kind, context.source[0], flow.transport_name, None, f"bearer token refused: {e.reason}"))
            return self._challenge(context.request, context, realm, stale=False, bearer_error="invalid_token")
        self._authenticated(context, identity)
        self._note_answer(context, authenticated=True)
        _remove_bearer(context.request, header)  # the token must not travel downstream
        return CONTINUE

    @staticmethod
    def _authenticated(context: RequestContext, identity: Any) -> None:
        context.identity = identity.aor
        context.roles = identity.roles
        context.user = (identity.username, identity.domain)
        # Read by a stream transport choosing which connection to close when
        # its table is nearly full: one that carried an authenticated request stays.
        context.flow.authenticated = True

    def _logged_in(self, result: tuple[Any, Any, Any], context: RequestContext, response: DigestResponse, realm: str,
                   header: str) -> Decision | defer.Deferred[Decision]:
        _, identity, _ = result
        nonces = self.nonces()
        nonces.end(response.nonce, failed=False)
        if not nonces.use(response.nonce, response.nc):
            # A replayed (nonce, nc): make the client start over with a fresh nonce.
            return self._challenge(context.request, context, realm, stale=True)
        if nonces.shared is not None:
            # Several nodes: another may have accepted this (nonce, nc) already.
            shared = nonces.use_shared(response.nonce, response.nc)
            return shared.addCallback(self._shared_use, identity, context, realm, header)
        return self._accepted(identity, context, realm, header)

    def _shared_use(self, use: SharedUse, identity: Any, context: RequestContext, realm: str, header: str) -> Decision:
        if use == "fresh":
            return self._accepted(identity, context, realm, header)
        if use == "replayed":
            return self._challenge(context.request, context, realm, stale=True)
        # Redis does not answer: a replay on another node could not be refused (fail closed).
        return Decision.reply(503, "Authentication Backend Unavailable", [("Retry-After", self.retry_after)])

    def _accepted(self, identity: Any, context: RequestContext, realm: str, header: str) -> Decision:
        self._authenticated(context, identity)
        self._note_answer(context, authenticated=True)
        if header == "Proxy-Authorization":
            # RFC 3261 22.3: credentials for our realm stop here.
            _remove_realm(context.request, header, realm)
        return CONTINUE

    def _refused(self, failure: Failure, context: RequestContext, realm: str, response: DigestResponse) -> Decision | Failure:
        # Only a wrong answer is a guess; an outage or the stage deadline is not.
        self.nonces().end(response.nonce, failed=failure.check(UnauthorizedLogin) is not None)
        username = response.username
        if failure.check(defer.CancelledError):
            return failure  # the pipeline's stage_timeout: it answers and logs
        if failure.check(UnauthorizedLogin):
            # A wrong password or an unknown user: one event kind for both, as
            # on the wire.  A right MD5 answer under the downgrade lock is
            # answered as they are and is an auth-failure too (a ban that
            # counted only wrong guesses would tell a guesser which one was
            # right), then reported as what it is.
            self._note_answer(context, authenticated=False)
            if self.events is not None:
                for event in _refusal_events(failure, context, username):
                    self.events.emit(event)
            return self._challenge(context.request, context, realm, stale=False)
        if failure.check(BackendUnavailable):
            self.log.error("credential backend unavailable: {why}", why=failure.getErrorMessage())
            return Decision.reply(503, "Authentication Backend Unavailable", [("Retry-After", self.retry_after)])
        self.log.failure("authentication failed", failure)
        return Decision.reply(500, "Authentication Error")


def _challenge_status(method: str) -> tuple[int, str]:
    """RFC 3261 22.1, 22.3: a REGISTER is challenged by the registrar, anything else by the proxy."""
    return (401, "Unauthorized") if method == "REGISTER" else (407, "Proxy Authentication Required")


def _listed(roles: Iterable[str]) -> str:
    return ", ".join(sorted(roles)) or "none"


def _refusal_events(failure: Failure, context: RequestContext, username: str) -> list[SecurityEvent]:
    source, transport = context.source[0], context.flow.transport_name
    why = failure.getErrorMessage() if failure.check(_NotOffered) else "credentials refused"
    events = [SecurityEvent(AUTH_FAILURE, source, transport, username, why)]
    if failure.check(DowngradeRefused):
        reason = f"{failure.getErrorMessage()} (MD5 is locked for this user; reset: sipshield user unlock-md5)"
        events.append(SecurityEvent(AUTH_DOWNGRADE, source, transport, username, reason))
    return events


def _challenged_user(request: Request) -> str | None:
    """The user a challenge is for: the To user of a REGISTER, else the
    From user, unescaped (``URI.canonical_user``)."""
    return (request.to if request.method == "REGISTER" else request.from_).uri.canonical_user


def _in_our_dialog(context: RequestContext) -> bool:
    """A mid-dialog request (To tag) on a route set this proxy record-routed
    and can verify (the core checked the token): the dialog was authorized
    when it was set up.  A To tag alone proves nothing."""
    request = context.request
    return request.method != "REGISTER" and request.to.tag is not None and context.route_set


def _same_uri(digest_uri: str, request: Request) -> bool:
    """RFC 7616 3.4.6: the digest-uri must be the Request-URI."""
    if digest_uri == str(request.uri):
        return True
    try:
        return URI.parse(digest_uri) == request.uri
    except ParseError:
        return False


def _remove_bearer(request: Request, header: str) -> None:
    keep = [value for value in request.headers.get_all(header) if parse_bearer(value) is None]
    request.headers.remove(header)
    for value in keep:
        request.headers.add(header, value)


def _remove_realm(request: Request, header: str, realm: str) -> None:
    keep = []
    for value in request.headers.get_all(header):
        try:
            if parse_auth(value).params.get("realm") == realm:
                continue
        except ParseError:
            pass
        keep.append(value)
    request.headers.remove(header)
    for value in keep:
        request.headers.add(header, value)


@implementer(IPipelineStage, IExplainable)
class RBACStage:
    """Roles -> permissions (RFC-free policy, the design's RBAC).

    REGISTER needs ``register`` and may bind only the identity's own AOR.
    Every other request the proxy may relay out of dialog, whatever its
    method (INVITE, MESSAGE, SUBSCRIBE, OPTIONS to a user, REFER, PUBLISH,
    INFO, NOTIFY, UPDATE, unknown ones), needs ``call``, and
    ``call:external`` too when a route marked external would carry it; its
    From must be the identity (a trunk's need not: it carries other people's
    calls).  Exempt: an OPTIONS to the proxy itself (answered here, relayed
    nowhere), requests in a dialog on our verified route set, and ACK and
    CANCEL (hop-by-hop or part of the INVITE they follow).  A denial is a
    403 whose reason names what is missing.
    """

    name = "rbac"

    def __init__(self, roles: Mapping[str, Sequence[str]], domains: DomainMap, is_external: Callable[[Request], bool] = lambda r: False) -> None:
        self.roles = {role: frozenset(perms) for role, perms in roles.items()}
        self.domains = domains
        self.is_external = is_external

    def permissions(self, roles: frozenset[str]) -> frozenset[str]:
        perms: frozenset[str] = frozenset()
        for role in roles:
            perms |= self.roles.get(role, frozenset())
        return perms

    def process(self, context: RequestContext) -> Decision:
        return self._decide(context)[0]

    def _decide(self, context: RequestContext) -> tuple[Decision, tuple[str, ...], str]:
        """The decision, the permissions needed and why (constant strings: this
        is on every request): the one reading of the policy, for ``process``
        and ``explain``."""
        request = context.request
        method = request.method
        if method == "REGISTER":
            needed = _REGISTER
        elif method in _NO_CHALLENGE or _in_our_dialog(context) or self.domains.options_to_proxy(request):
            return CONTINUE, (), "exempt (ACK, CANCEL, in our dialog, or an OPTIONS to the proxy)"
        else:
            needed = _CALL_EXTERNAL if self.is_external(request) else _CALL
        perms = self.permissions(context.roles)
        for permission in needed:
            if permission not in perms:
                return Decision.reply(403, f"Forbidden: missing permission {permission}"), needed, "a permission is missing"
        user = context.user
        if user is None:
            if context.trusted:
                return CONTINUE, needed, "a trusted source"
            return _NOT_AUTHENTICATED, needed, "no authenticated user"
        username, domain = user
        if method == "REGISTER":
            if not self.domains.same_user(request.to.uri, username, domain):
                return _NOT_OWN_ADDRESS, needed, "To is not the authenticated user"
        elif context.trunk is None and not self.domains.same_user(request.from_.uri, username, domain):
            return _FROM_MISMATCH, needed, "From is not the authenticated user"
        return CONTINUE, needed, "granted"

    def explain(self, context: RequestContext) -> Explanation:
        decision, needed, why = self._decide(context)  # reads the request and the context only
        if not needed:
            return Explanation.of(self.name, decision, why)
        user = "" if context.user is None else f", user {context.user[0]}@{context.user[1]}"
        external = " (an external route would carry it)" if "call:external" in needed else ""
        granted = f"roles {_listed(context.roles)} grant {_listed(self.permissions(context.roles))}"
        return Explanation.of(self.name, decision, f"{why}: needs {' and '.join(needed)}{external}; {granted}{user}")


_REGISTER: tuple[str, ...] = ("register",)
_CALL: tuple[str, ...] = ("call",)
_CALL_EXTERNAL: tuple[str, ...] = ("call", "call:external")
_NOT_AUTHENTICATED = Decision.reply(403, "Forbidden: not authenticated")
_NOT_OWN_ADDRESS = Decision.reply(403, "Forbidden: may only register your own address")
_FROM_MISMATCH = Decision.reply(403, "Forbidden: From does not match the authenticated user")
