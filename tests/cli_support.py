"""Running the ``sipshield`` command in-process, as the CLI tests do."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from sipshield import cli


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = "") -> tuple[int, str, str]:
    """``sipshield ARGV...`` with *stdin*: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def add_user(workdir: Path, name: str, password: str, roles: str) -> None:
    """``sipshield user add`` in a subprocess, on the config in *workdir* (a running server's, in the e2e tests)."""
    result = subprocess.run(
        [sys.executable, "-m", "sipshield.cli", "user", "add", name, "--domain", "example.com", "--roles", roles,
         "--config", str(workdir / "sipshield.toml"), "--password-stdin", "--allow-weak"],  # test passwords
        input=password + "\n", capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
