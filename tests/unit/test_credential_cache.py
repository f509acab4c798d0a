"""[auth] credential_cache: StoreChecker keeps what a lookup found for a bounded time."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from inline_pool import ImmediateReactor, InlinePool
from twisted.cred.error import UnauthorizedLogin

from sipshield.auth._checkers import BackendUnavailable, StoreChecker, UnknownUser
from sipshield.auth._credentials import SIPDigestCredentials
from sipshield.auth._digest import DigestResponse
from sipshield.auth._users import CredentialStoreError
from sipshield.config import ConfigError, parse_config

REALM = "example.com"


class CountingStore:
    """ha1/roles of ``users`` (password, roles), counting the lookups; ``down`` fails them."""

    def __init__(self, users: dict[str, tuple[str, tuple[str, ...]]]) -> None:
        self.users = users
        self.lookups = 0
        self.down = False

    def ha1(self, username: str, domain: str, algorithm: str) -> str | None:
        self.lookups += 1
        if self.down:
            raise CredentialStoreError("database is down")
        entry = self.users.get(username)
        return None if entry is None else hashlib.sha256(f"{username}:{domain}:{entry[0]}".encode()).hexdigest()

    def roles(self, username: str, domain: str) -> tuple[str, ...] | None:
        entry = self.users.get(username)
        return None if entry is None else entry[1]


def credentials(username: str, password: str) -> SIPDigestCredentials:
    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    ha1 = h(f"{username}:{REALM}:{password}")
    response = h(f"{ha1}:n0nce:00000001:c0nce:auth:{h('REGISTER:sip:example.com')}")
    return SIPDigestCredentials(DigestResponse(username, REALM, "n0nce", "sip:example.com", response, "SHA-256", "c0nce", "00000001", "auth"), "REGISTER")


def outcome(checker: StoreChecker, username: str, password: str) -> Any:
    found: list[Any] = []
    checker.requestAvatarId(credentials(username, password)).addBoth(found.append)
    (result,) = found
    if hasattr(result, "value"):
        return type(result.value)
    return str(result)


@pytest.fixture
def setup() -> tuple[CountingStore, ImmediateReactor, StoreChecker]:
    store = CountingStore({"alice": ("secret", ("staff",))})
    reactor = ImmediateReactor()
    return store, reactor, StoreChecker(store, reactor, InlinePool(), cache_seconds=5.0, cache_size=3)


def test_off_by_default_every_login_reads_the_store() -> None:
    store = CountingStore({"alice": ("secret", ("staff",))})
    checker = StoreChecker(store, ImmediateReactor(), InlinePool())
    assert outcome(checker, "alice", "secret") == "alice@example.com"
    assert outcome(checker, "alice", "secret") == "alice@example.com"
    assert store.lookups == 2
    assert parse_config({}).auth.credential_cache == 0.0


def test_a_login_within_the_ttl_is_decided_without_the_store_and_still_checks_the_answer(setup) -> None:
    store, reactor, checker = setup
    assert outcome(checker, "alice", "secret") == "alice@example.com"
    reactor.advance(4.9)
    assert outcome(checker, "alice", "secret") == "alice@example.com"
    assert outcome(checker, "alice", "wrong") is UnauthorizedLogin
    assert store.lookups == 1


def test_a_password_changed_elsewhere_takes_effect_once_the_entry_is_ttl_old(setup) -> None:
    store, reactor, checker = setup
    assert outcome(checker, "alice", "secret") == "alice@example.com"
    store.users["alice"] = ("new-secret", ("staff",))  # `sipshield user passwd`, another process
    reactor.advance(5.0)
    assert outcome(checker, "alice", "secret") is UnauthorizedLogin
    assert outcome(checker, "alice", "new-secret") == "alice@example.com"
    del store.users["alice"]  # `sipshield user remove`
    reactor.advance(5.0)
    assert outcome(checker, "alice", "new-secret") is UnknownUser


def test_unknown_users_are_kept_too_so_that_timing_does_not_tell_who_exists(setup) -> None:
    store, reactor, checker = setup
    assert outcome(checker, "mallory", "guess") is UnknownUser
    assert outcome(checker, "mallory", "guess") is UnknownUser
    assert store.lookups == 1


def test_a_backend_failure_is_not_kept(setup) -> None:
    store, reactor, checker = setup
    store.down = True
    assert outcome(checker, "alice", "secret") is BackendUnavailable
    store.down = False
    assert outcome(checker, "alice", "secret") == "alice@example.com"
    assert store.lookups == 2


def test_the_cache_is_bounded_oldest_first(setup) -> None:
    store, reactor, checker = setup
    for name in ("alice", "u1", "u2", "u3"):
        outcome(checker, name, "x")
    assert len(checker._cache) == 3 and ("alice", REALM, "SHA-256") not in checker._cache


def test_the_setting_is_checked() -> None:
    assert parse_config({"auth": {"credential_cache": 2.5}}).auth.credential_cache == 2.5
    with pytest.raises(ConfigError):
        parse_config({"auth": {"credential_cache": 600}})
