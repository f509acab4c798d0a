"""The LDAP credential backend: SIP digest secrets (HA1) and roles from a directory.

A SIP proxy never sees a password (RFC 3261 22.4: the client proves it knows
``HA1 = H(username ":" realm ":" password)``), so a directory cannot verify a
digest response by binding as the user, and Active Directory cannot verify SIP
digest at all.  The directory therefore *stores* the sipshield-managed HA1s,
one attribute value per algorithm and realm::

    description: SHA-256:<64 hex digits>:example.com
    description: SHA-512-256:<64 hex digits>:example.com

(``ALGORITHM:HA1:realm``; ``ha1_attribute`` picks the attribute, values of
any other shape are ignored so the attribute can keep other text).  Groups
give roles: every group whose ``member`` is the user's DN maps, by its
``cn``, through ``group_roles`` to sipshield roles.

:class:`LDAPChecker` talks to the directory with ldaptor (Twisted's own LDAP
client), entirely on the reactor: one connection, bound with the service
account, shared by concurrent requests and re-opened after a failure.  A
directory that is unreachable, refuses the bind or does not answer within
``timeout`` fails the login closed with :class:`BackendUnavailable`.

``ldaps://`` URLs speak TLS from the first byte (port 636 by default).  The
directory's certificate must chain to ``ca_file`` (a PEM bundle) or, without
one, to the platform's trust store, and must name the URL's host (a DNS name
or an IP address, RFC 6125); a certificate that does not verify fails the
login closed like an unreachable directory, and the bind password is never
sent.  StartTLS on ``ldap://`` is not supported.

Filters (RFC 4515) are parsed once, with a placeholder where ``{username}``
or ``{dn}`` stands; per request the peer's value is put into the parsed
filter as an assertion value, never into filter text.  That is what RFC 4515
3 escaping achieves, without a parse per request: ``*)(uid=*`` is looked up
as that literal string and cannot change the filter's structure.
"""

from __future__ import annotations

import copy
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldapclient, ldaperrors
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, error, ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sipshield.auth._checkers import _DECOY_PASSWORD, AvatarId, BackendUnavailable, UnknownUser, _base_algorithm
from sipshield.auth._credentials import ISIPDigestCredentials
from sipshield.auth._digest import compute_ha1
from sipshield.auth._users import check_username

__all__ = ["LDAPChecker", "LDAPSettings"]


