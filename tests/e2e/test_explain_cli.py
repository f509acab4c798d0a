"""``sipshield explain`` against a real twistd sipshield: an ACL deny and a
banned address are named as what decides, explaining counts and bans
nothing, and real datagrams from those sources then get what it said."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

from conftest import ephemeral_config

DENIED = "127.0.0.5"
BANNED = "127.0.0.7"
ACL = f"""
[acl]
[[acl.rules]]
action = "deny"
networks = ["{DENIED}/32"]
methods = ["INVITE"]
"""


def sipshield(*argv: str, url: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipshield.cli", *argv, "--url", url, "--config", str(config)], capture_output=True, text=True, timeout=60)


def invite(udp: tuple[str, int], source: str) -> bytes | None:
    """An INVITE from *source* over UDP; the proxy's answer, or None within 1 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        port = s.getsockname()[1]
        s.sendto(
            (
                f"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {source}:{port};branch=z9hG4bKex{port}\r\n"
                f"From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: ex{port}\r\nCSeq: 1 INVITE\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            udp,
        )
        s.settimeout(1.0)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def test_explain_names_the_acl_rule_and_the_ban_of_a_running_server(start_server, tmp_path: Path) -> None:
    server = start_server(ephemeral_config(extra=ACL, trusted=False))
    url = server.wait_for(r"admin API listening on (http://127\.0\.0\.1:\d+)/v1/").group(1)
    config = tmp_path / "sipshield.toml"
    udp = server.addresses["udp"]
    assert sipshield("ban", "add", BANNED, "--duration", "900", "--reason", "ticket 4711", url=url, config=config).returncode == 0

    line = "INVITE sip:bob@example.com SIP/2.0"
    banned = sipshield("explain", line, "--source", f"{BANNED}:5060", url=url, config=config)
    assert banned.returncode == 0, banned.stderr
    assert re.search(rf"^transport bans +drop: {re.escape(BANNED)} is banned for \d+ s more: operator: ticket 4711 .*<- decides here$", banned.stdout, re.M)
    assert "outcome: drop (transport step bans:" in banned.stdout

    denied = sipshield("explain", line, "--source", f"{DENIED}:5060", "--user", "alice", url=url, config=config)
    assert denied.returncode == 0, denied.stderr
    lines = denied.stdout.splitlines()
    assert lines[0] == f"{line}  from udp {DENIED}:5060  as alice@example.com"
    assert re.match(r"admission acl +answer 403 Forbidden: Not Allowed From This Source: INVITE from UDP 127\.0\.0\.5 to port \d+ denied by acl rule 0 "
                    rf"\(deny {re.escape(DENIED)}/32 INVITE\)  <- decides here$", lines[-2])  # fmt: skip
    assert lines[-1].startswith("outcome: answer 403 Forbidden: Not Allowed From This Source")

    challenged = sipshield("explain", line, "--source", "127.0.0.9:5060", "--transport", "tcp", "--json", url=url, config=config)
    result = json.loads(challenged.stdout)
    assert result["source"] == "tcp 127.0.0.9:5060" and result["outcome"].startswith("answer 407 Proxy Authentication Required")

    bad = sipshield("explain", "INVITE bob", "--source", "127.0.0.9", url=url, config=config)
    assert bad.returncode == 1 and "sipshield explain: 400: request: 'METHOD URI SIP/2.0'" in bad.stderr

    # Explaining counted and banned nothing: one ban, no ACL denial logged; then the real requests get what it said.
    bans = json.loads(sipshield("ban", "list", "--json", url=url, config=config).stdout)
    assert [b["key"] for b in bans] == [BANNED]
    assert "security event acl-deny" not in server.log
    assert invite(udp, BANNED) is None
    answer = invite(udp, DENIED)
    assert answer is not None and answer.startswith(b"SIP/2.0 403 Forbidden: Not Allowed From This Source")
    server.wait_for(r"security event acl-deny from 127\.0\.0\.5")
    assert (invite(udp, "127.0.0.9") or b"").startswith(b"SIP/2.0 407")
