"""``sipshield user add|remove|list|passwd|roles``: the operator's credential tool."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import sipshield
from sipshield import cli
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


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


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
    store = UserStore(f"sqlite:///{data_dir / 'sipshield.db'}")
    assert store.ha1("alice", "localhost", "SHA-256") == sha256_ha1("alice", "localhost", PASSWORD)
    store.close()


def test_add_prompts_twice_and_uses_first_configured_domain(workdir: Path, config_file: Path, monkeypatch, capsys) -> None:
    asked = prompts(monkeypatch, PASSWORD, PASSWORD)
    code, out, err = run(monkeypatch, capsys, "user", "add", "bob", "--config", str(config_file), "--roles", "staff,admin")
    assert (code, err) == (0, "")
    assert asked == ["Password for bob@voip.example.com: ", "Again: "]
    store = UserStore(f"sqlite:///{workdir / 'data' / 'sipshield.db'}")
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
        "user   domain            roles  enabled  algorithms",
        "carol  example.org       -      yes      SHA-256,SHA-512-256",
        "bob    voip.example.com  staff  yes      SHA-256,SHA-512-256",
    ]
    code, out, _ = run(monkeypatch, capsys, "user", "list", "--config", cfg, "--domain", "example.org")
    assert [line.split()[0] for line in out.splitlines()] == ["user", "carol"]


def test_list_on_empty_store_prints_only_the_header(workdir: Path, monkeypatch, capsys) -> None:
    code, out, _ = run(monkeypatch, capsys, "user", "list")
    assert code == 0 and out.split() == ["user", "domain", "roles", "enabled", "algorithms"]


def test_passwd_replaces_the_ha1(workdir: Path, monkeypatch, capsys) -> None:
    run(monkeypatch, capsys, "user", "add", "alice", "--password-stdin", stdin=PASSWORD)
    prompts(monkeypatch, NEW_PASSWORD, NEW_PASSWORD)
    code, out, err = run(monkeypatch, capsys, "user", "passwd", "alice")
    assert (code, err) == (0, "") and out.strip() == "password changed for alice@localhost"
    store = UserStore(f"sqlite:///{workdir / 'sipshield-data' / 'sipshield.db'}")
    assert store.ha1("alice", "localhost", "SHA-256") == sha256_ha1("alice", "localhost", NEW_PASSWORD)
    store.close()


def test_passwd_unknown_user_fails_before_prompting(workdir: Path, monkeypatch, capsys) -> None:
    asked = prompts(monkeypatch, PASSWORD, PASSWORD)
    code, _, err = run(monkeypatch, capsys, "user", "passwd", "ghost")
    assert code == 1 and asked == []
    assert err == "sipshield user passwd: no user 'ghost' in domain 'localhost'\n"


def test_roles_set_add_remove_and_show(workdir: Path, monkeypatch, capsys) -> None:
    run(monkeypatch, capsys, "user", "add", "alice", "--roles", "a", "--password-stdin", stdin=PASSWORD)
    assert run(monkeypatch, capsys, "user", "roles", "alice", "--set", "x,y")[1].strip() == "alice@localhost: x,y"
    assert run(monkeypatch, capsys, "user", "roles", "alice", "--add", "z", "--remove", "x")[1].strip() == "alice@localhost: y,z"
    assert run(monkeypatch, capsys, "user", "roles", "alice")[1].strip() == "alice@localhost: y,z"
    assert run(monkeypatch, capsys, "user", "roles", "alice", "--set", "")[1].strip() == "alice@localhost: (no roles)"
    code, _, err = run(monkeypatch, capsys, "user", "roles", "alice", "--add", "bad role")
    assert code == 1 and "not a valid role name" in err
    code, _, err = run(monkeypatch, capsys, "user", "roles", "ghost", "--set", "a")
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
        monkeypatch, capsys, "user", "add", "phone1", "--backend", "file", "--file", str(ht), "--domain", "pbx.example", "--roles", "legacy",
        "--password-stdin", stdin=PASSWORD,
    )
    assert (code, err) == (0, "")
    assert ht.read_text() == f"phone1:pbx.example:{hashlib.md5(f'phone1:pbx.example:{PASSWORD}'.encode()).hexdigest()}\n"
    code, out, _ = run(monkeypatch, capsys, "user", "list", "--file", str(ht))
    assert out.splitlines()[1].split() == ["phone1", "pbx.example", "legacy", "yes", "MD5"]
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


def test_python_m_sipshield_cli_user_add_stores_ha1_rows_and_no_plaintext(tmp_path: Path) -> None:
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
    assert creds == {
        "SHA-256": sha256_ha1("alice", "example.com", PASSWORD),
        "SHA-512-256": hashlib.new("sha512_256", f"alice:example.com:{PASSWORD}".encode()).hexdigest(),
    }
    assert not any(PASSWORD in str(cell) for row in db_rows(db) for cell in row)
    for f in db.parent.glob("sipshield.db*"):
        assert PASSWORD.encode() not in f.read_bytes(), f
