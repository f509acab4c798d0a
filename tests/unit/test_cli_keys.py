"""``sipshield keys status|migrate|rotate|prune``, and the warnings of
``sipshield check-config`` while plain-text HA1 values remain."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import run
from user_store_contract import older_database, overwrite_value, stored_value

from sipshield.auth._digest import compute_ha1
from sipshield.auth._keys import KeyFile
from sipshield.auth._users import UserStore

PASSWORD = "Keys-Cli-Long-Secret-81c2"
REALM = "example.com"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sipshield.toml"
    path.write_text('[server]\ndata_dir = "data"\ndomains = ["example.com"]\n')
    return path


def open_store(config_file: Path) -> UserStore:
    data = config_file.parent / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    store = UserStore(f"sqlite:///{data / 'sipshield.db'}", keys=KeyFile(data / "credential.keys"))
    store.create_schema()
    return store


def test_status_after_the_first_user_shows_its_values_under_the_current_key(config_file: Path, monkeypatch, capsys) -> None:
    assert run(monkeypatch, capsys, "user", "add", "alice", "--config", str(config_file), "--password-stdin", stdin=PASSWORD + "\n")[0] == 0
    code, out, err = run(monkeypatch, capsys, "keys", "status", "--config", str(config_file))
    current = KeyFile(config_file.parent / "data" / "credential.keys").require().current
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"key file {config_file.parent / 'data' / 'credential.keys'} (server.data_dir; [auth] key_file moves it)",
        "plain-text HA1 values: 0 (refused)",
        f"  key {current}: 2 value(s), current",
    ]


def test_an_older_database_is_warned_about_then_migrated(config_file: Path, monkeypatch, capsys) -> None:
    store = open_store(config_file)
    older_database(store, {"alice": PASSWORD, "bob": PASSWORD})
    code, out, _ = run(monkeypatch, capsys, "check-config", str(config_file))
    assert code == 0
    assert "WARNING: sql: 4 HA1 value(s) stored in plain text (from before encryption)" in out and "sipshield keys migrate" in out
    assert run(monkeypatch, capsys, "check-config", "--strict", str(config_file))[0] == 1

    code, out, err = run(monkeypatch, capsys, "keys", "migrate", "--config", str(config_file))
    keys = store.keys.require()
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"4 value(s) written under key {keys.current}", "no plain-text value is left: the key file now refuses them"]
    assert keys.accept_plaintext is False
    assert stored_value(store, "alice", "SHA-256").startswith(f"enc1:{keys.current}:")
    assert store.ha1("alice", REALM, "SHA-256") == compute_ha1("SHA-256", "alice", REALM, PASSWORD)
    code, out, _ = run(monkeypatch, capsys, "check-config", "--strict", str(config_file))
    assert code == 0 and "WARNING" not in out
    assert f"users: sql: HA1 values encrypted under key file {store.keys.path}" in out
    store.close()


def test_rotate_then_prune_removes_the_old_key_once_no_value_uses_it(config_file: Path, monkeypatch, capsys) -> None:
    store = open_store(config_file)
    store.add("alice", REALM, PASSWORD)
    old_keys = store.keys.require()
    code, out, _ = run(monkeypatch, capsys, "keys", "rotate", "--config", str(config_file))
    new = store.keys.require().current
    assert code == 0 and out.splitlines() == [
        f"new current key {new} (the old ones stay until `sipshield keys prune`)", f"2 value(s) written under key {new}",
    ]
    # A writer that still had the old key file wrote a value under the old key meanwhile.
    stale = old_keys.seal(compute_ha1("SHA-256", "alice", REALM, PASSWORD), "alice", REALM, "SHA-256")
    overwrite_value(store, "alice", "SHA-256", stale)
    code, out, _ = run(monkeypatch, capsys, "keys", "prune", "--config", str(config_file))
    assert code == 0 and out.splitlines() == ["no key to remove", f"kept key {old_keys.current}", f"kept key {new}"]
    assert store.ha1("alice", REALM, "SHA-256") == compute_ha1("SHA-256", "alice", REALM, PASSWORD)
    code, out, _ = run(monkeypatch, capsys, "keys", "status", "--config", str(config_file))
    assert f"  key {old_keys.current}: 1 value(s), old: `sipshield keys rotate` moves its values to the current key" in out.splitlines()

    assert run(monkeypatch, capsys, "keys", "migrate", "--config", str(config_file))[1] == f"1 value(s) written under key {new}\n"
    code, out, _ = run(monkeypatch, capsys, "keys", "prune", "--config", str(config_file))
    assert code == 0 and out.splitlines() == [f"removed key {old_keys.current}", f"kept key {new}"]
    assert store.keys.require().ids == (new,)
    assert store.ha1("alice", REALM, "SHA-256") == compute_ha1("SHA-256", "alice", REALM, PASSWORD)
    store.close()


def test_status_shows_values_under_a_key_the_file_lost(config_file: Path, monkeypatch, capsys) -> None:
    store = open_store(config_file)
    store.add("alice", REALM, PASSWORD)
    lost = store.keys.require().current
    store.keys.path.unlink()
    store.add("bob", REALM, PASSWORD)  # a new key file, as after losing the old one
    code, out, _ = run(monkeypatch, capsys, "keys", "status", "--config", str(config_file))
    assert code == 0 and f"  key {lost}: 2 value(s), MISSING: not in the key file, those users cannot log in" in out.splitlines()
    code, out, _ = run(monkeypatch, capsys, "check-config", str(config_file))
    assert f"2 HA1 value(s) encrypted under key(s) {lost}, which key file" in out
    store.close()


def test_a_key_file_others_can_read_is_refused_by_every_keys_command(config_file: Path, monkeypatch, capsys) -> None:
    store = open_store(config_file)
    store.add("alice", REALM, PASSWORD)
    store.keys.path.chmod(0o644)
    for command in ("status", "migrate", "rotate", "prune"):
        code, out, err = run(monkeypatch, capsys, "keys", command, "--config", str(config_file))
        assert (code, out) == (1, "")
        assert err.startswith(f"sipshield keys {command}: key file {store.keys.path} (server.data_dir; [auth] key_file moves it): mode 0644")
    code, out, _ = run(monkeypatch, capsys, "check-config", str(config_file))
    assert f"WARNING: sql: key file {store.keys.path}" in out and "mode 0644" in out
    store.close()
