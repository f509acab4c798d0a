"""Every TOML block in README.md and docs/ is a configuration that parses
and keeps authentication on: copying an example must never turn security
off (an example pipeline without "auth" once let an unauthenticated
REGISTER take over a user)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from sipshield.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```toml\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        for number, match in enumerate(BLOCK.finditer(document.read_text()), 1):
            found.append((f"{document.relative_to(ROOT)}#{number}", match.group(1)))
    return found


def test_the_documents_have_toml_examples() -> None:
    assert len(blocks()) >= 3


@pytest.mark.parametrize(("where", "text"), blocks(), ids=[where for where, _ in blocks()])
def test_every_toml_example_parses_and_keeps_auth_and_rbac_on(where: str, text: str, tmp_path: Path) -> None:
    data = tomllib.loads(text)
    data.setdefault("server", {})["data_dir"] = str(tmp_path / "data")  # examples name paths of their own
    (tmp_path / "ldap.secret").write_text("example-only\n")  # the LDAP example's bind_password_file
    config = parse_config(data, base_dir=tmp_path)
    assert "auth" in config.stages and "rbac" in config.stages, where
    assert config.stages.index("auth") < config.stages.index("rbac"), where
