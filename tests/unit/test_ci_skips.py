"""Under CI=true every skip fails with its reason (tests/conftest.py), so a green
CI run means every test ran; outside CI a skip stays a skip."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SKIPPING = """
import pytest

def test_busy_port():
    pytest.skip("ports 5060/5061 are in use")

@pytest.mark.skipif(True, reason="no IPv6 loopback")
def test_no_ipv6():
    pass

def test_missing_module():
    pytest.importorskip("sipshield_no_such_module")

@pytest.mark.xfail(reason="a known bug, not a skip")
def test_known_bug():
    assert False

def test_runs():
    pass
"""

MODULE_SKIP = """
import pytest
pytest.importorskip("sipshield_no_such_module")

def test_never_collected():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest((Path(__file__).parent.parent / "conftest.py").read_text())
    pytester.makepyfile(test_skipping=SKIPPING, test_module_skip=MODULE_SKIP)
    return pytester


def test_under_ci_every_skip_fails_with_its_reason(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rfE", "--continue-on-collection-errors")
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped", 0) == 0
    assert outcomes["passed"] == 1 and outcomes["xfailed"] == 1
    assert outcomes.get("failed", 0) + outcomes.get("error", outcomes.get("errors", 0)) == 4
    for reason in ("ports 5060/5061 are in use", "no IPv6 loopback", "sipshield_no_such_module"):
        result.stdout.fnmatch_lines([f"*skipped under CI=true*{reason}*"])


def test_outside_ci_a_skip_stays_a_skip(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
