"""Packaging: the wheel carries the twistd dropin and every subpackage, and a
plain (non-editable) install into a new venv makes twistd list sipshield.

No package registry while the tests run: the wheel is built with the build
dependencies already installed in the test environment (pyproject's
build-system requires: setuptools and wheel, in the ``test`` extra), and
installed without dependencies and without an index into a venv that sees
the test environment's packages for its dependencies.  Every pip here runs
with its index pointed at a closed local port, so a download fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).parent.parent.parent
# pip may not reach a registry: port 9 (discard) on loopback refuses at once.
OFFLINE = {"PIP_INDEX_URL": "http://127.0.0.1:9/", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _offline_env() -> dict[str, str]:
    # No PYTHONPATH: a PYTHONPATH pointing at the source tree (and the
    # egg-info the wheel build leaves there) would make pip think sipshield
    # is already installed, and the venv would import the tree, not the wheel.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    return {**env, **OFFLINE}


# What a build must not see: the artefacts of earlier builds (a stale build/lib
# would put files setup.cfg no longer lists into the wheel), venvs, caches.
_NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", ".venv*", ".tox", ".*_cache", ".hypothesis", ".benchmarks",
                                     "__pycache__", "dropin.cache", ".coverage*")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a clean copy of the tree: nothing stale gets in, and the build leaves nothing in the checkout.
    source = tmp_path_factory.mktemp("source") / "sipshield"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300, env=_offline_env(),
    )
    assert build.returncode == 0, "building the wheel needs setuptools>=68 and wheel installed (the test extra):\n" + build.stderr[-3000:]
    (found,) = out.glob("sipshield-*.whl")
    return found


def test_wheel_contains_dropin_and_every_subpackage(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/sipshield_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(n.endswith("dropin.cache") for n in names)
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "sipshield").rglob("__init__.py") if "__pycache__" not in p.parts}
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} missing from the wheel (setup.cfg packages)"
    assert "sipshield/py.typed" in names


def test_plain_install_into_new_venv_is_seen_by_twistd(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = _offline_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    python = str(venv / "bin" / "python")
    # The dependencies come from the test environment: a .pth in the new venv
    # puts its site-packages after the venv's own (the equivalent of
    # --system-site-packages when the tests themselves run in a venv).
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True, timeout=60, env=env)
    outer = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    # Installed before the .pth exists: through it pip would find the test
    # environment's own sipshield and call the wheel "already satisfied".
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=600, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    (Path(site.stdout.strip()) / "test-environment.pth").write_text("".join(f"{path}\n" for path in outer))
    # The test environment may have sipshield (and its dropin) installed too:
    # the venv must run the wheel's, or the checks below prove nothing.
    # (twisted itself is the test environment's, so its plugin path may list
    # that environment's copy of the dropin first: the wheel's must be there
    # too, and the sipshield it imports is the venv's.)
    where = subprocess.run([python, "-c", "import sipshield; print(sipshield.__file__)"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), f"{where.stdout.strip()} is not the wheel's install in {venv}"
    assert (Path(site.stdout.strip()) / "twisted" / "plugins" / "sipshield_plugin.py").is_file(), "the wheel installed no dropin"
    # Twisted (and its twistd script) is the test environment's: run twistd with the venv's python.
    twistd = [python, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())"]
    help_text = subprocess.run([*twistd, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert "sipshield" in help_text.stdout, help_text.stdout + help_text.stderr
    check = subprocess.run([str(venv / "bin" / "sipshield"), "check-config"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert check.returncode == 0, check.stderr
    assert "twistd plugin: visible" in check.stdout
