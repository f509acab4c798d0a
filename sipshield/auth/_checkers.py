"""twisted.cred wiring: credential checkers over the user stores, the chain
that stacks backends, and the realm that turns an avatar id into an identity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from zope.interface import Interface, implementer

from sipshield.auth._credentials import ISIPDigestCredentials
from sipshield.auth._digest import compute_ha1
from sipshield.auth._users import CredentialStoreError

__all__ = ["BackendUnavailable", "ChainedChecker", "IIdentity", "Identity", "SIPRealm", "StoreChecker", "UnknownUser", "make_portal"]

# An unknown user still costs one HA1 and one verify, so that timing does not
# tell an attacker which users exist.
_DECOY_PASSWORD = "sipshield-decoy"


class UnknownUser(UnauthorizedLogin):
    """No such user in this backend: the chain asks the next one."""


class BackendUnavailable(Exception):
    """A backend could not answer (database or directory down): fail closed, 503."""


class IIdentity(Interface):
    """The avatar interface: who the request comes from and what they may do."""


@implementer(IIdentity)
@dataclass(frozen=True)
class Identity:
    username: str
    domain: str
    roles: frozenset[str]

    @property
    def aor(self) -> str:
        """This identity's address-of-record key, in the canonical form of
        ``sipshield.state.aor_of`` (user unescaped, RFC 3261 10.3 step 5):
        equal to ``aor_of(uri)`` exactly when ``uri`` names this user."""
        return f"sip:{self.username}@{self.domain}"


class AvatarId(str):
    """``user@domain``, carrying the roles found with the secret (one lookup)."""

    roles: tuple[str, ...] = ()


def _base_algorithm(algorithm: str) -> str:
    return algorithm[:-5] if algorithm.endswith("-sess") else algorithm


_Found = tuple[str | None, tuple[str, ...] | None]


@implementer(ICredentialsChecker)
class StoreChecker:
    """Digest credentials against a UserStore or HtdigestUserStore, whose
    blocking calls run in ``threadpool`` (never on the reactor thread).

    With ``cache_seconds`` > 0 (``[auth] credential_cache``) what a lookup
    found, the HA1 and roles or "no such user", is kept that many seconds
    (from before the read; at most ``cache_size`` entries, the oldest
    dropped first) and a login within them is decided without the store: no
    thread hop, no query, no decryption.  Unknown users are kept as well, so
    that a quick answer does not tell which users exist (the decoy hash
    still runs for them).  The server never writes users (the CLI does, in
    another process): a password change, a disable, a removal or new roles
    take effect for a cached user once its entry is that old, not at once.
    A backend failure is not kept.
    """

    credentialInterfaces = (ISIPDigestCredentials,)

    def __init__(self, store: Any, reactor: Any, threadpool: Any, cache_seconds: float = 0.0, cache_size: int = 10000) -> None:
        self.store = store
        self.reactor = reactor
        self.threadpool = threadpool
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self._cache: dict[tuple[str, str, str], tuple[float, _Found]] = {}

    def _lookup(self, username: str, domain: str, algorithm: str) -> tuple[str | None, tuple[str, ...] | None]:
        try:
            secret = getattr(self.store, "secret", None)
            if secret is not None:  # the SQL store: both in one query
                found: tuple[str, tuple[str, ...]] | None = secret(username, domain, algorithm)
                return (None, None) if found is None else found
            return self.store.ha1(username, domain, algorithm), self.store.roles(username, domain)
        except CredentialStoreError as e:
            raise BackendUnavailable(str(e)) from None

    def roles_of(self, username: str, domain: str) -> Deferred[tuple[str, ...] | None]:
        """The roles the store holds for the user (None: no such user), read in the thread pool."""
        def read() -> tuple[str, ...] | None:
            try:
                roles: tuple[str, ...] | None = self.store.roles(username, domain)
            except CredentialStoreError as e:
                raise BackendUnavailable(str(e)) from None
            return roles

        return deferToThreadPool(self.reactor, self.threadpool, read)

    def requestAvatarId(self, credentials: Any) -> Any:
        algorithm = _base_algorithm(credentials.algorithm)
        username, realm = credentials.username, credentials.realm
        if self.cache_seconds <= 0:
            d = deferToThreadPool(self.reactor, self.threadpool, self._lookup, username, realm, algorithm)
            return d.addCallback(self._decide, credentials, algorithm)
        key = (username, realm, algorithm)
        now = self.reactor.seconds()
        entry = self._cache.get(key)
        if entry is not None and 0 <= now - entry[0] < self.cache_seconds:
            return defer.maybeDeferred(self._decide, entry[1], credentials, algorithm)
        d = deferToThreadPool(self.reactor, self.threadpool, self._lookup, username, realm, algorithm)
        return d.addCallback(self._remember, key, now).addCallback(self._decide, credentials, algorithm)

    def _remember(self, found: _Found, key: tuple[str, str, str], read_at: float) -> _Found:
        cache = self._cache
        cache.pop(key, None)
        while len(cache) >= self.cache_size:
            cache.pop(next(iter(cache)))
        cache[key] = (read_at, found)
        return found

    def _decide(self, found: _Found, credentials: Any, algorithm: str) -> AvatarId:
        ha1, roles = found
        if ha1 is None or roles is None:
            credentials.checkHash(compute_ha1(algorithm, credentials.username, credentials.realm, _DECOY_PASSWORD))
            raise UnknownUser()
        if not credentials.checkHash(ha1):
            raise UnauthorizedLogin()
        avatar = AvatarId(f"{credentials.username}@{credentials.realm}")
        avatar.roles = roles
        return avatar


@implementer(ICredentialsChecker)
class ChainedChecker:
    """Several backends in order (a Portal keeps one checker per interface).

    "No such user" moves on to the next backend; a wrong password stops the
    chain (otherwise the chain would tell which backend knows the user); a
    backend that is down fails the whole login closed."""

    credentialInterfaces = (ISIPDigestCredentials,)

    def __init__(self, checkers: Sequence[Any]) -> None:
        self.checkers = list(checkers)

    @defer.inlineCallbacks
    def requestAvatarId(self, credentials: Any) -> Any:
        for checker in self.checkers:
            try:
                avatar = yield checker.requestAvatarId(credentials)
            except UnknownUser:
                continue
            return avatar
        raise UnauthorizedLogin()

    @defer.inlineCallbacks
    def roles_of(self, username: str, domain: str) -> Any:
        """Fire with (where found, roles) for ``sipshield explain``: the
        first backend, in order, that knows the user, as a login would find
        it; roles None when none does.  A backend that cannot list roles
        (LDAP) is named and skipped; one that is down fails the Deferred."""
        skipped = []
        for checker in self.checkers:
            lookup = getattr(checker, "roles_of", None)
            if lookup is None:
                skipped.append(type(checker).__name__)
                continue
            roles = yield lookup(username, domain)
            if roles is not None:
                return type(checker.store).__name__, tuple(roles)
        return ("not found" + (f" (not asked: {', '.join(skipped)})" if skipped else "")), None


@implementer(IRealm)
class SIPRealm:
    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Identity, Any]:
        if IIdentity not in interfaces:
            raise NotImplementedError("sipshield avatars provide IIdentity only")
        username, _, domain = str(avatarId).rpartition("@")
        return IIdentity, Identity(username, domain, frozenset(getattr(avatarId, "roles", ()))), lambda: None


def make_portal(checkers: Sequence[Any]) -> Portal:
    return Portal(SIPRealm(), [ChainedChecker(checkers)])
