"""Packaging: the wheel carries the twistd dropin and every subpackage, and a
plain (non-editable) install into a new venv makes twistd list sipshield."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).parent.parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (found,) = out.glob("sipshield-*.whl")
    return found


def test_wheel_contains_dropin_and_every_subpackage(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/sipshield_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(n.endswith("dropin.cache") for n in names)
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "sipshield").rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} missing from the wheel (setup.cfg packages)"
    assert "sipshield/py.typed" in names


def test_plain_install_into_new_venv_is_seen_by_twistd(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # The venv must see its own install only: a PYTHONPATH pointing at the
    # source tree (and the egg-info the wheel build leaves there) would make
    # pip think sipshield is already installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], capture_output=True, text=True, timeout=600, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    help_text = subprocess.run([str(venv / "bin" / "twistd"), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert "sipshield" in help_text.stdout, help_text.stdout + help_text.stderr
    check = subprocess.run([str(venv / "bin" / "sipshield"), "check-config"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert check.returncode == 0, check.stderr
    assert "twistd plugin: visible" in check.stdout
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import passlib; print(passlib.__version__)"], capture_output=True, text=True, timeout=60, env=env)
    assert version.stdout.startswith("1.9"), f"passlib is not libpass: {version.stdout}"
