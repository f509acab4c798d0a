"""Running the ``sipshield`` command in-process, as the CLI tests do."""

from __future__ import annotations

import io
import sys

import pytest

from sipshield import cli


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = "") -> tuple[int, str, str]:
    """``sipshield ARGV...`` with *stdin*: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
