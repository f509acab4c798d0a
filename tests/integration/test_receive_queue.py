"""ReceiveQueue reads a real UDP socket's receive buffer from /proc/net/udp (Linux)."""

from __future__ import annotations

import os
import socket

import pytest

from sipshield.transport._udp import ReceiveQueue

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/udp") and os.environ.get("CI") != "true", reason="needs Linux's /proc/net/udp")


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_the_share_grows_with_unread_datagrams_and_falls_to_zero_when_read(family: int, host: str) -> None:
    server = socket.socket(family, socket.SOCK_DGRAM)
    client = socket.socket(family, socket.SOCK_DGRAM)
    try:
        try:
            server.bind((host, 0))
        except OSError as e:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(f"cannot bind {host}: {e}")
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        queue = ReceiveQueue(server)
        assert queue.share() == 0.0
        for _ in range(50):
            client.sendto(b"x" * 400, server.getsockname()[:2])
        some = queue.share()
        for _ in range(150):
            client.sendto(b"x" * 400, server.getsockname()[:2])
        more = queue.share()
        assert some is not None and more is not None and 0 < some < more <= 1.0
        server.setblocking(False)
        for _ in range(200):
            server.recv(2048)
        assert queue.share() == 0.0
    finally:
        server.close()
        client.close()
