"""SIPVicious' svwar (extension enumeration) against a real twistd sipshield
learns no extension: with the scanner filter on (the default) it hears
nothing; with it off, existing and unknown extensions get the same
challenge, so svwar gives up (REGISTER and INVITE scans) or, forced, cannot
tell them apart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import ephemeral_config, require_tool
from test_auth import add_user

EXISTING = ("101", "103")


def svwar(port: int, *extra: str) -> str:
    tool = require_tool("svwar", "sipvicious")
    result = subprocess.run([tool, "-e100-105", "-p", str(port), "--domain", "example.com", "--maximumtime=3", *extra, "127.0.0.1"],
                            capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


@pytest.mark.parametrize("scanners", [True, False], ids=["scanners-on", "scanners-off"])
def test_svwar_learns_no_extension(start_server, tmp_path: Path, scanners: bool) -> None:
    server = start_server(ephemeral_config(trusted=False, extra="" if scanners else "[scanners]\nenabled = false\n"))
    for user in EXISTING:
        add_user(tmp_path, user, "tulip-Orbit-7-canal", "staff")
    port = server.addresses["udp"][1]
    runs = [svwar(port), svwar(port, "-m", "INVITE"), svwar(port, "--force")]
    for out in runs:
        assert "found nothing" in out, out
        assert not any(f"| {user}" in out for user in EXISTING), out  # no results table naming one
    if scanners:
        server.wait_for(r"security event scanner-drop from 127\.0\.0\.1 over UDP")
    else:
        assert "authentication request for an unknown extension" in runs[0], runs[0]
