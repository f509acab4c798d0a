"""Two real twistd sipshield nodes sharing the test's own redis-server
([state] backend = "redis"): ``sipshield ban add`` on node A's admin API, and
within a second node B drops that source's OPTIONS and INVITEs unanswered,
while another source still gets its answers from B; the ban lifted on A is
lifted on B."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from redis_support import RedisServer, start_nodes
from waiting import wait_until


def _request(method: str, udp: tuple[str, int], source: str, timeout: float) -> bytes | None:
    """Send *method* to the proxy from *source*; the first answer, or None within *timeout*."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        port = s.getsockname()[1]
        s.sendto((f"{method} sip:bob@{udp[0]}:{udp[1]} SIP/2.0\r\nVia: SIP/2.0/UDP {source}:{port};branch=z9hG4bKrn{port}{method}\r\n"
                  f"From: <sip:ops@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: rn{port}{method}\r\nCSeq: 1 {method}\r\n"
                  f"Contact: <sip:ops@{source}:{port}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), udp)
        s.settimeout(timeout)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def _cli(*argv: str) -> str:
    result = subprocess.run([sys.executable, "-m", "sipshield.cli", *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_a_ban_on_node_a_drops_the_source_on_node_b_within_a_second(tmp_path: Path, redis_server: RedisServer) -> None:
    extra = f'[state]\nbackend = "redis"\nredis_url = "{redis_server.url}"\nkey_prefix = "e2e:"\n'
    nodes = []
    try:
        for node in start_nodes(tmp_path, extra, nodes):
            node.wait_for(r"state: Redis at 127\.0\.0\.1:\d+/0 connected")
        a, b = nodes
        url = a.wait_for(r"admin API listening on (http://127\.0\.0\.1:\d+)/v1/").group(1)
        udp_b = b.addresses["udp"]
        assert _request("OPTIONS", udp_b, "127.0.0.7", 2.0) is not None  # answered before the ban
        assert b.wait_for(r"shield state: redis \(redis://127\.0\.0\.1:\d+/0, keys e2e:\*\)")

        _cli("ban", "add", "127.0.0.7", "--duration", "600", "--reason", "fraud, ticket 1", "--config", str(tmp_path / "a" / "sipshield.toml"), "--url", url)
        banned_at = time.monotonic()
        b.wait_for(r"security event ban from 127\.0\.0\.7 .*over redis .*on another node: .*fraud, ticket 1", timeout=1.0)
        assert time.monotonic() - banned_at < 1.0
        assert _request("OPTIONS", udp_b, "127.0.0.7", 1.0) is None, "node B still answered the source banned on A"
        assert _request("INVITE", udp_b, "127.0.0.7", 1.0) is None
        assert _request("OPTIONS", udp_b, "127.0.0.9", 2.0) is not None, "node B dropped a source nobody banned"
        ban_file = tmp_path / "b" / "data" / "bans.json"  # node B's ban file has it too (kept across B's restarts)
        wait_until(lambda: ban_file.exists() and "127.0.0.7" in ban_file.read_text(), 5, "node B's ban file getting the ban made on A")

        _cli("ban", "remove", "127.0.0.7", "--config", str(tmp_path / "a" / "sipshield.toml"), "--url", url)
        b.wait_for(r"security event unban from 127\.0\.0\.7", timeout=2.0)
        assert _request("OPTIONS", udp_b, "127.0.0.7", 2.0) is not None, "the ban lifted on A still dropped the source on B"
    finally:
        for node in nodes:
            node.stop()
