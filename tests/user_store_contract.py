"""What the SQL credential store (UserStore) keeps, on any database: one suite of
tests on a ``store`` fixture, which the module that imports them provides.

tests/unit/test_users.py runs them on SQLite, tests/integration/test_users_postgresql.py
on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, select

from sipshield.auth._users import CredentialStoreError, UnknownUserError, UserRecord, UserStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get("SIPSHIELD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

PASSWORD = "Plaintext-Never-Stored-7f3c9a"
NEW_PASSWORD = "Second-Plaintext-Never-Stored-41d2"


def sha256_ha1(username: str, realm: str, password: str) -> str:
    return hashlib.sha256(f"{username}:{realm}:{password}".encode()).hexdigest()


def open_store(url: str) -> Iterator[UserStore]:
    prefix = f"sipshield_t{uuid.uuid4().hex[:10]}_"
    store = UserStore(url, table_prefix=prefix)
    try:
        store.create_schema()
    except CredentialStoreError as e:
        store.close()
        message = f"PostgreSQL not usable at {url} (set SIPSHIELD_TEST_POSTGRES_URL; needs pip install 'psycopg[binary]'): {e}"
        if IN_CI:
            pytest.fail(f"{message} (required under CI=true)")
        pytest.skip(message)
    yield store
    store.close()
    engine = create_engine(url)
    store.users.metadata.drop_all(engine)
    engine.dispose()




def all_cells(store: UserStore) -> list[str]:
    """Every value of every row of both tables, as text."""
    cells: list[str] = []
    with store._live_engine().connect() as conn:
        for table in (store.users, store.credentials):
            for row in conn.execute(select(table)):
                cells.extend(str(v) for v in row)
    return cells


def test_add_stores_one_ha1_per_algorithm_with_domain_as_realm(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD)
    assert store.ha1("alice", "example.com", "SHA-256") == sha256_ha1("alice", "example.com", PASSWORD)
    assert store.ha1("alice", "example.com", "SHA-512-256") == hashlib.new("sha512_256", f"alice:example.com:{PASSWORD}".encode()).hexdigest()
    assert store.ha1("alice", "example.com", "MD5") is None


def test_no_plaintext_password_in_any_row(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD, roles=("staff",), admin=True)
    store.add("bob", "example.com", PASSWORD)
    store.set_password("bob", "example.com", NEW_PASSWORD)
    cells = all_cells(store)
    assert cells
    assert not any(PASSWORD in c or NEW_PASSWORD in c for c in cells)


def test_add_existing_user_raises_value_error(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD)
    with pytest.raises(ValueError, match="already exists"):
        store.add("alice", "EXAMPLE.com", "other")
    store.add("alice", "example.org", PASSWORD)  # another domain is another user


@pytest.mark.parametrize("username", ["", "al ice", "a@b", "a:b", 'a"b', "a\\b", "x" * 129, "caf\u00e9"])
def test_add_refuses_invalid_user_names(store: UserStore, username: str) -> None:
    with pytest.raises(ValueError, match="not a valid SIP user name"):
        store.add(username, "example.com", PASSWORD)


@pytest.mark.parametrize("domain", ["", "exa mple.com", "-bad.com", "a..b", "x:5060", "[::1]", "a_b.com"])
def test_add_refuses_invalid_domains(store: UserStore, domain: str) -> None:
    with pytest.raises(ValueError, match="not a domain name"):
        store.add("alice", domain, PASSWORD)


def test_user_token_characters_of_rfc_3261_are_accepted(store: UserStore) -> None:
    name = "a.b-c_d!~*'()&=+$,;?/%41"
    store.add(name, "192.0.2.1", PASSWORD)
    assert store.ha1(name, "192.0.2.1", "SHA-256") == sha256_ha1(name, "192.0.2.1", PASSWORD)


def test_empty_password_refused(store: UserStore) -> None:
    with pytest.raises(ValueError, match="password"):
        store.add("alice", "example.com", "")


def test_domain_is_case_insensitive_and_stored_lower_case(store: UserStore) -> None:
    store.add("alice", "Example.COM", PASSWORD)
    assert store.list() == [UserRecord("alice", "example.com", (), True, ("SHA-256", "SHA-512-256"))]
    assert store.ha1("alice", "EXAMPLE.com", "SHA-256") == sha256_ha1("alice", "example.com", PASSWORD)
    assert store.ha1("Alice", "example.com", "SHA-256") is None  # user names are case-sensitive


def test_set_password_replaces_every_ha1(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD)
    store.set_password("alice", "example.com", NEW_PASSWORD)
    assert store.ha1("alice", "example.com", "SHA-256") == sha256_ha1("alice", "example.com", NEW_PASSWORD)


def test_set_password_drops_ha1s_of_algorithms_no_longer_enabled(store: UserStore) -> None:
    url = store.url.render_as_string(hide_password=False)
    md5_store = UserStore(url, ("MD5", "SHA-256"), table_prefix=store.users.name[: -len("users")])
    try:
        md5_store.add("alice", "example.com", PASSWORD)
        assert store.ha1("alice", "example.com", "MD5") == hashlib.md5(f"alice:example.com:{PASSWORD}".encode()).hexdigest()
        store.set_password("alice", "example.com", NEW_PASSWORD)
        assert store.ha1("alice", "example.com", "MD5") is None
        assert store.get("alice", "example.com") == UserRecord("alice", "example.com", (), True, ("SHA-256", "SHA-512-256"))
    finally:
        md5_store.close()


def test_writes_to_unknown_user_raise_unknown_user_error(store: UserStore) -> None:
    with pytest.raises(UnknownUserError, match="no user 'ghost' in domain 'example.com'"):
        store.set_password("ghost", "example.com", PASSWORD)
    with pytest.raises(UnknownUserError):
        store.set_roles("ghost", "example.com", ["a"])
    with pytest.raises(UnknownUserError):
        store.set_enabled("ghost", "example.com", False)


def test_remove_deletes_user_and_credentials(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD)
    assert store.remove("alice", "example.com") is True
    assert store.remove("alice", "example.com") is False
    assert store.ha1("alice", "example.com", "SHA-256") is None
    assert all_cells(store) == []


def test_roles_are_sorted_deduplicated_and_replaceable(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD, roles=["staff", "admin", "staff"])
    assert store.roles("alice", "example.com") == ("admin", "staff")
    store.set_roles("alice", "example.com", ["zeta", "alpha"])
    assert store.roles("alice", "example.com") == ("alpha", "zeta")
    store.set_roles("alice", "example.com", [])
    assert store.roles("alice", "example.com") == ()
    assert store.roles("ghost", "example.com") is None
    with pytest.raises(ValueError, match="role"):
        store.set_roles("alice", "example.com", ["bad role"])


def test_disabled_user_has_no_ha1_and_no_roles(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD, roles=["staff"], admin=True)
    store.set_enabled("alice", "example.com", False)
    assert store.ha1("alice", "example.com", "SHA-256") is None
    assert store.roles("alice", "example.com") is None
    assert store.verify_admin("alice", "example.com", PASSWORD) is False
    assert store.list()[0].enabled is False
    store.set_enabled("alice", "example.com", True)
    assert store.ha1("alice", "example.com", "SHA-256") == sha256_ha1("alice", "example.com", PASSWORD)


def test_lookups_with_names_from_a_peer_that_are_invalid_return_none(store: UserStore) -> None:
    assert store.ha1("a\"b", "example.com", "SHA-256") is None
    assert store.ha1("alice", "not a domain", "SHA-256") is None
    assert store.roles("a:b", "example.com") is None
    assert store.verify_admin("a b", "example.com", PASSWORD) is False


def test_list_filters_by_domain_and_orders_by_domain_then_name(store: UserStore) -> None:
    store.add("carol", "b.example", PASSWORD)
    store.add("bob", "a.example", PASSWORD, roles=["x"])
    store.add("alice", "b.example", PASSWORD, admin=True)
    assert [(r.username, r.domain) for r in store.list()] == [("bob", "a.example"), ("alice", "b.example"), ("carol", "b.example")]
    assert [r.username for r in store.list("B.example")] == ["alice", "carol"]
    alice = store.list("b.example")[0]
    assert alice == UserRecord("alice", "b.example", (), True, ("SHA-256", "SHA-512-256"), admin=True)


def test_verify_admin_checks_the_passlib_hash(store: UserStore) -> None:
    store.add("root", "example.com", PASSWORD, admin=True)
    store.add("alice", "example.com", PASSWORD)
    assert store.verify_admin("root", "example.com", PASSWORD) is True
    assert store.verify_admin("root", "example.com", PASSWORD + "x") is False
    assert store.verify_admin("alice", "example.com", PASSWORD) is False  # not an admin
    assert store.verify_admin("ghost", "example.com", PASSWORD) is False
    store.set_password("root", "example.com", NEW_PASSWORD)
    assert store.verify_admin("root", "example.com", PASSWORD) is False
    assert store.verify_admin("root", "example.com", NEW_PASSWORD) is True


def test_admin_hash_is_argon2_when_argon2_cffi_is_installed(store: UserStore) -> None:
    pytest.importorskip("argon2", reason="argon2-cffi not installed: bcrypt is used instead")
    store.add("root", "example.com", PASSWORD, admin=True)
    with store._live_engine().connect() as conn:
        admin_hash = conn.execute(select(store.users.c.admin_hash)).scalar_one()
    assert admin_hash.startswith("$argon2id$")


def test_concurrent_adds_of_one_user_leave_exactly_one(store: UserStore) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def add() -> None:
        try:
            store.add("alice", "example.com", PASSWORD)
            result = "added"
        except ValueError:
            result = "exists"
        except CredentialStoreError as e:  # SQLite may report the lock instead
            result = f"error: {e}"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("added") == 1, outcomes
    assert len(store.list()) == 1


def test_schema_creation_is_idempotent(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD)
    store.create_schema()
    assert [r.username for r in store.list()] == ["alice"]
