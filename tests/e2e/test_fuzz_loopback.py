"""The seeded mutation fuzzer on loopback: real `twistd -n sipshield` (default
pipeline, auth stage included, no trusted sources), real UDP datagrams and
real TCP connections from 127.0.0.1.  The server's whole log (stdout and
stderr) must hold no traceback, and no answer may be a 5xx other than 503
and 505 (see tests/sipfuzz.py).  Nothing is relayed for an unauthenticated
source, so every byte the server sends goes back to the fuzzer.

The seeds name the proxy at port 5060, not at its real port: forged
responses whose top Via is really ours (forwarded statelessly to the Via
below) are exercised in process (tests/unit/test_fuzz.py), where nothing
can leave the machine.
"""

from __future__ import annotations

import socket
import time
from itertools import islice

import pytest
from conftest import ephemeral_config
from sipfuzz import ALLOWED_5XX, SeedContext, messages, status_of

pytestmark = pytest.mark.e2e
SEED = 3261
UDP_COUNT = 5000
TCP_COUNT = 5000
BATCH = 100


def sentinel(call_id: str, port: int) -> bytes:
    return (f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def statuses(data: bytes) -> list[tuple[int, str]]:
    """The status lines in what came back on one TCP connection."""
    found = []
    for part in data.split(b"SIP/2.0 ")[1:]:
        status = status_of(b"SIP/2.0 " + part)
        if status is not None:
            found.append(status)
    return found


def bad(found: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(s, r) for s, r in found if 500 <= s < 600 and s not in ALLOWED_5XX]


def test_mutated_messages_over_udp_and_tcp_leave_no_traceback_and_no_500(start_server) -> None:
    # The shield's rate limits would refuse (and over TCP ban) this flood from one
    # source, and a mutated User-Agent can name a scanner: the fuzzer is after the
    # parser and the pipeline behind them (tests/unit/test_shield_admission.py tests those).
    server = start_server(ephemeral_config(trusted=False, extra="[ratelimit]\nenabled = false\n[scanners]\nenabled = false\n"))
    udp_address, tcp_address = server.addresses["udp"], server.addresses["tcp"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    port = sock.getsockname()[1]
    answers: list[tuple[int, str]] = []
    started = time.perf_counter()

    # UDP: batches paced by a sentinel; its 200 means the batch before it was handled.
    stream = messages(SEED, SeedContext(proxy=("127.0.0.1", 5060), source=("127.0.0.1", port)))
    for batch in range(UDP_COUNT // BATCH):
        for data in islice(stream, BATCH):
            sock.sendto(data, udp_address)
        call_id = f"sentinel-{batch}"
        sock.sendto(sentinel(call_id, port), udp_address)
        deadline = time.monotonic() + 20
        while True:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                data = sock.recv(65535)
            except TimeoutError:
                pytest.fail(f"no answer to {call_id}\n{server.log[-3000:]}")
            if f"Call-ID: {call_id}".encode() in data:
                break
            status = status_of(data)  # one datagram, one message
            assert status is not None, data[:200]
            answers.append(status)
    udp_seconds = time.perf_counter() - started
    udp_answers = len(answers)

    # TCP: a connection per few messages, closed by us; read until the server closes.
    stream = messages(SEED + 1, SeedContext(proxy=("127.0.0.1", 5060), source=("127.0.0.1", 0), transport="TCP"))
    sent = 0
    while sent < TCP_COUNT:
        chunk = list(islice(stream, 5))
        sent += len(chunk)
        with socket.create_connection(tcp_address, timeout=20) as conn:
            conn.sendall(b"".join(chunk))
            conn.shutdown(socket.SHUT_WR)
            data = b""
            try:
                while part := conn.recv(65535):
                    data += part
            except ConnectionResetError:
                pass
        answers += statuses(data)
    seconds = time.perf_counter() - started

    assert bad(answers) == [], bad(answers)[:20]
    log = server.log
    assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]
    # The malformed requests are answered (400, 401, 407...); responses, ACKs and
    # what a stream cannot frame are not.
    assert udp_answers > UDP_COUNT // 3 and len(answers) - udp_answers > TCP_COUNT // 10
    print(f"\nloopback fuzz: {UDP_COUNT} UDP in {udp_seconds:.1f}s, {TCP_COUNT} TCP in {seconds - udp_seconds:.1f}s, "
          f"{(UDP_COUNT + TCP_COUNT) / seconds:.0f} messages/s")
