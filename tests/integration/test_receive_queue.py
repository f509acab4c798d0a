"""ReceiveQueue reads a real UDP socket's receive buffer from /proc/net/udp, ReceiveDelay its
datagrams' arrival times (Linux)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from sipshield.transport._udp import ReceiveDelay, ReceiveQueue

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


def test_the_delay_of_the_datagram_read_is_the_kernels_arrival_time_against_the_clock() -> None:
    """ReceiveDelay reads the kernel's time stamp of the datagram just read
    (SIOCGSTAMP) against its wall clock (here 250 ms ahead of the real one),
    only when armed, one figure per take()."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        probe = ReceiveDelay(server, wall=lambda: time.time() + 0.25)
        assert probe.take() is None and probe.armed  # nothing read yet; armed by take()
        client.sendto(b"x" * 400, server.getsockname())
        server.recv(2048)
        probe.measure()
        assert not probe.armed
        delay = probe.take()
        assert delay is not None and 0.2 < delay < 1.0, delay
        assert probe.take() is None
    finally:
        server.close()
        client.close()


def test_a_udp_listener_measures_the_first_datagram_read_after_each_take() -> None:
    """Through SIPListener's own socket and protocol (Twisted's UDP port read
    by hand: no reactor needs to run)."""
    from twisted.internet import reactor

    from sipshield.config import LimitsConfig, parse_listener
    from sipshield.transport import SIPListener

    received: list[object] = []

    class Handler:
        def refuse_source(self, host: str) -> bool:
            return False

        def message_received(self, message: object, flow: object) -> None:
            received.append(message)

        def bad_message(self, error: object, flow: object) -> None:
            received.append(error)

    listener = SIPListener(parse_listener("udp:port=0:interface=127.0.0.1"), Handler(), LimitsConfig(), reactor)  # type: ignore[arg-type]
    listener.listen()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert listener.receive_delay() is None  # nothing read
        client.sendto(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n", listener.address)
        listener.port.doRead()
        assert received, "the datagram was not read"
        delay = listener.receive_delay()
        assert delay is not None and 0 <= delay < 5.0
        assert listener.receive_delay() is None  # one figure per datagram read after the last call
    finally:
        client.close()
        listener.port.stopListening()
