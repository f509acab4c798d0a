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
from pathlib import Path

import pytest
from passlib.context import CryptContext
from sqlalchemy import create_engine, select, update

from sipshield.auth._digest import compute_ha1
from sipshield.auth._keys import KeyFile, KeySet
from sipshield.auth._users import CredentialStoreError, KeyUsage, Reencryption, UnknownUserError, UserRecord, UserStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get("SIPSHIELD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

PASSWORD = "Plaintext-Never-Stored-7f3c9a"
NEW_PASSWORD = "Second-Plaintext-Never-Stored-41d2"


def sha256_ha1(username: str, realm: str, password: str) -> str:
    return hashlib.sha256(f"{username}:{realm}:{password}".encode()).hexdigest()


def open_store(url: str, key_file: Path) -> Iterator[UserStore]:
    """A store at *url* in tables of its own (dropped afterwards), its HA1s encrypted under *key_file*."""
    prefix = f"sipshield_t{uuid.uuid4().hex[:10]}_"
    store = UserStore(url, table_prefix=prefix, keys=KeyFile(key_file))
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


@pytest.mark.parametrize("domain", ["", "exa mple.com", "-bad.com", "a..b", "x:5060", "[::1]", "a_b.com", "exa mple.com.", "a_b.com.", "example.c-.", ".".join(["a" * 63] * 3 + ["b" * 62])])
def test_add_refuses_invalid_domains(store: UserStore, domain: str) -> None:
    with pytest.raises(ValueError, match="not a domain name"):
        store.add("alice", domain, PASSWORD)


def test_names_at_their_longest_and_a_domain_with_its_root_dot_are_accepted(store: UserStore) -> None:
    """The bounds are inclusive (128 characters of user name, 253 of domain
    name without the root's dot), and a trailing dot is checked as the name
    without it, not as a shorter one (mutants check_username 6, check_domain 6, 8, 9, 15;
    254 characters are refused: 16)."""
    name, long_domain = "u" * 128, ".".join(["a" * 63] * 3 + ["b" * 61])
    store.add(name, "example.com.", PASSWORD)
    store.add("alice", long_domain, PASSWORD)
    assert len(long_domain) == 253
    assert {(u.username, u.domain) for u in store.list()} == {(name, "example.com."), ("alice", long_domain)}


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
    md5_store = UserStore(url, ("MD5", "SHA-256"), table_prefix=store.users.name[: -len("users")], keys=store.keys)
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


def test_writes_and_reads_touch_only_the_user_they_name(store: UserStore) -> None:
    """Roles, the enabled flag, the password, removal and get concern one
    (user, domain): not every user of the domain, nor the same name in
    another domain (mutmut survivors _update 9 and 10, set_password 9 and 10,
    remove 14 and 16, get 9 and 10)."""
    store.add("alice", "example.com", PASSWORD, roles=["agent"])
    store.add("bob", "example.com", NEW_PASSWORD, roles=["agent"])
    store.add("alice", "example.org", NEW_PASSWORD, roles=["agent"])
    store.set_roles("bob", "example.com", ["admin"])
    assert store.roles("alice", "example.com") == ("agent",) and store.roles("alice", "example.org") == ("agent",)
    store.set_roles("alice", "example.org", ["staff"])
    assert store.roles("alice", "example.com") == ("agent",) and store.roles("bob", "example.com") == ("admin",)
    store.set_enabled("bob", "example.com", False)
    assert store.ha1("alice", "example.com", "SHA-256") == sha256_ha1("alice", "example.com", PASSWORD)
    assert store.get("alice", "example.org") == UserRecord("alice", "example.org", ("staff",), True, ("SHA-256", "SHA-512-256"))
    assert store.get("bob", "example.com") == UserRecord("bob", "example.com", ("admin",), False, ("SHA-256", "SHA-512-256"))
    assert store.remove("alice", "example.com") is True
    assert store.ha1("alice", "example.org", "SHA-256") == sha256_ha1("alice", "example.org", NEW_PASSWORD)
    store.set_enabled("bob", "example.com", True)
    assert store.ha1("bob", "example.com", "SHA-512-256") == compute_ha1("SHA-512-256", "bob", "example.com", NEW_PASSWORD)
    store.add("carol", "example.org", PASSWORD)
    store.set_password("carol", "example.org", NEW_PASSWORD)  # mutants set_password 9 and 10: alice's row
    assert store.ha1("alice", "example.org", "SHA-256") == sha256_ha1("alice", "example.org", NEW_PASSWORD)
    assert store.ha1("carol", "example.org", "SHA-256") == sha256_ha1("carol", "example.org", NEW_PASSWORD)
    store.set_password("bob", "example.com", PASSWORD)
    assert store.ha1("alice", "example.org", "SHA-512-256") == compute_ha1("SHA-512-256", "alice", "example.org", NEW_PASSWORD)
    assert store.ha1("bob", "example.com", "SHA-256") == sha256_ha1("bob", "example.com", PASSWORD)
    store.add("alice", "example.com", PASSWORD)
    store.set_password("alice", "example.org", "third-password")
    assert store.ha1("alice", "example.com", "SHA-256") == sha256_ha1("alice", "example.com", PASSWORD)
    assert store.ha1("alice", "example.org", "SHA-256") == sha256_ha1("alice", "example.org", "third-password")


def test_unknown_user_error_carries_the_user_and_domain(store: UserStore) -> None:
    with pytest.raises(UnknownUserError) as raised:
        store.set_roles("ghost", "Example.com", ["a"])
    assert (raised.value.username, raised.value.domain) == ("ghost", "example.com")


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


def test_verify_admin_is_for_the_user_of_that_domain_only(store: UserStore) -> None:
    """root of another domain, with a password of its own, is another admin (mutant verify_admin 15)."""
    store.add("root", "example.com", PASSWORD, admin=True)
    store.add("root", "example.org", NEW_PASSWORD, admin=True)
    assert store.verify_admin("root", "example.org", PASSWORD) is False
    assert store.verify_admin("root", "example.com", NEW_PASSWORD) is False
    assert store.verify_admin("root", "example.org", NEW_PASSWORD) is True


def test_verify_admin_refuses_a_stored_hash_it_cannot_identify(store: UserStore) -> None:
    """An admin hash of a scheme this machine cannot verify (or one written
    into the database by hand) matches no password (mutant verify_admin 37)."""
    store.add("root", "example.com", PASSWORD, admin=True)
    with store._live_engine().begin() as conn:
        conn.execute(update(store.users).values(admin_hash="$2b$12$" + "x" * 53))
    assert store.verify_admin("root", "example.com", PASSWORD) is False


class _CountingContext(CryptContext):
    """The admin hash context, noting the hash each verification runs against."""

    hashes: list[object]

    def verify(self, secret: object, hash: object, **kwargs: object) -> bool:  # noqa: A002 (passlib's name)
        self.hashes.append(hash)
        return bool(super().verify(secret, hash, **kwargs))


def test_verify_admin_costs_one_real_hash_verification_whoever_asks(store: UserStore) -> None:
    """An unknown user, one without the admin flag and a name that is not a
    user name cost what a wrong password costs: one verification against a
    real hash (dummy_verify), so timing tells no one which admins exist
    (mutants verify_admin 7 and 28: a verification against no hash, which
    returns at once)."""
    store.add("root", "example.com", PASSWORD, admin=True)
    store.add("alice", "example.com", PASSWORD)
    context = _CountingContext(schemes=[store._admin_context().default_scheme()])
    context.hashes = []
    store._admin = context
    asks = [("root", PASSWORD), ("root", NEW_PASSWORD), ("alice", PASSWORD), ("ghost", PASSWORD), ("a b", PASSWORD)]
    assert [store.verify_admin(user, "example.com", password) for user, password in asks] == [True, False, False, False, False]
    assert len(context.hashes) == len(asks)
    assert all(isinstance(h, str) and h.startswith("$") and len(h) > 20 for h in context.hashes), context.hashes


def test_without_a_password_hash_backend_no_admin_is_made_or_let_in(store: UserStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with neither argon2-cffi nor bcrypt: adding an admin says
    what to install, and verify_admin refuses every password (mutants
    verify_admin 27 and _admin_hash 3 to 5)."""
    import sipshield.auth._users as users_module

    store.add("root", "example.com", PASSWORD, admin=True)
    monkeypatch.setattr(users_module, "_admin_context", lambda: None)
    store._admin = None
    assert store.verify_admin("root", "example.com", PASSWORD) is False
    with pytest.raises(CredentialStoreError) as raised:
        store.add("admin2", "example.com", PASSWORD, admin=True)
    assert str(raised.value) == "admin users need a password hash backend: pip install argon2-cffi (or bcrypt)"


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


# -- HA1 values encrypted at rest (sipshield/auth/_keys.py) --------------------------------------


def every_ha1(username: str, realm: str, password: str) -> list[str]:
    return [compute_ha1(a, username, realm, password) for a in ("MD5", "SHA-256", "SHA-512-256")]


def stored_value(store: UserStore, username: str, algorithm: str) -> str:
    users, creds = store.users, store.credentials
    with store._live_engine().connect() as conn:
        return str(conn.execute(
            select(creds.c.ha1).select_from(creds.join(users, creds.c.user_id == users.c.id))
            .where(users.c.username == username, creds.c.algorithm == algorithm)
        ).scalar_one())


def overwrite_value(store: UserStore, username: str, algorithm: str, value: str) -> None:
    """Write *value* into the row as someone with write access to the database would."""
    users, creds = store.users, store.credentials
    with store._live_engine().begin() as conn:
        user_id = conn.execute(select(users.c.id).where(users.c.username == username)).scalar_one()
        conn.execute(update(creds).where(creds.c.user_id == user_id, creds.c.algorithm == algorithm).values(ha1=value))


def three_algorithm_store(store: UserStore) -> UserStore:
    url = store.url.render_as_string(hide_password=False)
    return UserStore(url, ("MD5", "SHA-256", "SHA-512-256"), table_prefix=store.users.name[: -len("users")], keys=store.keys)


def test_a_dump_of_the_tables_holds_no_ha1_of_any_user(store: UserStore) -> None:
    writer = three_algorithm_store(store)
    try:
        writer.add("alice", "example.com", PASSWORD, roles=("staff",), admin=True)
        writer.add("bob", "example.com", NEW_PASSWORD)
        writer.set_password("alice", "example.com", NEW_PASSWORD)
    finally:
        writer.close()
    secrets = every_ha1("alice", "example.com", NEW_PASSWORD) + every_ha1("bob", "example.com", NEW_PASSWORD)
    cells = all_cells(store)
    assert cells
    assert not any(s in c for s in secrets for c in cells)
    assert not any(PASSWORD in c or NEW_PASSWORD in c for c in cells)
    # ... and yet the store, with the key file, reads every one of them.
    assert store.ha1("bob", "example.com", "SHA-256") == sha256_ha1("bob", "example.com", NEW_PASSWORD)
    assert store.key_usage() == KeyUsage(((store.keys.require().current, 6),), plaintext=0, malformed=0)


def test_an_encrypted_value_copied_into_another_users_row_does_not_decrypt(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD)
    store.add("bob", "example.com", NEW_PASSWORD)
    overwrite_value(store, "bob", "SHA-256", stored_value(store, "alice", "SHA-256"))
    with pytest.raises(CredentialStoreError, match=r"credential of bob@example.com \(SHA-256\) .*does not decrypt"):
        store.ha1("bob", "example.com", "SHA-256")
    assert store.ha1("alice", "example.com", "SHA-256") == sha256_ha1("alice", "example.com", PASSWORD)


def test_an_encrypted_value_copied_into_another_algorithms_row_does_not_decrypt(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD)
    overwrite_value(store, "alice", "SHA-512-256", stored_value(store, "alice", "SHA-256"))
    with pytest.raises(CredentialStoreError, match=r"alice@example.com \(SHA-512-256\) .*does not decrypt"):
        store.ha1("alice", "example.com", "SHA-512-256")


@pytest.mark.parametrize("tamper", ["flip", "truncate", "garbage", "unknown-key"])
def test_a_tampered_value_is_a_credential_store_error_naming_the_row(store: UserStore, tamper: str) -> None:
    store.add("alice", "example.com", PASSWORD)
    value = stored_value(store, "alice", "SHA-256")
    prefix, key_id, body = value.split(":")
    changed = {
        "flip": f"{prefix}:{key_id}:{body[:-3]}{'A' if body[-3] != 'A' else 'B'}{body[-2:]}",
        "truncate": value[:30],
        "garbage": "not an ha1 at all",
        "unknown-key": f"{prefix}:00000000:{body}",
    }[tamper]
    overwrite_value(store, "alice", "SHA-256", changed)
    with pytest.raises(CredentialStoreError, match=r"credential of alice@example.com \(SHA-256\)"):
        store.ha1("alice", "example.com", "SHA-256")


def older_database(store: UserStore, users: dict[str, str]) -> None:
    """The rows a version before encryption wrote: plain-text HA1s, and no key file."""
    for name, password in users.items():
        store.add(name, "example.com", password)
        for algorithm in store.algorithms:
            overwrite_value(store, name, algorithm, compute_ha1(algorithm, name, "example.com", password))
    store.keys.path.unlink()


def test_plain_text_values_of_an_older_database_are_read_then_migrated(store: UserStore) -> None:
    older_database(store, {"alice": PASSWORD, "bob": PASSWORD})
    plain = sha256_ha1("alice", "example.com", PASSWORD)
    assert store.ha1("alice", "example.com", "SHA-256") == plain
    assert store.key_usage() == KeyUsage((), plaintext=4, malformed=0)
    # The first write creates the key file, accepting the plain-text values still there.
    store.add("carol", "example.com", NEW_PASSWORD)
    keys = store.keys.require()
    assert keys.accept_plaintext is True
    assert store.ha1("alice", "example.com", "SHA-256") == plain
    assert store.reencrypt(keys) == Reencryption(4, ())
    assert stored_value(store, "alice", "SHA-256").startswith(f"enc1:{keys.current}:")
    assert store.ha1("alice", "example.com", "SHA-256") == plain
    assert store.key_usage() == KeyUsage(((keys.current, 6),), plaintext=0, malformed=0)
    # Once the key file says every value is encrypted, a plain-text value
    # written into the database (by someone who can write to it) is refused.
    store.keys.update(lambda k: k.refusing_plaintext())
    overwrite_value(store, "bob", "SHA-256", sha256_ha1("bob", "example.com", "attacker-chosen"))
    with pytest.raises(CredentialStoreError, match=r"bob@example.com \(SHA-256\).*plaintext refused"):
        store.ha1("bob", "example.com", "SHA-256")


def test_a_new_key_file_refuses_plain_text_values_when_the_database_holds_none(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD)
    assert store.keys.require().accept_plaintext is False
    overwrite_value(store, "alice", "SHA-256", sha256_ha1("alice", "example.com", "attacker-chosen"))
    with pytest.raises(CredentialStoreError, match="plaintext refused"):
        store.ha1("alice", "example.com", "SHA-256")


def test_a_key_file_made_again_over_encrypted_values_refuses_plain_text_ones(store: UserStore) -> None:
    """The key file lost, the next write makes a new one: the database holds
    encrypted values only, so the new file accepts no plain-text value, and
    one written into the database (an attacker's chosen HA1) is refused
    (mutmut survivor _writing_keys 8 counted encrypted values as plain text)."""
    store.add("alice", "example.com", PASSWORD)
    store.keys.path.unlink()
    store.add("bob", "example.com", PASSWORD)
    assert store.keys.require().accept_plaintext is False
    overwrite_value(store, "bob", "SHA-256", sha256_ha1("bob", "example.com", "attacker-chosen"))
    with pytest.raises(CredentialStoreError, match="plaintext refused"):
        store.ha1("bob", "example.com", "SHA-256")


def test_a_rotation_keeps_every_value_readable_at_every_step(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD)
    old = store.keys.require().current
    rotated = store.keys.update(lambda k: k.rotated())
    new = rotated.current
    assert new != old and set(rotated.ids) == {old, new}
    # A crash right after the new key was added, and half way: values under both keys.
    store.add("bob", "example.com", NEW_PASSWORD)
    assert store.key_usage().by_key == tuple(sorted([(old, 2), (new, 2)]))
    assert store.ha1("alice", "example.com", "SHA-256") == sha256_ha1("alice", "example.com", PASSWORD)
    assert store.ha1("bob", "example.com", "SHA-256") == sha256_ha1("bob", "example.com", NEW_PASSWORD)
    assert store.reencrypt(rotated, batch=1) == Reencryption(2, ())
    assert store.key_usage().by_key == ((new, 4),)
    assert store.ha1("alice", "example.com", "SHA-512-256") == compute_ha1("SHA-512-256", "alice", "example.com", PASSWORD)
    # Pruned, the old key is gone and nothing needed it.
    store.keys.update(lambda k: k.without({old}))
    assert store.keys.require().ids == (new,)
    assert store.ha1("alice", "example.com", "SHA-256") == sha256_ha1("alice", "example.com", PASSWORD)


class _SetsAPasswordMidway:
    """The keys given to reencrypt, while another writer sets alice's password
    between reencrypt reading her rows and writing them back."""

    def __init__(self, keys: KeySet, store: UserStore) -> None:
        self.keys, self.store, self.current, self.done = keys, store, keys.current, False

    def open(self, *args: str) -> str:
        if not self.done:
            self.done = True
            self.store.set_password("alice", "example.com", NEW_PASSWORD)
        return self.keys.open(*args)

    def seal(self, *args: str) -> str:
        return self.keys.seal(*args)


def test_reencrypt_keeps_a_password_set_while_it_runs(store: UserStore) -> None:
    """Each row is replaced only if it still holds the value read: the new
    password is never overwritten by the old one (mutmut survivor reencrypt 69)."""
    store.add("alice", "example.com", PASSWORD)
    rotated = store.keys.update(lambda k: k.rotated())
    store.reencrypt(_SetsAPasswordMidway(rotated, store))  # type: ignore[arg-type]
    for algorithm in ("SHA-256", "SHA-512-256"):
        assert store.ha1("alice", "example.com", algorithm) == compute_ha1(algorithm, "alice", "example.com", NEW_PASSWORD)


def test_reencrypt_leaves_an_unreadable_row_as_it_is_and_reports_it(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD)
    store.add("bob", "example.com", PASSWORD)
    overwrite_value(store, "bob", "SHA-256", stored_value(store, "alice", "SHA-256"))
    moved = stored_value(store, "bob", "SHA-256")
    rotated = store.keys.update(lambda k: k.rotated())
    result = store.reencrypt(rotated)
    assert result.reencrypted == 3
    assert len(result.unreadable) == 1 and "bob@example.com (SHA-256)" in result.unreadable[0]
    assert stored_value(store, "bob", "SHA-256") == moved
