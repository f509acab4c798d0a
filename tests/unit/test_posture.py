"""The effective posture, said by ``sipshield check-config`` and the
start-up log: listeners, pipeline, algorithms, trust, stores (passwords
masked), and how many users lack credentials for an enabled algorithm."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipshield import cli
from sipshield.auth import KeyFile, UserStore
from sipshield.config import mask_url, parse_config


def write(tmp_path: Path, algorithms: list[str], udp_trust: bool = True) -> Path:
    path = tmp_path / "sipshield.toml"
    path.write_text(
        "[server]\ndata_dir = 'data'\nlisten = ['udp:0:interface=127.0.0.1', 'tcp:0:interface=127.0.0.1']\ndomains = ['example.com']\n\n"
        f"[auth]\nalgorithms = {algorithms!r}\ntrusted_sources = ['10.0.0.0/8', {{network = '127.0.0.2/32', udp = {str(udp_trust).lower()}}}]\ntrusted_role = 'trunk'\n"
    )
    return path


def users_created_with(tmp_path: Path, algorithms: list[str], names: list[str]) -> None:
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    store = UserStore(f"sqlite:///{tmp_path / 'data' / 'sipshield.db'}", algorithms=algorithms, keys=KeyFile(tmp_path / "data" / "credential.keys"))
    store.create_schema()
    for name in names:
        store.add(name, "example.com", f"{name}-long-secret", ["staff"])
    store.close()


def test_check_config_says_the_posture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", str(write(tmp_path, ["SHA-256", "MD5"]))]) == 0
    out = capsys.readouterr().out
    for expected in (
        "listeners: udp:127.0.0.1:0, tcp:127.0.0.1:0",
        "domains: example.com",
        "pipeline: sanity -> auth -> ratelimit -> options -> rbac -> egress -> media -> dialog -> registrar -> location -> routes -> final",
        "digest algorithms: SHA-256, MD5 (challenged in this order)",
        "trusted sources: 10.0.0.0/8 over TCP/TLS, 127.0.0.2/32 over TCP/TLS/UDP; acting as role trunk",
        "users: sql (sqlite:///",
        "users: 0 user(s) in sql (its database is created on first start)",
        "locations: memory",
    ):
        assert expected in out, (expected, out)


def test_users_lacking_an_enabled_algorithm_are_counted_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users_created_with(tmp_path, ["SHA-256"], ["alice", "bob"])  # before MD5 was enabled
    path = write(tmp_path, ["SHA-256", "MD5"], udp_trust=False)
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "users: 2 user(s) in sql" in out
    assert "WARNING: sql: 2 without MD5 credentials" in out and "sipshield user passwd" in out
    assert cli.main(["check-config", "--strict", str(path)]) == 1
    capsys.readouterr()
    users_created_with(tmp_path / "again", ["SHA-256", "MD5"], ["carol"])
    assert cli.main(["check-config", "--strict", str(write(tmp_path / "again", ["SHA-256", "MD5"], udp_trust=False))]) == 0
    assert "users: 1 user(s) in sql" in capsys.readouterr().out


def test_passwords_in_store_urls_are_masked(tmp_path: Path) -> None:
    config = parse_config({"server": {"data_dir": str(tmp_path)}, "database": {"url": "postgresql://sip:s3cret@db.example.com:5432/sip"},
                           "registrar": {"store": "sql"}})  # fmt: skip
    text = "\n".join(f"{label}: {value}" for label, value in config.posture())
    assert "s3cret" not in text
    assert "users: sql (postgresql+psycopg://sip:***@db.example.com:5432/sip)" in text
    assert "locations: sql (postgresql+psycopg://sip:***@db.example.com:5432/sip)" in text
    assert mask_url("sqlite:///a/b.db") == "sqlite:///a/b.db"
