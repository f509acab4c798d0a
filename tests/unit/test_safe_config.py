"""A configuration cannot be unsafe by accident: a pipeline that would serve
requests unauthenticated, or trusted networks covering everything, are
refused at start and by ``sipshield check-config`` unless ``[security]
allow_unauthenticated = true`` says so; then every start warns."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipshield import cli
from sipshield.config import DEFAULT_STAGES, ConfigError, parse_config

WITHOUT_AUTH = ["sanity", "options", "dialog", "registrar", "location", "routes", "final"]  # the README's old example


def config(tmp_path: Path, **sections: dict) -> dict:
    return {"server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"]}, **sections}


@pytest.mark.parametrize(
    ("sections", "key", "why"),
    [
        ({"pipeline": {"stages": WITHOUT_AUTH}}, "pipeline.stages", 'no "auth" stage'),
        ({"pipeline": {"stages": [s for s in DEFAULT_STAGES if s != "rbac"]}}, "pipeline.stages", 'no "rbac" stage'),
        ({"pipeline": {"stages": ["sanity", "registrar", "auth", "rbac", "final"]}}, "pipeline.stages", '"auth" comes after "registrar"'),
        ({"pipeline": {"stages": ["sanity", "auth", "routes", "rbac", "final"]}}, "pipeline.stages", '"rbac" comes after "routes"'),
        ({"auth": {"trusted_sources": ["0.0.0.0/0"]}}, "auth.trusted_sources", "every IPv4 address"),
        ({"auth": {"trusted_sources": ["::/0"]}}, "auth.trusted_sources", "every IPv6 address"),
        ({"auth": {"trusted_sources": ["0.0.0.0/1", "128.0.0.0/1"]}}, "auth.trusted_sources", "every IPv4 address"),
    ],
)
def test_an_unsafe_posture_is_refused_naming_the_key_and_why(tmp_path: Path, sections: dict, key: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(tmp_path, **sections))
    assert info.value.key == key
    assert why in str(info.value) and "allow_unauthenticated" in str(info.value)
    allowed = parse_config(config(tmp_path, security={"allow_unauthenticated": True}, **sections))
    assert any(why in warning for warning in allowed.warnings())


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"pipeline": {"stages": ["sanity", "auth", "rbac", "registrar", "final"]}},
        {"auth": {"trusted_sources": ["10.0.0.0/8", "192.168.0.0/16"]}},
        {"auth": {"trusted_sources": ["0.0.0.0/1"]}},
    ],
)
def test_a_safe_posture_starts_without_warnings(tmp_path: Path, sections: dict) -> None:
    assert parse_config(config(tmp_path, **sections)).warnings() == []


def test_security_section_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(tmp_path, security={"allow_unauthenticated": "yes"}))
    assert info.value.key == "security.allow_unauthenticated"
    with pytest.raises(ConfigError) as info:
        parse_config(config(tmp_path, security={"allow_everything": True}))
    assert "allow_everything" in str(info.value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sipshield.toml"
    path.write_text("[server]\ndata_dir = 'data'\nlisten = ['udp:0:interface=127.0.0.1']\n\n" + text)
    return path


def test_check_config_refuses_the_unsafe_posture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"[pipeline]\nstages = {WITHOUT_AUTH!r}\n")
    assert cli.main(["check-config", str(path)]) == 1
    assert 'pipeline.stages: no "auth" stage' in capsys.readouterr().err


def test_check_config_strict_fails_on_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"[security]\nallow_unauthenticated = true\n\n[pipeline]\nstages = {WITHOUT_AUTH!r}\n")
    assert cli.main(["check-config", str(path)]) == 0
    assert 'WARNING: pipeline.stages: no "auth" stage' in capsys.readouterr().out
    assert cli.main(["check-config", "--strict", str(path)]) == 1
    assert "--strict" in capsys.readouterr().err
    assert cli.main(["check-config", "--strict", str(write(tmp_path, ""))]) == 0
