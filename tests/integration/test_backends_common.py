"""One test suite, every credential backend: the SQL store on SQLite and on
PostgreSQL, and the LDAP directory on a real slapd, must give the same answers
for the same users (correct password per algorithm, wrong password, unknown
user, roles).

PostgreSQL comes from ``SIPSHIELD_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``), in tables with a
prefix of their own that are dropped afterwards.  A missing PostgreSQL or
slapd skips its backend, and fails it under CI=true.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap_support
import pytest
import pytest_twisted
from conftest import IN_CI
from sqlalchemy import create_engine
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool

from sipshield.auth import CredentialStoreError, KeyFile, SIPDigestCredentials, UserStore
from sipshield.auth._checkers import StoreChecker, UnknownUser
from sipshield.auth._digest import DigestResponse, _h, compute_ha1
from sipshield.auth._ldap import LDAPChecker, LDAPSettings

POSTGRES_URL = os.environ.get("SIPSHIELD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REALM = ldap_support.REALM
#: The same users in every backend (uid -> password) with the same roles; in
#: LDAP the roles come from the users' groups through GROUP_ROLES.
USERS = {uid: password for uid, (password, _groups) in ldap_support.USERS.items()}
ROLES = {"alice": ("staff",), "carol": ("ops", "staff"), "dave": ("ops", "staff")}
GROUP_ROLES = {"sip-staff": ["staff"], "sip-ops": ["ops", "staff"]}
ALGORITHMS = ("SHA-256", "SHA-512-256", "SHA-256-sess", "SHA-512-256-sess")


@dataclass
class Backend:
    """A credential checker holding USERS with ROLES, whatever is behind it."""

    name: str
    checker: Any


def digest_credentials(username: str, password: str, algorithm: str) -> SIPDigestCredentials:
    """Credentials as a phone computes them (RFC 7616 3.4.1, qop=auth)."""
    base = algorithm.removesuffix("-sess")
    hash_name = {"SHA-256": "sha256", "SHA-512-256": "sha512_256"}[base]
    nonce, cnonce, nc, uri = "n0nce", "c0nce", "00000001", "sip:example.com"
    ha1 = compute_ha1(base, username, REALM, password)
    if algorithm.endswith("-sess"):
        ha1 = _h(hash_name, f"{ha1}:{nonce}:{cnonce}")
    response = _h(hash_name, f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{_h(hash_name, f'REGISTER:{uri}')}")
    return SIPDigestCredentials(DigestResponse(username, REALM, nonce, uri, response, algorithm, cnonce, nc, "auth"), "REGISTER")


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (required under CI=true)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ldap_support.Slapd]:
    server = ldap_support.start_slapd(tmp_path_factory.mktemp("slapd"))
    yield server
    server.stop()


@pytest.fixture
def threadpool() -> Iterator[ThreadPool]:
    pool = ThreadPool(minthreads=1, maxthreads=2, name="test-credentials")
    pool.start()
    yield pool
    pool.stop()


def _sql_backend(name: str, store: UserStore, threadpool: ThreadPool) -> Backend:
    store.create_schema()
    for uid, password in USERS.items():
        store.add(uid, REALM, password, roles=ROLES[uid])
    return Backend(name, StoreChecker(store, reactor, threadpool))


@pytest.fixture(params=["sql-sqlite", "sql-postgres", "ldap-slapd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, threadpool: ThreadPool) -> Iterator[Backend]:
    if request.param == "sql-sqlite":
        store = UserStore(f"sqlite:///{tmp_path / 'users.db'}", keys=KeyFile(tmp_path / "credential.keys"))
        yield _sql_backend(request.param, store, threadpool)
        store.close()
    elif request.param == "sql-postgres":
        prefix = f"t{uuid.uuid4().hex[:12]}_"
        store = UserStore(POSTGRES_URL, table_prefix=prefix, keys=KeyFile(tmp_path / "credential.keys"))
        try:
            built = _sql_backend(request.param, store, threadpool)
        except CredentialStoreError as e:
            store.close()
            _unavailable(f"PostgreSQL not reachable at SIPSHIELD_TEST_POSTGRES_URL: {e}")
        yield built
        store.close()
        engine = create_engine(POSTGRES_URL)
        try:
            store.users.metadata.drop_all(engine)
        finally:
            engine.dispose()
    else:
        slapd = request.getfixturevalue("slapd")
        settings = LDAPSettings(
            url=slapd.url,
            base_dn=ldap_support.PEOPLE_DN,
            bind_dn=ldap_support.SERVICE_DN,
            bind_password=ldap_support.SERVICE_PASSWORD,
            group_base_dn=ldap_support.GROUPS_DN,
            group_roles=GROUP_ROLES,
        )
        checker = LDAPChecker(settings, reactor)
        yield Backend(request.param, checker)
        checker.close()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("username", sorted(USERS))
@pytest_twisted.inlineCallbacks
def test_correct_password_authenticates_with_each_algorithm(backend: Backend, username: str, algorithm: str) -> Iterator:
    avatar = yield backend.checker.requestAvatarId(digest_credentials(username, USERS[username], algorithm))
    assert avatar == f"{username}@{REALM}"


@pytest.mark.parametrize("algorithm", ["SHA-256", "SHA-512-256"])
@pytest_twisted.inlineCallbacks
def test_wrong_password_is_unauthorized_and_not_unknown(backend: Backend, algorithm: str) -> Iterator:
    with pytest.raises(UnauthorizedLogin) as raised:
        yield backend.checker.requestAvatarId(digest_credentials("alice", "wrong-password", algorithm))
    assert not isinstance(raised.value, UnknownUser)


@pytest.mark.parametrize("username", ["mallory", "*)(uid=*", "Alice2"])
@pytest_twisted.inlineCallbacks
def test_unknown_user_is_unknown(backend: Backend, username: str) -> Iterator:
    with pytest.raises(UnknownUser):
        yield backend.checker.requestAvatarId(digest_credentials(username, "whatever", "SHA-256"))


@pytest.mark.parametrize("username", sorted(ROLES))
@pytest_twisted.inlineCallbacks
def test_roles_come_with_the_avatar(backend: Backend, username: str) -> Iterator:
    avatar = yield backend.checker.requestAvatarId(digest_credentials(username, USERS[username], "SHA-256"))
    assert tuple(avatar.roles) == ROLES[username]
