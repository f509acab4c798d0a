"""The credential stores: the SQL UserStore's shared suite (user_store_contract)
on SQLite, what is particular to SQLite and to errors, and the htdigest file.
The same suite on PostgreSQL: tests/integration/test_users_postgresql.py."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from user_store_contract import *  # noqa: F403  (the shared suite, run on the store below)
from user_store_contract import NEW_PASSWORD, PASSWORD, open_store

from sipshield.auth._digest import compute_ha1
from sipshield.auth._htdigest import HtdigestUserStore
from sipshield.auth._keys import KeyFile
from sipshield.auth._users import CredentialStoreError, UnknownUserError, UserRecord, UserStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UserStore]:
    yield from open_store(f"sqlite:///{tmp_path / 'sipshield.db'}", tmp_path / "credential.keys")


def test_private_ha1_is_h_of_username_realm_password() -> None:
    # RFC 7616 3.4.2 A1 = username ":" realm ":" passwd, names from its 3.9.1 example.
    args = ("Mufasa", "http-auth@example.org", "Circle of Life")
    assert compute_ha1("MD5", *args) == hashlib.md5(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    assert compute_ha1("SHA-256", *args) == hashlib.sha256(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    assert compute_ha1("SHA-512-256", *args) == hashlib.new("sha512_256", b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()




def test_no_plaintext_password_in_sqlite_file(tmp_path: Path) -> None:
    store = UserStore(f"sqlite:///{tmp_path / 'sipshield.db'}", keys=KeyFile(tmp_path / "credential.keys"))
    store.create_schema()
    store.add("alice", "example.com", PASSWORD, admin=True)
    store.set_password("alice", "example.com", NEW_PASSWORD)
    store.close()
    files = list(tmp_path.glob("sipshield.db*"))  # the WAL and shm files too
    assert files
    for f in files:
        data = f.read_bytes()
        assert PASSWORD.encode() not in data and NEW_PASSWORD.encode() not in data, f






































# -- errors ------------------------------------------------------------------------------


def test_unreachable_database_raises_credential_store_error_without_password(tmp_path: Path) -> None:
    store = UserStore("postgresql+psycopg://sipshield:hunter2secret@127.0.0.1:1/nodb", keys=KeyFile(tmp_path / "credential.keys"))
    with pytest.raises(CredentialStoreError) as info:
        store.ha1("alice", "example.com", "SHA-256")
    message = str(info.value)
    assert "hunter2secret" not in message
    assert "\n" not in message
    assert "credential database postgresql+psycopg://sipshield:***@127.0.0.1:1/nodb" in message


def test_missing_schema_raises_credential_store_error(tmp_path: Path) -> None:
    store = UserStore(f"sqlite:///{tmp_path / 'empty.db'}", keys=KeyFile(tmp_path / "credential.keys"))
    with pytest.raises(CredentialStoreError, match="no such table"):
        store.list()


def test_closed_store_raises_credential_store_error(tmp_path: Path) -> None:
    store = UserStore(f"sqlite:///{tmp_path / 'x.db'}", keys=KeyFile(tmp_path / "credential.keys"))
    store.close()
    with pytest.raises(CredentialStoreError, match="closed"):
        store.create_schema()


def test_bad_url_and_unknown_algorithm_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CredentialStoreError, match="not a database URL"):
        UserStore("no url here", keys=KeyFile(tmp_path / "credential.keys"))
    with pytest.raises(ValueError, match="unknown digest algorithm"):
        UserStore("sqlite://", ("SHA-1",), keys=KeyFile(tmp_path / "credential.keys"))


def test_in_memory_sqlite_store_works_across_threads(tmp_path: Path) -> None:
    store = UserStore("sqlite://", ("MD5",), keys=KeyFile(tmp_path / "credential.keys"))
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
    store = UserStore(f"sqlite:///{path}", keys=KeyFile(tmp_path / "credential.keys"))
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




def test_htdigest_get_gives_the_record_and_none_for_unknown_or_invalid_names(tmp_path: Path) -> None:
    store = HtdigestUserStore(tmp_path / "users.htdigest")
    store.add("alice", "example.com", PASSWORD, roles=["staff"])
    assert store.get("alice", "Example.COM") == UserRecord("alice", "example.com", ("staff",), True, ("MD5",))
    assert store.get("bob", "example.com") is None
    assert store.get("alice", "other.example") is None
    assert store.get("a:b", "example.com") is None and store.get("alice", "ex:ample") is None


def test_htdigest_roles_taken_away_and_a_user_without_roles_removed(tmp_path: Path) -> None:
    path = tmp_path / "users.htdigest"
    store = HtdigestUserStore(path)
    store.add("alice", "example.com", PASSWORD, roles=["staff"])
    store.add("bob", "example.com", PASSWORD)
    store.set_roles("alice", "example.com", [])
    store.set_roles("bob", "example.com", [])  # had none: nothing to forget
    assert HtdigestUserStore(path).roles("alice", "example.com") == ()
    assert path.with_name("users.htdigest.roles").read_text() == ""
    assert store.remove("bob", "example.com") is True
    assert HtdigestUserStore(path).get("bob", "example.com") is None


def test_htdigest_unknown_user_errors_name_the_user_and_domain(tmp_path: Path) -> None:
    store = HtdigestUserStore(tmp_path / "users.htdigest")
    for write in (lambda: store.set_password("alice", "Example.com", PASSWORD), lambda: store.set_roles("alice", "Example.com", ["x"])):
        with pytest.raises(UnknownUserError) as raised:
            write()
        assert (raised.value.username, raised.value.domain) == ("alice", "example.com")
        assert str(raised.value) == "no user 'alice' in domain 'example.com'"


def test_htdigest_a_roles_file_that_does_not_parse_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "users.htdigest"
    store = HtdigestUserStore(path)
    store.add("alice", "example.com", PASSWORD)
    roles = path.with_name("users.htdigest.roles")
    roles.write_text("# comment\nalice:example.com:staff\nalice:staff\n")
    with pytest.raises(CredentialStoreError) as raised:
        store.roles("alice", "example.com")
    assert str(raised.value) == f"{roles}: roles file line 3: expected user:realm:role1,role2"
    path.write_text("alice:example.com\n")
    with pytest.raises(CredentialStoreError) as raised:
        HtdigestUserStore(path).ha1("alice", "example.com", "MD5")
    assert str(raised.value) == f"{path}: malformed htdigest file (error reading line 1)"


def test_htdigest_first_write_creates_the_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "sipshield" / "users.htdigest"
    HtdigestUserStore(path).add("alice", "example.com", PASSWORD, roles=["staff"])
    assert HtdigestUserStore(path).roles("alice", "example.com") == ("staff",)
    assert sorted(p.name for p in path.parent.iterdir()) == ["users.htdigest", "users.htdigest.roles"]


def test_htdigest_a_failed_write_raises_its_error_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    from sipshield.auth._htdigest import _write_atomic

    target = tmp_path / "users.htdigest"
    target.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(IsADirectoryError):
        _write_atomic(target, b"alice:example.com:0123\n")
    assert [p.name for p in tmp_path.iterdir()] == ["users.htdigest"]


def test_one_line_gives_the_drivers_error_type_and_first_line_never_the_sql() -> None:
    from sqlalchemy.exc import DBAPIError

    from sipshield.auth._users import one_line

    wrapped = DBAPIError("SELECT ha1 FROM sipshield_credentials WHERE user_id = ?", ("7",), ValueError("disk I/O error\nsecond line"))
    assert one_line(wrapped) == "ValueError: disk I/O error"
    assert one_line(DBAPIError("SELECT 1", (), KeyError())) == "KeyError"
    assert one_line(ImportError()) == "ImportError"
    assert one_line(ImportError("no module named psycopg\nhint")) == "ImportError: no module named psycopg"


def test_key_usage_counts_no_value_under_a_key_it_does_not_list() -> None:
    from sipshield.auth._users import KeyUsage

    usage = KeyUsage((("k1", 3),), plaintext=0, malformed=0)
    assert (usage.count("k1"), usage.count("k2")) == (3, 0)


def test_describe_users_names_each_gap_and_the_fix() -> None:
    from sipshield.auth._users import describe_users

    records = [
        UserRecord("alice", "example.com", (), True, ("SHA-256",)),
        UserRecord("bob", "example.com", (), True, ()),
        UserRecord("carol", "example.com", (), False, ()),  # disabled: no gap counted
    ]
    line, warning = describe_users("sql", records, ("SHA-256", "SHA-512-256"))
    assert line == "3 user(s) in sql"
    assert warning == (
        "sql: 1 without SHA-256, 2 without SHA-512-256 credentials (created before the algorithm was enabled; they cannot answer its "
        "challenge): set each one's password again with `sipshield user passwd USER`, which stores every enabled algorithm"
    )
    assert describe_users("sql", records[:1], ("SHA-256",)) == ("1 user(s) in sql", None)


def test_describe_keys_reports_current_older_lost_plain_and_malformed_values(store: UserStore) -> None:
    from user_store_contract import overwrite_value

    from sipshield.auth._users import describe_keys

    store.add("alice", "example.com", PASSWORD)
    first = store.keys.require().current
    line, warnings = describe_keys("sql", store)
    assert (line, warnings) == (f"sql: HA1 values encrypted under {store.keys.where}: current key {first}, 2 value(s) under it", [])
    rotated = store.keys.update(lambda k: k.rotated())
    store.add("bob", "example.com", PASSWORD)
    store.add("carol", "example.com", PASSWORD)
    store.add("dave", "example.com", PASSWORD)
    store.add("erin", "example.com", PASSWORD)
    overwrite_value(store, "carol", "SHA-256", compute_ha1("SHA-256", "carol", "example.com", PASSWORD))  # plain text
    overwrite_value(store, "carol", "SHA-512-256", "tampered")
    overwrite_value(store, "erin", "SHA-256", "tampered")
    overwrite_value(store, "erin", "SHA-512-256", "tampered")
    overwrite_value(store, "dave", "SHA-256", "enc1:00000001:" + "A" * 40)  # a key the file does not hold
    overwrite_value(store, "dave", "SHA-512-256", "enc1:00000002:" + "A" * 40)
    line, warnings = describe_keys("sql", store)
    assert line == (
        f"sql: HA1 values encrypted under {store.keys.where}: current key {rotated.current}, 2 value(s) under it, "
        "2 under older keys (finish with `sipshield keys rotate`, then `sipshield keys prune`)"
    )
    assert warnings == [
        "sql: 1 HA1 value(s) stored in plain text (from before encryption): a copy of the database is enough to log in as those users; "
        "run `sipshield keys migrate`",
        f"sql: 2 HA1 value(s) encrypted under key(s) 00000001, 00000002, which {store.keys.where} does not hold: those users cannot "
        "log in (restore the key file from its backup, or set their passwords again)",
        "sql: 3 stored HA1 value(s) are neither encrypted nor plain-text HA1s (tampered with?)",
    ]


def test_an_encrypted_value_without_its_key_file_says_the_file_is_missing(store: UserStore) -> None:
    from user_store_contract import overwrite_value

    store.add("alice", "example.com", PASSWORD)
    store.add("bob", "example.com", PASSWORD)
    overwrite_value(store, "bob", "SHA-256", "enc1:00000001:" + "A" * 40)  # a key the file does not hold
    with pytest.raises(CredentialStoreError) as raised:
        store.ha1("bob", "example.com", "SHA-256")
    assert "does not exist" not in str(raised.value) and str(raised.value).startswith("credential of bob@example.com (SHA-256) in ")
    store.keys.path.unlink()
    with pytest.raises(CredentialStoreError) as raised:
        store.ha1("alice", "example.com", "SHA-256")
    assert str(raised.value).endswith(f" ({store.keys.where} does not exist)")
