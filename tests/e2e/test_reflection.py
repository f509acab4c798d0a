"""End to end: the real twistd service can't be used to reflect traffic at a
third party.

The attacker sends from 127.0.0.2. The victim listens on 127.0.0.3 and
127.0.0.4, at the addresses that forged Via headers name. Whatever the Via
says, answers go only to the datagram's source, and a response that matches
no transaction of ours is dropped, not forwarded along its Vias.
"""

from __future__ import annotations

import socket

import pytest
from conftest import ephemeral_config

pytestmark = pytest.mark.e2e


def bind(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        pytest.skip(f"cannot bind {host}:{port} on loopback: {error}")
    sock.settimeout(0.5)
    return sock


def received(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except (TimeoutError, BlockingIOError):
            return out


@pytest.fixture
def victims():
    first = bind("127.0.0.3")
    port = first.getsockname()[1]
    second = bind("127.0.0.4", port)
    yield port, (first, second)
    first.close()
    second.close()


def options(via: str, call_id: str) -> bytes:
    return (
        f"OPTIONS sip:example.com SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:probe@example.com>;tag=1\r\nTo: <sip:example.com>\r\nCall-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    "via",
    [
        "SIP/2.0/UDP 127.0.0.3:{port};branch=z9hG4bKsentby",
        "SIP/2.0/UDP 127.0.0.3:{port};branch=z9hG4bKmaddr;maddr=127.0.0.4",
        "SIP/2.0/UDP 127.0.0.3:{port};branch=z9hG4bKrecv;received=127.0.0.4",
        "SIP/2.0/UDP 127.0.0.2:{port};branch=z9hG4bKport",
    ],
    ids=["sent-by", "maddr", "received", "sent-by-port"],
)
def test_answers_go_to_the_datagram_source_never_where_the_via_points(start_server, victims, via: str) -> None:
    port, victim_sockets = victims
    server = start_server(ephemeral_config(trusted=False))
    attacker = bind("127.0.0.2")
    try:
        attacker.sendto(options(via.format(port=port), "refl-" + via[-8:]), server.addresses["udp"])
        attacker.settimeout(5)
        answer = attacker.recv(65535)
        assert answer.startswith(b"SIP/2.0 200 OK")
        attacker.settimeout(0.5)
        for sock in victim_sockets:
            assert received(sock) == []
    finally:
        attacker.close()


@pytest.mark.parametrize("status", ["100 Trying", "180 Ringing", "200 OK", "401 Unauthorized"])
def test_a_forged_response_is_dropped_not_forwarded_along_its_vias(start_server, victims, status: str) -> None:
    port, victim_sockets = victims
    server = start_server(ephemeral_config(trusted=False))
    host, proxy_port = server.addresses["udp"]
    attacker = bind("127.0.0.2")
    try:
        for transport in ("UDP", "TCP"):
            forged = (
                f"SIP/2.0 {status}\r\nVia: SIP/2.0/UDP {host}:{proxy_port};branch=z9hG4bKforged{transport}\r\n"
                f"Via: SIP/2.0/{transport} 127.0.0.3:{port};branch=z9hG4bKvictim;rport\r\n"
                "From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n"
                "Call-ID: forged\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            attacker.sendto(forged, (host, proxy_port))
        # The proxy still serves, and answered nobody about the forged responses.
        attacker.sendto(options(f"SIP/2.0/UDP 127.0.0.2:{attacker.getsockname()[1]};branch=z9hG4bKalive;rport", "alive"), (host, proxy_port))
        attacker.settimeout(5)
        assert attacker.recv(65535).startswith(b"SIP/2.0 200 OK")
        attacker.settimeout(0.5)
        assert received(attacker) == []
        for sock in victim_sockets:
            assert received(sock) == []
    finally:
        attacker.close()