@contextmanager
def _quiet_pyparsing() -> Iterator[None]:
    """Silence the DeprecationWarnings of ldaptor's filter grammar, which
    uses pyparsing's pre-3.0 method names (at import and at each parse);
    they say nothing about sipshield.  Only used at import and when a
    checker is built, never per request (catch_warnings is process-wide)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(ldaptor|pyparsing)(\.|$)")
        yield


with _quiet_pyparsing():
    from ldaptor import ldapfilter

_USERNAME = "{username}"
_DN = "{dn}"
# What a placeholder becomes while the template is parsed: a valid filter
# value that no real value contains.
_SENTINEL = "sipshield0placeholder0a41c3"

# RFC 4511 4.1.9 result codes the checker tells apart.
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4

# The HA1 lengths (hex digits) per stored algorithm (RFC 7616 3.4.2, RFC 8760).
_HA1_HEX_LENGTH = {"MD5": 32, "SHA-256": 64, "SHA-512-256": 64}
_HEX = re.compile(r"[0-9a-fA-F]+")

# url scheme -> default port (RFC 4516 2; ldaps: IANA).
_DEFAULT_PORTS = {"ldap": 389, "ldaps": 636}

# Failures that mean "the directory cannot answer now": fail closed.  A TLS
# handshake that fails (SSL.Error) or a certificate that does not name the
# host (VerificationError) is one of them.
_UNAVAILABLE = (
    SSL.Error,
    VerificationError,
    error.ConnectError,
    error.ConnectionLost,
    error.ConnectionDone,
    error.TimeoutError,
    defer.TimeoutError,
    defer.CancelledError,
    ldaperrors.LDAPException,
    OSError,
)


@dataclass(frozen=True)
class LDAPSettings:
    """Where the directory is and how users, secrets and roles are found in it.

    ``url``: ``ldap://host[:port]`` (port 389 by default) or
    ``ldaps://host[:port]`` (TLS, port 636 by default).  ``ca_file``: for
    ldaps, a PEM file of the CA certificates the directory's certificate must
    chain to (None: the platform's trust store); the path is used as given.
    ``base_dn``: where
    users are searched (whole subtree).  ``bind_dn``/``bind_password``: the
    service account the checker binds as (simple bind, RFC 4513 5.1.3); an
    empty ``bind_dn`` binds anonymously.  ``user_filter``: RFC 4515 filter
    with ``{username}`` for the digest username (substituted as a value, see
    the module docstring); at most one entry may match.  ``ha1_attribute``:
    the attribute holding ``ALGORITHM:HA1:realm`` values.
    ``group_base_dn``: where groups are searched (empty: no roles from
    groups); ``group_filter``: RFC 4515 filter with ``{dn}`` for the user's
    DN; ``group_roles``: group ``cn`` (case-insensitive) -> sipshield roles,
    groups not listed give no role.  ``timeout``: seconds for one whole
    authentication (connect, bind and searches included).

    Raises ValueError for an unusable value.
    """

    url: str
    base_dn: str
    bind_dn: str = ""
    bind_password: str = field(default="", repr=False)
    user_filter: str = "(&(objectClass=inetOrgPerson)(uid={username}))"
    ha1_attribute: str = "description"
    group_base_dn: str = ""
    group_filter: str = "(&(objectClass=groupOfNames)(member={dn}))"
    group_roles: Mapping[str, Sequence[str]] = field(default_factory=dict)
    timeout: float = 5.0
    ca_file: str | None = None

    def __post_init__(self) -> None:
        self.endpoint_address()
        if self.ca_file is not None:
            if not self.tls:
                raise ValueError("ldap: ca_file is only used with an ldaps:// url")
            _load_ca_file(self.ca_file)
        if not self.base_dn:
            raise ValueError("ldap: base_dn must not be empty")
        if self.bind_dn and not self.bind_password:
            # RFC 4513 5.1.2: a DN without a password is an unauthenticated bind.
            raise ValueError("ldap: bind_dn needs a bind_password (an empty one is an unauthenticated bind)")
        if _USERNAME not in self.user_filter:
            raise ValueError(f"ldap: user_filter must contain {_USERNAME}")
        if self.group_base_dn and _DN not in self.group_filter:
            raise ValueError(f"ldap: group_filter must contain {_DN}")
        if not self.ha1_attribute or not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", self.ha1_attribute):
            raise ValueError(f"ldap: {self.ha1_attribute!r} is not an attribute name")
        if isinstance(self.group_roles, str) or any(isinstance(roles, str) for roles in self.group_roles.values()):
            raise ValueError("ldap: group_roles maps a group cn to a list of roles")
        if not (isinstance(self.timeout, int | float) and 0 < self.timeout <= 300):
            raise ValueError("ldap: timeout must be a number of seconds in (0, 300]")

    @property
    def tls(self) -> bool:
        """Whether ``url`` is ``ldaps://`` (TLS from the first byte)."""
        return urlsplit(self.url).scheme.lower() == "ldaps"

    def endpoint_address(self) -> tuple[str, int]:
        """``(host, port)`` from ``url``; ValueError unless it is ``ldap[s]://host[:port]``."""
        parts = urlsplit(self.url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(f"ldap: url must be ldap://host[:port] or ldaps://host[:port], not {self.url!r}")
        try:
            port = parts.port or _DEFAULT_PORTS[scheme]
        except ValueError:
            raise ValueError(f"ldap: bad port in url {self.url!r}") from None
        return parts.hostname, port


def _load_ca_file(path: str) -> list[ssl.Certificate]:
    """The CA certificates in the PEM file *path*; ValueError if unreadable or without any."""
    if not isinstance(path, str) or not path:
        raise ValueError("ldap: ca_file must be the path of a PEM file")
    if not os.path.isfile(path):
        raise ValueError(f"ldap: ca_file {path!r} does not exist or is not a file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"ldap: cannot read ca_file {path!r}: {e.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"ldap: ca_file {path!r} holds no PEM certificate") from None
    return [ssl.Certificate.loadPEM(cert.public_bytes(Encoding.PEM)) for cert in certs]


class _FilterTemplate:
    """An RFC 4515 filter parsed once, with a placeholder for one value."""

    def __init__(self, text: str, placeholder: str) -> None:
        try:
            with _quiet_pyparsing():
                self._parsed = ldapfilter.parseFilter(text.replace(placeholder, _SENTINEL))
        except ldapfilter.InvalidLDAPFilter as e:
            raise ValueError(f"ldap: {text!r} is not an LDAP filter (RFC 4515): {e}") from None
        rendered = self.render("")
        if _SENTINEL.encode() in rendered.toWire():
            raise ValueError(f"ldap: {placeholder} may only stand in a value of {text!r}, not an attribute name")

    def render(self, value: str) -> Any:
        """A new filter with the placeholder replaced by *value* as a literal value."""
        tree = copy.deepcopy(self._parsed)
        _substitute(tree, value)
        return tree


def _substitute(node: Any, value: str) -> None:
    """Put *value* where the sentinel is, in the value leaves of a filter tree."""
    if isinstance(node, pureldap.LDAPFilter_and | pureldap.LDAPFilter_or):
        for child in node:
            _substitute(child, value)
    elif isinstance(node, pureldap.LDAPFilter_not):
        _substitute(node.value, value)
    elif isinstance(node, pureldap.LDAPFilter_substrings):
        for part in node.substrings:
            part.value = part.value.replace(_SENTINEL, value)
    elif isinstance(node, pureldap.LDAPAttributeValueAssertion):
        node.assertionValue.value = node.assertionValue.value.replace(_SENTINEL, value)
    elif isinstance(node, pureldap.LDAPFilter_extensibleMatch) and node.matchValue is not None:
        node.matchValue.value = node.matchValue.value.replace(_SENTINEL, value)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _stored_ha1(values: Sequence[str], algorithm: str, realm: str) -> str | None:
    """The HA1 among ``ALGORITHM:HA1:realm`` values for *algorithm* and *realm*, else None."""
    wanted_length = _HA1_HEX_LENGTH.get(algorithm)
    for value in values:
        stored_algorithm, _, rest = value.partition(":")
        ha1, _, stored_realm = rest.partition(":")
        if (
            stored_algorithm.upper() == algorithm.upper()
            and stored_realm.lower() == realm.lower()
            and len(ha1) == wanted_length
            and _HEX.fullmatch(ha1)
        ):
            return ha1.lower()
    return None


class _DirectoryError(Exception):
    """The directory answered with an error result (RFC 4511 4.1.9)."""


@implementer(ICredentialsChecker)
class LDAPChecker:
    """Digest credentials against HA1s stored in an LDAP directory.

    ``requestAvatarId`` fires with an :class:`AvatarId` (``user@realm``,
    ``.roles`` from the user's groups) or fails with :class:`UnknownUser` (no
    such user, or no HA1 for the algorithm and realm: the chain asks the next
    backend), :class:`UnauthorizedLogin` (wrong password, or several entries
    match the user filter) or :class:`BackendUnavailable` (directory down,
    bind refused, error result, timeout).  ``reactor`` runs everything; call
    :meth:`close` when the service stops.
    """

    credentialInterfaces = (ISIPDigestCredentials,)
    log = Logger()

    def __init__(self, settings: LDAPSettings, reactor: Any) -> None:
        self.settings = settings
        self.reactor = reactor
        self._user_filter = _FilterTemplate(settings.user_filter, _USERNAME)
        self._group_filter = _FilterTemplate(settings.group_filter, _DN) if settings.group_base_dn else None
        self._group_roles = {cn.lower(): tuple(roles) for cn, roles in settings.group_roles.items()}
        self._host, self._port = settings.endpoint_address()
        self._tls_options = self._client_tls_options() if settings.tls else None
        self._client: Any = None
        self._waiting: list[defer.Deferred[Any]] = []

    # -- ICredentialsChecker --------------------------------------------------------------

    def requestAvatarId(self, credentials: Any) -> Any:
        """Check *credentials* (ISIPDigestCredentials) within ``settings.timeout``: a
        Deferred that fires with an :class:`AvatarId` (twisted.cred types avatar ids as bytes)."""
        d = defer.Deferred.fromCoroutine(self._authenticate(credentials))
        d.addTimeout(self.settings.timeout, self.reactor)
        d.addErrback(self._timed_out)
        return d

    def close(self) -> None:
        """Drop the directory connection (a later request opens a new one)."""
        self._drop()

    # -- the lookup -----------------------------------------------------------------------

    async def _authenticate(self, credentials: Any) -> AvatarId:
        algorithm = _base_algorithm(credentials.algorithm)
        username, realm = credentials.username, credentials.realm
        found: tuple[str, str] | None = None
        ambiguous = False
        if _valid_username(username):
            entries, code = await self._search(self.settings.base_dn, self._user_filter.render(username), [self.settings.ha1_attribute], 2)
            ambiguous = code == _SIZE_LIMIT_EXCEEDED or len(entries) > 1
            if len(entries) == 1:
                dn, attributes = entries[0]
                ha1 = _stored_ha1(attributes.get(self.settings.ha1_attribute.lower(), []), algorithm, realm)
                found = None if ha1 is None else (dn, ha1)
        if found is None:
            # An unknown user costs what a wrong password costs: one HA1 and one verify.
            credentials.checkHash(compute_ha1(algorithm, username, realm, _DECOY_PASSWORD))
            if ambiguous:
                self.log.warn("ldap: several entries match user {username!r}; refusing the login", username=username)
                raise UnauthorizedLogin()
            raise UnknownUser()
        dn, ha1 = found
        if not credentials.checkHash(ha1):
            raise UnauthorizedLogin()
        avatar = AvatarId(f"{username}@{realm}")
        avatar.roles = await self._roles(dn)
        return avatar

    async def _roles(self, dn: str) -> tuple[str, ...]:
        if self._group_filter is None:
            return ()
        groups, _ = await self._search(self.settings.group_base_dn, self._group_filter.render(dn), ["cn"], 0)
        roles: set[str] = set()
        for _group_dn, attributes in groups:
            for cn in attributes.get("cn", []):
                roles.update(self._group_roles.get(cn.lower(), ()))
        return tuple(sorted(roles))

    async def _search(self, base: str, filter_object: Any, attributes: list[str], size_limit: int) -> tuple[list[tuple[str, dict[str, list[str]]]], int]:
        """Entries ``(dn, {attribute (lower case): values})`` and the result code.

        A size limit exceeded is a result (the caller decides); any other
        error, and every connection failure, raises BackendUnavailable.
        """
        try:
            client = await self._connected()
            entries, code, message = await self._send_search(client, base, filter_object, attributes, size_limit)
        except _UNAVAILABLE as e:
            self._drop()
            raise BackendUnavailable(f"LDAP directory {self.settings.url}: {_describe(e)}") from None
        if code not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
            # noSuchObject (a wrong base DN), insufficientAccessRights, ...: fail closed.
            raise BackendUnavailable(f"LDAP directory {self.settings.url}: search under {base!r} failed with result {code} {message}".rstrip())
        return entries, code

    def _send_search(self, client: Any, base: str, filter_object: Any, attributes: list[str], size_limit: int) -> defer.Deferred[Any]:
        entries: list[tuple[str, dict[str, list[str]]]] = []
        done: defer.Deferred[Any] = defer.Deferred()

        def on_response(response: Any) -> bool:
            # Called by ldaptor for each response; True ends the operation.
            if isinstance(response, pureldap.LDAPSearchResultEntry):
                values = {_text(name).lower(): [_text(v) for v in vals] for name, vals in response.attributes}
                entries.append((_text(response.objectName), values))
                return False
            if isinstance(response, pureldap.LDAPSearchResultReference):
                return False
            if isinstance(response, pureldap.LDAPSearchResultDone):
                done.callback((entries, response.resultCode, _text(response.errorMessage or "")))
            else:
                done.errback(ldaperrors.LDAPProtocolError(f"unexpected search response {type(response).__name__}"))
            return True

        request = pureldap.LDAPSearchRequest(
            baseObject=base,
            scope=pureldap.LDAP_SCOPE_wholeSubtree,
            derefAliases=pureldap.LDAP_DEREF_neverDerefAliases,
            sizeLimit=size_limit,
            # RFC 4511 4.5.1.5: the server gives up too (whole seconds).
            timeLimit=math.ceil(self.settings.timeout),
            typesOnly=0,
            filter=filter_object,
            attributes=attributes,
        )
        sent = client.send_multiResponse(request, on_response)
        # With a handler this Deferred only fires on failure (connection lost).
        sent.addErrback(lambda failure: None if done.called else done.errback(failure))
        return done

    # -- the connection -------------------------------------------------------------------

    def _client_tls_options(self) -> Any:
        """TLS client options that verify the chain (``ca_file`` or the platform
        trust store) and that the certificate names ``self._host`` (DNS or IP)."""
        if self.settings.ca_file is not None:
            trust_root: Any = ssl.trustRootFromCertificates(_load_ca_file(self.settings.ca_file))
        else:
            trust_root = ssl.platformTrust()
        return ssl.optionsForClientTLS(self._host, trustRoot=trust_root)

    def _connected(self) -> defer.Deferred[Any]:
        """The bound client, opening and binding a connection if there is none.

        Requests arriving while a connection is being opened wait for that
        one rather than opening their own.
        """
        client = self._client
        if client is not None and client.connected:
            return defer.succeed(client)
        waiter: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append(waiter)
        if len(self._waiting) == 1:
            attempt = defer.Deferred.fromCoroutine(self._connect())
            attempt.addTimeout(self.settings.timeout, self.reactor)
            attempt.addBoth(self._connect_done)
        return waiter

    async def _connect(self) -> Any:
        connect_timeout = max(1, math.ceil(self.settings.timeout))
        endpoint: Any
        # An address needs no resolution, and HostnameEndpoint would add its
        # 0.3 s happy-eyeballs delay to every refused connection.
        if isIPAddress(self._host):
            endpoint = TCP4ClientEndpoint(self.reactor, self._host, self._port, timeout=connect_timeout)
        elif isIPv6Address(self._host):
            endpoint = TCP6ClientEndpoint(self.reactor, self._host, self._port, timeout=connect_timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, self._host, self._port, timeout=connect_timeout)
        if self._tls_options is not None:
            # TLS from the first byte; the bind waits for a verified handshake.
            endpoint = wrapClientTLS(self._tls_options, endpoint)
        client = await connectProtocol(endpoint, ldapclient.LDAPClient())
        try:
            response = await client.send(pureldap.LDAPBindRequest(dn=self.settings.bind_dn, auth=self.settings.bind_password))
            if response.resultCode != _SUCCESS:
                # Never the password; the DN and the server's reason are enough.
                raise _DirectoryError(f"bind as {self.settings.bind_dn!r} refused (result {response.resultCode} {_text(response.errorMessage or '')})".rstrip())
        except BaseException:
            client.transport.abortConnection()
            raise
        return client

    def _connect_done(self, result: Any) -> None:
        waiting, self._waiting = self._waiting, []
        if isinstance(result, Failure):
            if result.check(_DirectoryError):
                result = Failure(BackendUnavailable(f"LDAP directory {self.settings.url}: {result.getErrorMessage()}"))
            for waiter in waiting:
                waiter.errback(result)
            return
        self._client = result
        for waiter in waiting:
            waiter.callback(result)

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.connected:
            client.transport.abortConnection()

    def _timed_out(self, failure: Failure) -> Failure:
        if failure.check(defer.TimeoutError, defer.CancelledError):
            self._drop()
            return Failure(BackendUnavailable(f"LDAP directory {self.settings.url}: no answer within {self.settings.timeout}s"))
        return failure


def _valid_username(username: Any) -> bool:
    """A digest username that can name a user (RFC 3261 25.1 user token)."""
    try:
        check_username(username)
    except ValueError:
        return False
    return True


def _describe(e: BaseException) -> str:
    if isinstance(e, defer.CancelledError | defer.TimeoutError | error.TimeoutError):
        return "no answer in time"
    if isinstance(e, VerificationError):
        return f"TLS certificate does not match the host: {e}"
    if isinstance(e, SSL.Error):
        reasons = [str(part[-1]) for part in e.args[0] if isinstance(part, tuple) and part] if e.args and isinstance(e.args[0], list) else []
        return f"TLS handshake failed: {', '.join(reasons) or e}"
    return str(e) or type(e).__name__
