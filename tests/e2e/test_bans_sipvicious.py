"""SIPVicious' svcrack against a real twistd sipshield: on the default its
User-Agent is dropped; with [scanners] off, it is banned after three wrong
passwords and never finds the password even though the password is in its
word list; with bans off too the same run finds it (so the word list, the
realm and the user are right, and it is the shield that stops it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import ephemeral_config, require_tool
from test_auth import add_user

PASSWORD = "Wintergarden-2026"
WORDS = [f"guess{n}" for n in range(1, 10)] + [PASSWORD] + [f"guess{n}" for n in range(10, 21)]


def svcrack(port: int, words: Path) -> str:
    tool = require_tool("svcrack", "sipvicious")
    result = subprocess.run(
        [tool, "-u", "alice", "--domain", "example.com", "-d", str(words), "-p", str(port), "--maximumtime=3", "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    return result.stdout + result.stderr


@pytest.mark.parametrize("shield", ["default", "bans-only", "off"])
def test_svcrack_gets_nothing_from_the_default_banned_after_three_failures_finds_the_password_only_unshielded(
    start_server, tmp_path: Path, shield: str,
) -> None:
    """default: svcrack's User-Agent (friendly-scanner) is dropped at admission,
    it hears nothing; bans-only ([scanners] off): three wrong passwords ban it;
    off (bans and scanners off): the same run finds the password."""
    extra = '[auth]\nalgorithms = ["MD5"]\n'  # svcrack speaks MD5 only
    if shield != "default":
        extra += "[scanners]\nenabled = false\n"
    if shield == "off":
        extra += "[bans]\nenabled = false\n"
    server = start_server(ephemeral_config(trusted=False, extra=extra))
    add_user(tmp_path, "alice", PASSWORD, "staff")
    words = tmp_path / "words.txt"
    words.write_text("\n".join(WORDS) + "\n")
    out = svcrack(server.addresses["udp"][1], words)
    if shield == "off":
        assert f"| alice     | {PASSWORD} |" in out, out
        return
    assert PASSWORD not in out and "found nothing" in out, out
    if shield == "default":
        assert "no server response" in out, out
        server.wait_for(r"security event scanner-drop from 127\.0\.0\.1 over UDP .*friendly-scanner")
        return
    server.wait_for(r"security event ban from 127\.0\.0\.1 over UDP \(user alice\): banned for 900 s: 3 failed logins in 60 s")
    server.stop()
    (ban,) = json.loads((tmp_path / "data" / "bans.json").read_text())["bans"]
    assert ban["key"] == "127.0.0.1"
