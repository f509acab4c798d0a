"""``sipshield user add|remove|list|passwd|roles``: the operator's credential tool."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import run

import sipshield
from sipshield import cli
from sipshield.auth._keys import KeyFile
from sipshield.auth._users import UserStore

PASSWORD = "Cli-Plaintext-Never-Stored-93b1"
NEW_PASSWORD = "Cli-Second-Plaintext-Never-Stored-5e07"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory, so the embedded default's ./sipshield-data is ours."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sipshield.toml"
    path.write_text('[server]\ndata_dir = "data"\ndomains = ["voip.example.com", "example.org"]\n')
    return path


def prompts(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """Answer getpass prompts in order; returns the prompts shown."""
    asked: list[str] = []
    queue = list(answers)

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        asked.append(prompt)
        if not queue:
            raise EOFError
        return queue.pop(0)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    return asked


def db_rows(db: Path) -> Iterator[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        for table in ("sipshield_users", "sipshield_credentials"):
            yield from conn.execute(f"SELECT * FROM {table}")
    finally:
        conn.close()


def sha256_ha1(user: str, realm: str, password: str) -> str:
    return hashlib.sha256(f"{user}:{realm}:{password}".encode()).hexdigest()


# -- add ------------------------------------------------------------------------------------


def test_add_without_config_uses_default_data_dir_created_owner_only(workdir: Path, monkeypatch, capsys) -> None:
    code, out, err = run(monkeypatch, capsys, "user", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert (code, err) == (0, "")
    assert out.strip() == "added alice@localhost"
    data_dir = workdir / "sipshield-data"
    assert data_dir.stat().st_mode & 0o777 == 0o700
    store = UserStore(f"sqlite:///{data_dir / 'sipshield.db'}", keys=KeyFile(data_dir / "credential.keys"))
    assert store.ha1("alice", "localhost", "SHA-256") == sha256_ha1("alice", "localhost", PASSWORD)
    store.close()


def test_add_prompts_twice_and_uses_first_configured_domain(workdir: Path, config_file: Path, monkeypatch, capsys) -> None:
    asked = prompts(monkeypatch, PASSWORD, PASSWORD)
    code, out, err = run(monkeypatch, capsys, "user", "add", "bob", "--config", str(config_file), "--roles", "staff,admin")
    assert (code, err) == (0, "")
    assert asked == ["Password for bob@voip.example.com: ", "Again: "]
    store = UserStore(f"sqlite:///{workdir / 'data' / 'sipshield.db'}", keys=KeyFile(workdir / "data" / "credential.keys"))
    assert store.roles("bob", "voip.example.com") == ("admin", "staff")
    assert store.ha1("bob", "voip.example.com", "SHA-512-256") is not None
    store.close()


def test_add_refuses_mismatched_passwords(workdir: Path, monkeypatch, capsys) -> None:
    prompts(monkeypatch, PASSWORD, PASSWORD + "typo")
    code, out, err = run(monkeypatch, capsys, "user", "add", "alice")
    assert code == 1 and out == ""
    assert err == "sipshield user add: passwords do not match\n"


def test_add_refuses_empty_stdin_password(workdir: Path, monkeypatch, capsys) -> None:
    code, _, err = run(monkeypatch, capsys, "user", "add", "alice", "--password-stdin", stdin="")
    assert code == 1 and err == "sipshield user add: no password on standard input\n"


def test_add_existing_user_is_one_line_error(workdir: Path, monkeypatch, capsys) -> None:
    run(monkeypatch, capsys, "user", "add", "alice", "--password-stdin", stdin=PASSWORD)
    code, _, err = run(monkeypatch, capsys, "user", "add", "alice", "--password-stdin", stdin=PASSWORD)
    assert code == 1
    assert err == "sipshield user add: user 'alice' already exists in domain 'localhost'\n"


@pytest.mark.parametrize("name", ["bad@name", "has space", "a:b"])
def test_add_bad_name_is_one_line_error_before_asking_a_password(workdir: Path, monkeypatch, capsys, name: str) -> None:
    asked = prompts(monkeypatch)
    code, _, err = run(monkeypatch, capsys, "user", "add", name)
    assert code == 1 and asked == []
    assert err.startswith("sipshield user add: ") and "not a valid SIP user name" in err and err.count("\n") == 1


def test_password_is_never_a_command_line_argument(workdir: Path, monkeypatch, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["user", "add", "alice", "--password", PASSWORD])
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_unreadable_config_is_one_line_error(workdir: Path, monkeypatch, capsys) -> None:
    code, _, err = run(monkeypatch, capsys, "user", "list", "--config", str(workdir / "missing.toml"))
    assert code == 1
    assert err == f"sipshield user list: {workdir / 'missing.toml'}: file not found\n"
    (workdir / "broken.toml").write_text("[server\n")
    code, _, err = run(monkeypatch, capsys, "user", "list", "--config", str(workdir / "broken.toml"))
    assert code == 1 and "not valid TOML" in err and err.count("\n") == 1


def test_unreachable_database_is_one_line_error(workdir: Path, monkeypatch, capsys) -> None:
    cfg = workdir / "pg.toml"
    cfg.write_text('[database]\nurl = "postgresql://sipshield:hunter2pw@127.0.0.1:1/nodb"\n')
    code, _, err = run(monkeypatch, capsys, "user", "list", "--config", str(cfg))
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("sipshield user list: credential database postgresql+psycopg://sipshield:***@127.0.0.1:1/nodb")
    assert "hunter2pw" not in err


# -- list, passwd, roles, remove ---------------------------------------------------------------------


def test_list_shows_a_table(workdir: Path, config_file: Path, monkeypatch, capsys) -> None:
    cfg = str(config_file)
    run(monkeypatch, capsys, "user", "add", "carol", "--config", cfg, "--domain", "example.org", "--password-stdin", stdin=PASSWORD)
    run(monkeypatch, capsys, "user", "add", "bob", "--config", cfg, "--roles", "staff", "--admin", "--password-stdin", stdin=PASSWORD)
    code, out, err = run(monkeypatch, capsys, "user", "list", "--config", cfg)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "user   domain            roles  enabled  algorithms           md5",
        "carol  example.org       -      yes      SHA-256,SHA-512-256  -",
        "bob    voip.example.com  staff  yes      SHA-256,SHA-512-256  -",
    ]
    code, out, _ = run(monkeypatch, capsys, "user", "list", "--config", cfg, "--domain", "example.org")
    assert [line.split()[0] for line in out.splitlines()] == ["user", "carol"]


def test_list_on_empty_store_prints_only_the_header(workdir: Path, monkeypatch, capsys) -> None:
    code, out, _ = run(monkeypatch, capsys, "user", "list")
    assert code == 0 and out.split() == ["user", "domain", "roles", "enabled", "algorithms", "md5"]


def test_passwd_replaces_the_ha1(workdir: Path, monkeypatch, capsys) -> None:
    run(monkeypatch, capsys, "user", "add", "alice", "--password-stdin", stdin=PASSWORD)
    prompts(monkeypatch, NEW_PASSWORD, NEW_PASSWORD)
    code, out, err = run(monkeypatch, capsys, "user", "passwd", "alice")
    assert (code, err) == (0, "") and out.strip() == "password changed for alice@localhost"
    store = UserStore(f"sqlite:///{workdir / 'sipshield-data' / 'sipshield.db'}", keys=KeyFile(workdir / "sipshield-data" / "credential.keys"))
    assert store.ha1("alice", "localhost", "SHA-256") == sha256_ha1("alice", "localhost", NEW_PASSWORD)
    store.close()


def test_passwd_unknown_user_fails_before_prompting(workdir: Path, monkeypatch, capsys) -> None:
    asked = prompts(monkeypatch, PASSWORD, PASSWORD)
    code, _, err = run(monkeypatch, capsys, "user", "passwd", "ghost")
    assert code == 1 and asked == []
    assert err == "sipshield user passwd: no user 'ghost' in domain 'localhost'\n"


def test_roles_set_add_remove_and_show(workdir: Path, monkeypatch, capsys) -> None:
    run(monkeypatch, capsys, "user", "add", "alice", "--roles", "agent", "--password-stdin", stdin=PASSWORD)
    assert run(monkeypatch, capsys, "user", "roles", "alice", "--set", "staff,trunk")[1].strip() == "alice@localhost: staff,trunk"
    assert run(monkeypatch, capsys, "user", "roles", "alice", "--add", "admin", "--remove", "staff")[1].strip() == "alice@localhost: admin,trunk"
    assert run(monkeypatch, capsys, "user", "roles", "alice")[1].strip() == "alice@localhost: admin,trunk"
    assert run(monkeypatch, capsys, "user", "roles", "alice", "--set", "")[1].strip() == "alice@localhost: (no roles)"
    code, _, err = run(monkeypatch, capsys, "user", "roles", "alice", "--add", "bad role")
    assert code == 1 and "not a valid role name" in err
    code, _, err = run(monkeypatch, capsys, "user", "roles", "ghost", "--set", "agent")
    assert code == 1 and err == "sipshield user roles: no user 'ghost' in domain 'localhost'\n"


def test_remove_then_remove_again_fails(workdir: Path, monkeypatch, capsys) -> None:
    run(monkeypatch, capsys, "user", "add", "alice", "--password-stdin", stdin=PASSWORD)
    code, out, _ = run(monkeypatch, capsys, "user", "remove", "alice")
    assert code == 0 and out.strip() == "removed alice@localhost"
    code, _, err = run(monkeypatch, capsys, "user", "remove", "alice")
    assert code == 1 and err == "sipshield user remove: no user 'alice' in domain 'localhost'\n"


# -- the htdigest backend ------------------------------------------------------------------------------


def test_file_backend_writes_htdigest_with_md5_ha1(workdir: Path, monkeypatch, capsys) -> None:
    ht = workdir / "users.htdigest"
    code, _, err = run(
        monkeypatch, capsys, "user", "add", "phone1", "--backend", "file", "--file", str(ht), "--domain", "pbx.example", "--roles", "agent",
        "--password-stdin", stdin=PASSWORD,
    )
    assert (code, err) == (0, "")
    assert ht.read_text() == f"phone1:pbx.example:{hashlib.md5(f'phone1:pbx.example:{PASSWORD}'.encode()).hexdigest()}\n"
    code, out, _ = run(monkeypatch, capsys, "user", "list", "--file", str(ht))
    assert out.splitlines()[1].split() == ["phone1", "pbx.example", "agent", "yes", "MD5", "-"]
    assert not (workdir / "sipshield-data").exists()  # the SQL store was not touched


def test_file_backend_refuses_admin_and_needs_a_path(workdir: Path, monkeypatch, capsys) -> None:
    code, _, err = run(monkeypatch, capsys, "user", "add", "a", "--file", str(workdir / "h"), "--admin", "--password-stdin", stdin=PASSWORD)
    assert code == 1 and "--admin needs the SQL backend" in err
    code, _, err = run(monkeypatch, capsys, "user", "list", "--backend", "file")
    assert code == 1 and err == "sipshield user list: --backend file needs --file PATH (an htdigest file) or [auth] file\n"


# -- the other subcommands still work ------------------------------------------------------------------


def test_version_subcommand_still_works(capsys) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == sipshield.__version__


def test_check_config_subcommand_still_parses(workdir: Path, capsys) -> None:
    code = cli.main(["check-config", str(workdir / "missing.toml")])
    assert code == 1 and "file not found" in capsys.readouterr().err


# -- the real entry point ------------------------------------------------------------------------------


def test_python_m_sipshield_cli_user_add_stores_encrypted_ha1_rows_and_no_plaintext(tmp_path: Path) -> None:
    env = dict(os.environ)
    # The same sipshield the tests import (the work tree or the installed one).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(sipshield.__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "sipshield.cli", "user", "add", "alice", "--domain", "example.com", "--roles", "staff", "--admin", "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == "added alice@example.com"
    db = tmp_path / "sipshield-data" / "sipshield.db"
    conn = sqlite3.connect(db)
    try:
        creds = dict(conn.execute(
            "SELECT c.algorithm, c.ha1 FROM sipshield_credentials c JOIN sipshield_users u ON u.id = c.user_id WHERE u.username = 'alice'"
        ).fetchall())
    finally:
        conn.close()
    ha1s = {
        "SHA-256": sha256_ha1("alice", "example.com", PASSWORD),
        "SHA-512-256": hashlib.new("sha512_256", f"alice:example.com:{PASSWORD}".encode()).hexdigest(),
    }
    # The rows hold the HA1s encrypted, under the key file the command created (owner only).
    assert set(creds) == set(ha1s)
    assert all(value.startswith("enc1:") and ha1s[a] not in value for a, value in creds.items())
    keys = db.parent / "credential.keys"
    assert keys.stat().st_mode & 0o777 == 0o600
    store = UserStore(f"sqlite:///{db}", keys=KeyFile(keys))
    assert {a: store.ha1("alice", "example.com", a) for a in ha1s} == ha1s
    store.close()
    assert not any(PASSWORD in str(cell) for row in db_rows(db) for cell in row)
    for f in db.parent.glob("sipshield.db*"):
        assert PASSWORD.encode() not in f.read_bytes(), f


# -- weak passwords and undefined roles are refused -------------------------------------------------


@pytest.mark.parametrize(("name", "password", "why"), [
    ("alice", "short-pw1", "shorter than 12 characters"),
    ("alice", "alice", "shorter than 12 characters"),
    ("alicealice12", "alicealice12", "it is the user name"),
    ("alice", "xx-Alice-2024-xx", "it contains the user name"),
    ("1001", "my-1001-phone-pw", "it contains the user name"),
    ("alice", "password1234", "passwords SIP scanners try first"),
    ("alice", "Asterisk2024!", "passwords SIP scanners try first"),
    ("alice", "123456789012", "consecutive digits"),
    ("alice", "aaaaaaaaaaaaaa", "repeats one or two characters"),
], ids=["short", "short-username", "username", "contains-username", "extension-number", "common", "pbx-default", "digit-run", "repeated"])
@pytest.mark.parametrize("command", ["add", "passwd"])
def test_weak_password_is_refused_with_the_reason_and_nothing_is_written(workdir: Path, monkeypatch, capsys, command: str, name: str,
                                                                         password: str, why: str) -> None:
    if command == "passwd":
        assert run(monkeypatch, capsys, "user", "add", name, "--password-stdin", stdin=PASSWORD)[0] == 0
    code, out, err = run(monkeypatch, capsys, "user", command, name, "--password-stdin", stdin=password + "\n")
    assert (code, out) == (1, "")
    assert err.startswith(f"sipshield user {command}: weak password for {name}@localhost: ") and why in err and "--allow-weak" in err
    store = UserStore(f"sqlite:///{workdir / 'sipshield-data' / 'sipshield.db'}", keys=KeyFile(workdir / "sipshield-data" / "credential.keys"))
    try:
        stored = store.ha1(name, "localhost", "SHA-256")
    finally:
        store.close()
    assert stored == (sha256_ha1(name, "localhost", PASSWORD) if command == "passwd" else None)


def test_allow_weak_keeps_a_weak_password_with_a_warning(workdir: Path, monkeypatch, capsys) -> None:
    code, out, err = run(monkeypatch, capsys, "user", "add", "1001", "--allow-weak", "--password-stdin", stdin="1001\n")
    assert (code, out.strip()) == (0, "added 1001@localhost")
    assert err == "sipshield user add: WARNING: weak password for 1001@localhost (it is shorter than 12 characters), kept because of --allow-weak\n"
    store = UserStore(f"sqlite:///{workdir / 'sipshield-data' / 'sipshield.db'}", keys=KeyFile(workdir / "sipshield-data" / "credential.keys"))
    try:
        assert store.ha1("1001", "localhost", "SHA-256") == sha256_ha1("1001", "localhost", "1001")
    finally:
        store.close()


def test_min_length_raises_the_bar(workdir: Path, monkeypatch, capsys) -> None:
    code, _, err = run(monkeypatch, capsys, "user", "add", "alice", "--min-length", "40", "--password-stdin", stdin=PASSWORD)
    assert code == 1 and "shorter than 40 characters" in err
    assert run(monkeypatch, capsys, "user", "add", "alice", "--password-stdin", stdin=PASSWORD)[0] == 0


def test_a_strong_password_passes_quietly(workdir: Path, monkeypatch, capsys) -> None:
    code, out, err = run(monkeypatch, capsys, "user", "add", "1001", "--password-stdin", stdin="tulip-Orbit-7-canal\n")
    assert (code, out.strip(), err) == (0, "added 1001@localhost", "")


def test_undefined_role_is_refused_naming_it_and_the_defined_ones(workdir: Path, config_file: Path, monkeypatch, capsys) -> None:
    config_file.write_text(config_file.read_text() + '[roles]\nstaff = ["register", "call"]\nnight = ["register"]\n')
    cfg = str(config_file)
    code, out, err = run(monkeypatch, capsys, "user", "add", "bob", "--config", cfg, "--roles", "staff,admin,root", "--password-stdin", stdin=PASSWORD)
    assert (code, out) == (1, "")
    assert err == f"sipshield user add: role(s) admin, root not defined in [roles] of {cfg} (defined: night, staff)\n"
    assert run(monkeypatch, capsys, "user", "add", "bob", "--config", cfg, "--roles", "night", "--password-stdin", stdin=PASSWORD)[0] == 0
    code, _, err = run(monkeypatch, capsys, "user", "roles", "bob", "--config", cfg, "--add", "admin")
    assert code == 1 and err == f"sipshield user roles: role(s) admin not defined in [roles] of {cfg} (defined: night, staff)\n"
    assert run(monkeypatch, capsys, "user", "roles", "bob", "--config", cfg)[1].strip() == "bob@voip.example.com: night"


def test_embedded_default_refuses_an_unknown_role(workdir: Path, monkeypatch, capsys) -> None:
    code, _, err = run(monkeypatch, capsys, "user", "add", "alice", "--roles", "superuser", "--password-stdin", stdin=PASSWORD)
    assert code == 1
    assert err == "sipshield user add: role(s) superuser not defined in [roles] of the embedded default (defined: admin, agent, staff, trunk)\n"


# -- show and unlock-md5 --------------------------------------------------------------------------


def test_show_and_unlock_md5_for_a_user_locked_by_a_sha2_login(workdir: Path, monkeypatch, capsys) -> None:
    from sipshield.auth._downgrade import DowngradeLockStore

    run(monkeypatch, capsys, "user", "add", "alice", "--roles", "staff", "--password-stdin", stdin=PASSWORD)
    code, out, _ = run(monkeypatch, capsys, "user", "show", "alice")
    assert code == 0 and out.splitlines() == [
        "alice@localhost", "  roles: staff", "  enabled: yes", "  algorithms: SHA-256,SHA-512-256", "  md5: not locked"]
    locks = DowngradeLockStore(f"sqlite:///{workdir / 'sipshield-data' / 'sipshield.db'}")
    locks.mark("alice", "localhost", "SHA-256", 1_764_000_000.0)
    locks.mark("ldapuser", "localhost", "SHA-512-256", 1_764_000_000.0)  # a directory user: no row in the SQL store
    locks.close()
    code, out, _ = run(monkeypatch, capsys, "user", "show", "alice")
    assert out.splitlines()[-1] == ("  md5: locked since 2025-11-24 16:00:00 UTC (a SHA-256 login; "
                                    "`sipshield user unlock-md5 alice` lets MD5 in again)")
    assert run(monkeypatch, capsys, "user", "list")[1].splitlines()[1].split()[-1] == "locked"
    code, out, _ = run(monkeypatch, capsys, "user", "show", "ldapuser")
    assert code == 0 and "not in the sql user store" in out and "md5: locked since" in out
    assert run(monkeypatch, capsys, "user", "unlock-md5", "alice")[:2] == (0, "MD5 unlocked for alice@localhost\n")
    assert run(monkeypatch, capsys, "user", "unlock-md5", "alice")[:2] == (0, "MD5 was not locked for alice@localhost\n")
    assert run(monkeypatch, capsys, "user", "show", "alice")[1].splitlines()[-1] == "  md5: not locked"
    assert run(monkeypatch, capsys, "user", "unlock-md5", "ldapuser")[:2] == (0, "MD5 unlocked for ldapuser@localhost\n")
    code, _, err = run(monkeypatch, capsys, "user", "show", "ghost")
    assert code == 1 and err == "sipshield user show: no user 'ghost' in domain 'localhost'\n"
