"""HA1 values encrypted at rest: the key file (sipshield/auth/_keys.py) and,
through the real service, what a tampered or undecryptable row does to a login.
What every SQL backend keeps (a dump holds no HA1, values bound to their row,
rotation, migration) is in tests/user_store_contract.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import PASSWORD, REALM, Proxy, proxy_service
from twisted.logger import globalLogPublisher
from user_store_contract import overwrite_value, stored_value

from sipshield.auth._keys import KeyFile, KeyFileError, KeySet
from sipshield.auth._users import CredentialStoreError, UserStore
from sipshield.config import parse_config


def test_the_key_file_is_created_on_first_use_owner_only(tmp_path: Path) -> None:
    keyfile = KeyFile(tmp_path / "credential.keys")
    assert keyfile.load() is None and not keyfile.exists()
    keys = keyfile.load_or_create(accept_plaintext=False)
    assert (tmp_path / "credential.keys").stat().st_mode & 0o777 == 0o600
    assert keyfile.require() == keys and keys.ids == (keys.current,)
    # A second creation (another process) uses the file that is there.
    assert KeyFile(tmp_path / "credential.keys").load_or_create(accept_plaintext=True) == keys


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_file_that_group_or_others_can_read_is_refused_naming_the_path(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "credential.keys"
    KeyFile(path).load_or_create(accept_plaintext=False)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=rf"key file {path} \(auth.key_file\): mode {mode:04o} .*chmod 600"):
        KeyFile(path).load()


def test_a_key_file_that_is_not_a_file_or_not_a_key_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match=r"dir \(auth.key_file\): not a regular file"):
        KeyFile(tmp_path / "dir").load()
    bad = tmp_path / "bad.keys"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"current 0a0b0c0d\nkey 0a0b0c0d c2hvcnQ\n")
    os.close(fd)
    with pytest.raises(KeyFileError, match=r"bad.keys \(auth.key_file\), line 2: key 0a0b0c0d is not 32 bytes"):
        KeyFile(bad).load()


def test_a_change_replaces_the_whole_file_and_keeps_its_mode(tmp_path: Path) -> None:
    keyfile = KeyFile(tmp_path / "credential.keys")
    first = keyfile.load_or_create(accept_plaintext=True)
    rotated = keyfile.update(KeySet.rotated)
    assert rotated.ids == (first.current, rotated.current) and rotated.current != first.current
    assert KeyFile(keyfile.path).require() == rotated  # another process sees the new file
    assert keyfile.path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credential.keys", "credential.keys.lock"]
    with pytest.raises(ValueError, match="is current"):
        rotated.without({rotated.current})


def test_a_running_store_follows_a_rotation_made_by_another_process(tmp_path: Path) -> None:
    server = UserStore(f"sqlite:///{tmp_path / 'u.db'}", keys=KeyFile(tmp_path / "credential.keys"))
    server.create_schema()
    server.add("alice", REALM, PASSWORD)
    assert server.ha1("alice", REALM, "SHA-256") is not None  # keys now cached by the server
    operator = UserStore(f"sqlite:///{tmp_path / 'u.db'}", keys=KeyFile(tmp_path / "credential.keys"))
    rotated = operator.keys.update(KeySet.rotated)
    operator.reencrypt(rotated)
    operator.keys.update(lambda k: k.without(set(k.ids) - {k.current}))
    assert server.key_usage().by_key == ((rotated.current, 2),)
    assert server.ha1("alice", REALM, "SHA-256") == operator.ha1("alice", REALM, "SHA-256")
    server.close()
    operator.close()


def test_an_encrypted_value_without_its_key_file_is_a_store_error_naming_the_file(tmp_path: Path) -> None:
    store = UserStore(f"sqlite:///{tmp_path / 'u.db'}", keys=KeyFile(tmp_path / "credential.keys"))
    store.create_schema()
    store.add("alice", REALM, PASSWORD)
    (tmp_path / "credential.keys").unlink()
    with pytest.raises(CredentialStoreError, match=r"credential of alice@example.com \(SHA-256\).*credential.keys \(auth.key_file\) does not exist"):
        store.ha1("alice", REALM, "SHA-256")
    store.close()


def test_auth_key_file_names_another_path_and_data_dir_is_the_default(tmp_path: Path) -> None:
    base = {"server": {"data_dir": str(tmp_path / "data")}}
    assert parse_config(base).credential_key_file == (tmp_path / "data" / "credential.keys", "server.data_dir; [auth] key_file moves it")
    moved = parse_config({**base, "auth": {"key_file": str(tmp_path / "secrets" / "keys")}})
    assert moved.credential_key_file == (tmp_path / "secrets" / "keys", "auth.key_file")
    with pytest.raises(Exception, match="auth.key_file"):
        parse_config({**base, "auth": {"key_file": ""}})
    with pytest.raises(Exception, match="auth.key_file"):
        parse_config({**base, "auth": {"key_file": 3}})


# -- through the real service -------------------------------------------------------------------


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    p = proxy_service(tmp_path, {"alice": (PASSWORD, ("staff",)), "bob": ("bob-long-secret", ("staff",))})
    yield p
    p.stop()


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _store(proxy: Proxy) -> UserStore:
    (store,) = proxy.service.user_stores
    return store  # type: ignore[no-any-return]


def _invite_outcome(proxy: Proxy) -> tuple[int, int]:
    proxy.send(proxy.authorized("INVITE"))
    return proxy.last().status, len(proxy.forwarded())


def test_alice_calls_with_her_encrypted_ha1(proxy: Proxy) -> None:
    proxy.register("bob", "sip:bob@192.0.2.20:5060")
    store = _store(proxy)
    assert stored_value(store, "alice", "SHA-256").startswith("enc1:")
    assert _invite_outcome(proxy) == (100, 1)


def test_a_tampered_row_gives_no_login_but_503_and_a_log_line_naming_the_row(proxy: Proxy, logged: list[dict[str, Any]]) -> None:
    proxy.register("bob", "sip:bob@192.0.2.20:5060")
    store = _store(proxy)
    value = stored_value(store, "alice", "SHA-256")
    overwrite_value(store, "alice", "SHA-256", value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))
    status, forwarded = _invite_outcome(proxy)
    assert (status, forwarded) == (503, 0)
    assert proxy.last().reason == "Authentication Backend Unavailable"
    assert proxy.last().headers.get("Retry-After")
    lines = [e.get("why", "") for e in logged if e.get("log_format", "").startswith("credential backend unavailable")]
    assert any("credential of alice@example.com (SHA-256)" in line and "does not decrypt" in line for line in lines), lines


def test_bobs_value_copied_into_alices_row_does_not_log_in_with_bobs_password(proxy: Proxy) -> None:
    proxy.register("bob", "sip:bob@192.0.2.20:5060")
    store = _store(proxy)
    overwrite_value(store, "alice", "SHA-256", stored_value(store, "bob", "SHA-256"))
    proxy.send(proxy.authorized("INVITE", password="bob-long-secret"))
    assert (proxy.last().status, len(proxy.forwarded())) == (503, 0)
    proxy.send(proxy.authorized("INVITE"))
    assert (proxy.last().status, len(proxy.forwarded())) == (503, 0)


def test_a_key_file_opened_to_others_fails_closed(proxy: Proxy) -> None:
    proxy.register("bob", "sip:bob@192.0.2.20:5060")
    store = _store(proxy)
    store.keys.path.chmod(0o644)
    assert _invite_outcome(proxy) == (503, 0)
    store.keys.path.chmod(0o600)
    assert _invite_outcome(proxy) == (100, 1)
