"""End to end: malformed and random input, stream limits and config errors
against the real twistd service. The server must answer precisely, log why,
and keep serving; nothing may end in a traceback."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ephemeral_config, twistd_command

pytestmark = pytest.mark.e2e
CORPUS = Path(__file__).parent.parent / "data" / "rfc4475"


def options_request(via_host: str, via_port: int, transport: str = "UDP", call_id: str = "probe", extra: str = "") -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} {via_host}:{via_port};branch=z9hG4bK{call_id};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:probe@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


class UDPClient:
    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def receive(self, timeout: float = 5.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65535)
        except TimeoutError:
            return None

    def still_serving(self, call_id: str = "alive") -> bool:
        self.send(options_request("127.0.0.1", self.port, call_id=call_id))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            answer = self.receive(5)
            if answer is None:
                return False
            if f"Call-ID: {call_id}".encode() in answer:
                return answer.startswith(b"SIP/2.0 200 OK")
        return False


def expected_rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in (CORPUS / "EXPECTED.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _section, kind, verdict, _what = line.split("\t", 4)
        rows.append((name, kind, verdict))
    return rows


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_rfc4475_malformed_requests_over_udp_get_the_expected_answer(start_server) -> None:
    server = start_server()
    client = UDPClient(server.addresses["udp"])
    malformed = [(n, k) for n, k, v in expected_rows() if v == "malformed" and n != "baddate.dat"]
    assert len(malformed) == 18
    for name, kind in malformed:
        client.send((CORPUS / name).read_bytes())
        if kind == "response":
            # scalarlg, bigcode: a malformed response is dropped, never answered.
            assert client.still_serving(f"after-{name}"), f"no OPTIONS answer after {name}\n{server.log}"
            continue
        answer = client.receive()
        assert answer is not None, f"no answer to {name}\n{server.log}"
        want = 505 if name == "badvers.dat" else 400
        assert status_of(answer) == want, f"{name}: {answer[:200]!r}"
        reason = answer.split(b"\r\n", 1)[0].split(b" ", 2)[2]
        assert reason and reason != b"Bad Request" or want == 505, f"{name}: reason should say what is wrong: {reason!r}"
    assert client.still_serving()
    assert "Traceback" not in server.log and "Unhandled" not in server.log
    # 18 malformed datagrams from one source: one log line (the rest are held
    # back and counted, so a flood cannot fill the disk).
    server.wait_for(r"malformed message from UDP 127\.0\.0\.1:\d+: ")
    assert client.still_serving("after-log")
    assert len(re.findall(r"malformed message from UDP 127\.0\.0\.1:", server.log)) == 1


def test_random_and_mutated_datagrams_never_stop_the_server(start_server) -> None:
    server = start_server()
    client = UDPClient(server.addresses["udp"])
    rng = random.Random(4475)
    seeds = [p.read_bytes() for p in sorted(CORPUS.glob("*.dat"))]
    for i in range(400):
        seed = bytearray(rng.choice(seeds))
        mode = i % 4
        if mode == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600)))
        elif mode == 1:
            data = bytes(seed[: rng.randint(1, len(seed))])
        elif mode == 2:
            for _ in range(rng.randint(1, 8)):
                seed[rng.randrange(len(seed))] = rng.getrandbits(8)
            data = bytes(seed)
        else:
            cut = rng.randrange(len(seed))
            data = bytes(seed[:cut] + seed[cut:][::-1])
        client.send(data)
        if i % 50 == 49:
            assert client.still_serving(f"alive-{i}"), server.log
    assert client.still_serving("alive-end")
    assert "Traceback" not in server.log and "Unhandled" not in server.log


def tcp_connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65535)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


def closed_without_an_answer(address: tuple[str, int]) -> bytes:
    """Open a connection the server is to refuse, and read until it closes it.

    The server accepts and aborts a refused connection (an RST).  On loopback
    the RST can arrive before ``connect()`` has returned: the pending
    ECONNRESET then raises from ``create_connection`` rather than from the
    first ``recv``.  Both are the server closing the connection without a
    byte, so both return ``b""``.  A refusal at connect (ECONNREFUSED: no
    listener) is not: it propagates and fails the test.
    """
    try:
        sock = tcp_connect(address)
    except ConnectionResetError:
        return b""
    with sock:
        return read_until_closed(sock)


def read_responses(sock: socket.socket, count: int) -> list[bytes]:
    sock.settimeout(10)
    data = b""
    while data.count(b"SIP/2.0 ") < count or not data.endswith(b"\r\n\r\n"):
        chunk = sock.recv(65535)
        if not chunk:
            break
        data += chunk
    return [b"SIP/2.0 " + part for part in data.split(b"SIP/2.0 ")[1:]]


def test_tcp_framing_partial_reads_pipelining_and_keepalive(start_server) -> None:
    server = start_server()
    with tcp_connect(server.addresses["tcp"]) as sock:
        host, port = sock.getsockname()
        first = options_request(host, port, "TCP", "split")
        sock.sendall(first[:37])
        sock.sendall(first[37:])
        sock.sendall(options_request(host, port, "TCP", "pipe-1") + options_request(host, port, "TCP", "pipe-2"))
        responses = read_responses(sock, 3)
        assert [r.split(b"\r\n", 1)[0] for r in responses] == [b"SIP/2.0 200 OK"] * 3
        assert [b"Call-ID: " + c in r for c, r in zip((b"split", b"pipe-1", b"pipe-2"), responses, strict=True)] == [True] * 3
        # RFC 5626 3.5.1: CRLFCRLF ping, CRLF pong.
        sock.sendall(b"\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(16) == b"\r\n"


def test_tcp_missing_content_length_is_answered_and_closed(start_server) -> None:
    server = start_server()
    with tcp_connect(server.addresses["tcp"]) as sock:
        host, port = sock.getsockname()
        sock.sendall(options_request(host, port, "TCP").replace(b"Content-Length: 0\r\n", b""))
        data = read_until_closed(sock)
    assert data.startswith(b"SIP/2.0 400 "), data
    assert b"Content-Length" in data.split(b"\r\n", 1)[0]
    server.wait_for(r"closing TCP connection from 127\.0\.0\.1:\d+: Content-Length")


def test_oversized_stream_message_is_refused_and_logged(start_server) -> None:
    server = start_server(ephemeral_config(extra="[limits]\nmax_message_bytes = 2048"))
    with tcp_connect(server.addresses["tcp"]) as sock:
        host, port = sock.getsockname()
        sock.sendall(options_request(host, port, "TCP", extra="X-Padding: " + "a" * 4000 + "\r\n"))
        data = read_until_closed(sock)
    assert data == b"" or data.startswith(b"SIP/2.0 413 "), data
    server.wait_for(r"closing TCP connection from 127\.0\.0\.1:\d+: .*(too large|exceeds)")
    client = UDPClient(server.addresses["udp"])
    client.send(options_request("127.0.0.1", client.port, extra="X-Padding: " + "a" * 4000 + "\r\n"))
    answer = client.receive()
    assert answer is not None and answer.startswith(b"SIP/2.0 413 ")


def test_connections_per_source_are_limited(start_server) -> None:
    server = start_server(ephemeral_config(extra="[limits]\nmax_connections_per_source = 2"))
    address = server.addresses["tcp"]
    keep = [tcp_connect(address), tcp_connect(address)]
    try:
        for sock in keep:  # make sure both are accepted before the third arrives
            host, port = sock.getsockname()
            sock.sendall(options_request(host, port, "TCP", f"keep-{port}"))
            assert read_responses(sock, 1)[0].startswith(b"SIP/2.0 200 OK")
        assert closed_without_an_answer(address) == b""
        # The server saw the third connection and refused it for the cap (not for anything else)...
        server.wait_for(r"closing TCP connection from 127\.0\.0\.1:\d+: too many connections from 127\.0\.0\.1 \(2\)")
        # ...and kept the two it had.
        for sock in keep:
            host, port = sock.getsockname()
            sock.sendall(options_request(host, port, "TCP", f"after-{port}"))
            assert read_responses(sock, 1)[0].startswith(b"SIP/2.0 200 OK")
    finally:
        for sock in keep:
            sock.close()


def test_idle_connection_is_closed(start_server) -> None:
    server = start_server(ephemeral_config(extra="[limits]\nidle_timeout = 1"))
    with tcp_connect(server.addresses["tcp"]) as sock:
        assert read_until_closed(sock, timeout=10) == b""
    server.wait_for(r"closing idle TCP connection")


@pytest.mark.parametrize(
    "config, expected",
    [
        ("[server]\nlisten = ['udp:notaport']\n", "server.listen: port 'notaport' is not a number"),
        ("[server]\nwhatever = 1\n", "server: unknown key(s): whatever"),
        ("[tls]\ncertificate = 'nope.pem'\nprivate_key = 'nope.key'\n", "tls.certificate: cannot read"),
    ],
)
def test_bad_config_refused_at_start_with_one_clear_message(tmp_path: Path, config: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = subprocess.run([*twistd_command(), "-n", "--pidfile=", "sipshield", "--config", str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert expected in output and str(path) in output
    assert "Traceback" not in output
    check = subprocess.run([sys.executable, "-m", "sipshield.cli", "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1
    assert expected in check.stderr and "Traceback" not in check.stderr


def test_port_in_use_is_one_clear_message(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        path = tmp_path / "busy.toml"
        path.write_text(f"[server]\ndata_dir = 'data'\nlisten = ['udp:{port}:interface=127.0.0.1']\n")
        result = subprocess.run([*twistd_command(), "-n", "--pidfile=", "sipshield", "--config", str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"cannot listen on udp:127.0.0.1:{port}" in output
    assert "Traceback" not in output
