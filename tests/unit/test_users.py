"""The credential stores: the SQL UserStore (SQLite and PostgreSQL) and the htdigest file."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from sipshield.auth._digest import compute_ha1
from sipshield.auth._htdigest import HtdigestUserStore
from sipshield.auth._users import CredentialStoreError, UnknownUserError, UserRecord, UserStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get("SIPSHIELD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

PASSWORD = "Plaintext-Never-Stored-7f3c9a"
NEW_PASSWORD = "Second-Plaintext-Never-Stored-41d2"


def sha256_ha1(username: str, realm: str, password: str) -> str:
    return hashlib.sha256(f"{username}:{realm}:{password}".encode()).hexdigest()


def _open(url: str) -> Iterator[UserStore]:
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


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UserStore]:
    if request.param == "sqlite":
        yield from _open(f"sqlite:///{tmp_path / 'sipshield.db'}")
    else:
        yield from _open(POSTGRES_URL)


def _all_cells(store: UserStore) -> list[str]:
    """Every value of every row of both tables, as text."""
    cells: list[str] = []
    with store._live_engine().connect() as conn:
        for table in (store.users, store.credentials):
            for row in conn.execute(select(table)):
                cells.extend(str(v) for v in row)
    return cells


# -- the SQL store, on SQLite and PostgreSQL ----------------------------------------------


def test_add_stores_one_ha1_per_algorithm_with_domain_as_realm(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD)
    assert store.ha1("alice", "example.com", "SHA-256") == sha256_ha1("alice", "example.com", PASSWORD)
    assert store.ha1("alice", "example.com", "SHA-512-256") == hashlib.new("sha512_256", f"alice:example.com:{PASSWORD}".encode()).hexdigest()
    assert store.ha1("alice", "example.com", "MD5") is None


def test_private_ha1_is_h_of_username_realm_password() -> None:
    # RFC 7616 3.4.2 A1 = username ":" realm ":" passwd, names from its 3.9.1 example.
    args = ("Mufasa", "http-auth@example.org", "Circle of Life")
    assert compute_ha1("MD5", *args) == hashlib.md5(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    assert compute_ha1("SHA-256", *args) == hashlib.sha256(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    assert compute_ha1("SHA-512-256", *args) == hashlib.new("sha512_256", b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()


def test_no_plaintext_password_in_any_row(store: UserStore) -> None:
    store.add("alice", "example.com", PASSWORD, roles=("staff",), admin=True)
    store.add("bob", "example.com", PASSWORD)
    store.set_password("bob", "example.com", NEW_PASSWORD)
    cells = _all_cells(store)
    assert cells
    assert not any(PASSWORD in c or NEW_PASSWORD in c for c in cells)


def test_no_plaintext_password_in_sqlite_file(tmp_path: Path) -> None:
    store = UserStore(f"sqlite:///{tmp_path / 'sipshield.db'}")
    store.create_schema()
    store.add("alice", "example.com", PASSWORD, admin=True)
    store.set_password("alice", "example.com", NEW_PASSWORD)
    store.close()
    files = list(tmp_path.glob("sipshield.db*"))  # the WAL and shm files too
    assert files
    for f in files:
        data = f.read_bytes()
        assert PASSWORD.encode() not in data and NEW_PASSWORD.encode() not in data, f


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
    assert _all_cells(store) == []


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


# -- errors ------------------------------------------------------------------------------


def test_unreachable_database_raises_credential_store_error_without_password() -> None:
    store = UserStore("postgresql+psycopg://sipshield:hunter2secret@127.0.0.1:1/nodb")
    with pytest.raises(CredentialStoreError) as info:
        store.ha1("alice", "example.com", "SHA-256")
    message = str(info.value)
    assert "hunter2secret" not in message
    assert "\n" not in message
    assert "credential database postgresql+psycopg://sipshield:***@127.0.0.1:1/nodb" in message


def test_missing_schema_raises_credential_store_error(tmp_path: Path) -> None:
    store = UserStore(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(CredentialStoreError, match="no such table"):
        store.list()


def test_closed_store_raises_credential_store_error(tmp_path: Path) -> None:
    store = UserStore(f"sqlite:///{tmp_path / 'x.db'}")
    store.close()
    with pytest.raises(CredentialStoreError, match="closed"):
        store.create_schema()


def test_bad_url_and_unknown_algorithm_are_refused() -> None:
    with pytest.raises(CredentialStoreError, match="not a database URL"):
        UserStore("no url here")
    with pytest.raises(ValueError, match="unknown digest algorithm"):
        UserStore("sqlite://", ("SHA-1",))


def test_in_memory_sqlite_store_works_across_threads() -> None:
    store = UserStore("sqlite://", ("MD5",))
    store.create_schema()
    store.add("alice", "example.com", PASSWORD)
    found: list[str | None] = []
    t = threading.Thread(target=lambda: found.append(store.ha1("alice", "example.com", "MD5")))
    t.start()
    t.join()
    assert found == [hashlib.md5(f"alice:example.com:{PASSWORD}".encode()).hexdigest()]
    store.close()


def test_sqlite_schema_has_the_documented_tables_and_constraints(tmp_path: Path) -> None:
    path = tmp_path / "sipshield.db"
    store = UserStore(f"sqlite:///{path}")
    store.create_schema()
    store.close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        ddl = "\n".join(r[0] for r in conn.execute(text("SELECT sql FROM sqlite_master WHERE type='table'")))
    engine.dispose()
    assert "CREATE TABLE sipshield_users" in ddl and "CREATE TABLE sipshield_credentials" in ddl
    assert "UNIQUE (username, domain)" in ddl and "UNIQUE (user_id, algorithm)" in ddl


def test_passlib_is_libpass() -> None:
    import passlib

    # ldaptor's passlib dependency can silently overwrite libpass (docs: DEPENDENCIES.md).
    assert tuple(int(p) for p in passlib.__version__.split(".")[:2]) >= (1, 9), passlib.__version__


# -- the htdigest file -------------------------------------------------------------------------


def md5_ha1(username: str, realm: str, password: str) -> str:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).hexdigest()


def test_htdigest_add_writes_apache_format_with_md5_ha1_only(tmp_path: Path) -> None:
    path = tmp_path / "users.htdigest"
    store = HtdigestUserStore(path)
    store.add("alice", "Example.com", PASSWORD, roles=["staff", "admin"])
    assert path.read_text() == f"alice:example.com:{md5_ha1('alice', 'example.com', PASSWORD)}\n"
    assert (tmp_path / "users.htdigest.roles").read_text() == "alice:example.com:admin,staff\n"
    assert store.ha1("alice", "example.com", "MD5") == md5_ha1("alice", "example.com", PASSWORD)
    assert store.ha1("alice", "example.com", "SHA-256") is None
    assert store.roles("alice", "example.com") == ("admin", "staff")
    assert path.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in path.read_text()


def test_htdigest_reads_an_existing_file_and_sees_changes_by_other_writers(tmp_path: Path) -> None:
    path = tmp_path / "users.htdigest"
    path.write_text(f"bob:example.com:{md5_ha1('bob', 'example.com', 'pw')}\n")
    store = HtdigestUserStore(path)
    assert store.ha1("bob", "example.com", "MD5") == md5_ha1("bob", "example.com", "pw")
    assert store.roles("bob", "example.com") == ()
    HtdigestUserStore(path).set_password("bob", "example.com", "new")  # another process
    assert store.ha1("bob", "example.com", "MD5") == md5_ha1("bob", "example.com", "new")


def test_htdigest_list_remove_and_unknown_users(tmp_path: Path) -> None:
    store = HtdigestUserStore(tmp_path / "users.htdigest")
    assert store.list() == [] and store.ha1("alice", "example.com", "MD5") is None
    store.add("carol", "b.example", PASSWORD)
    store.add("alice", "b.example", PASSWORD, roles=["x"])
    store.add("bob", "a.example", PASSWORD)
    assert store.list() == [
        UserRecord("bob", "a.example", (), True, ("MD5",)),
        UserRecord("alice", "b.example", ("x",), True, ("MD5",)),
        UserRecord("carol", "b.example", (), True, ("MD5",)),
    ]
    assert [r.username for r in store.list("b.example")] == ["alice", "carol"]
    with pytest.raises(ValueError, match="already exists"):
        store.add("bob", "a.example", PASSWORD)
    assert store.remove("alice", "b.example") is True
    assert store.remove("alice", "b.example") is False
    assert store.roles("alice", "b.example") is None
    assert "alice" not in (tmp_path / "users.htdigest.roles").read_text()
    with pytest.raises(UnknownUserError):
        store.set_password("alice", "b.example", PASSWORD)
    with pytest.raises(UnknownUserError):
        store.set_roles("alice", "b.example", ["y"])


def test_htdigest_set_roles_and_invalid_names(tmp_path: Path) -> None:
    store = HtdigestUserStore(tmp_path / "users.htdigest")
    store.add("alice", "example.com", PASSWORD)
    store.set_roles("alice", "example.com", ["b", "a"])
    assert HtdigestUserStore(tmp_path / "users.htdigest").roles("alice", "example.com") == ("a", "b")
    with pytest.raises(ValueError, match="not a valid SIP user name"):
        store.add("a:b", "example.com", PASSWORD)
    with pytest.raises(ValueError, match="not a domain name"):
        store.add("bob", "ex:ample", PASSWORD)
    assert store.ha1("a:b", "example.com", "MD5") is None


