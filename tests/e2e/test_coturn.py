"""End to end: the coturn configuration and the credential recipe of
docs/operations/media.md, as the page gives them, with the real coturn.

The ``/etc/turnserver.conf`` block and the Python recipe are read out of the
page; only what a test machine needs is changed in the configuration (the
addresses become 127.0.0.1, the ports ephemeral, the secret, certificate,
log, pid file and database go to a temporary directory).  turnserver runs
in the foreground and is stopped by the test; turnutils_uclient (coturn's
own client) then shows that a credential made by the recipe is accepted over
UDP, that an expired one is refused, and that a relay towards a loopback
address is refused (denied-peer-ip); over TLS a small TURN client of our own
does the same Allocate.  Debian package: coturn.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cert_support import make_leaf, write_pem
from conftest import OutputLines, require_tool, stop_process

pytestmark = pytest.mark.e2e
PAGE = Path(__file__).parent.parent.parent / "docs" / "operations" / "media.md"
SECRET = "test-secret-for-coturn-0123456789abcdef"


def block(language: str) -> str:
    """The page's one fenced block of *language*."""
    (found,) = re.findall(rf"^```{language}\n(.*?)^```$", PAGE.read_text(), flags=re.M | re.S)
    return found


def recipe() -> Callable[..., tuple[str, str]]:
    """``turn_credentials`` as the page defines it."""
    namespace: dict[str, object] = {}
    exec(compile(block("python"), str(PAGE), "exec"), namespace)  # noqa: S102 - our own documentation's snippet
    function = namespace["turn_credentials"]
    assert callable(function)
    return function  # type: ignore[return-value]


def free_port() -> int:
    """A port free over both UDP and TCP on 127.0.0.1 a moment ago (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no port free over UDP and TCP")


def configuration(tmp_path: Path, port: int, tls_port: int, relay: int) -> str:
    cert, key = make_leaf("turn.example.com", None)
    local = {
        "listening-ip": "127.0.0.1", "relay-ip": "127.0.0.1", "listening-port": str(port), "tls-listening-port": str(tls_port),
        "min-port": str(relay), "max-port": str(relay + 39), "static-auth-secret": SECRET,
        "cert": str(write_pem(tmp_path / "turn-cert.pem", cert)), "pkey": str(write_pem(tmp_path / "turn-key.pem", key=key)),
        "log-file": "stdout", "pidfile": str(tmp_path / "turnserver.pid"),
    }
    text = block("conf")
    for name, value in local.items():
        text, count = re.subn(rf"^{re.escape(name)}=.*$", f"{name}={value}", text, flags=re.M)
        assert count == 1, f"docs/operations/media.md: {name}= is not in the configuration once"
    return text + f"userdb={tmp_path / 'turndb'}\n"  # coturn's database file, unused with use-auth-secret


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[tuple[int, int, OutputLines]]:
    turnserver = require_tool("turnserver", "coturn")
    port, tls_port = free_port(), free_port()
    relay = next(p for p in iter(free_port, None) if not (p <= port < p + 40 or p <= tls_port < p + 40 or p > 65535 - 40))
    conf = tmp_path / "turnserver.conf"
    conf.write_text(configuration(tmp_path, port, tls_port, relay))
    process = subprocess.Popen([turnserver, "-c", str(conf)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = OutputLines(process, "turnserver")
    try:
        log.wait_for(r"Total General servers", time.monotonic() + 20)
        wait_listening(port, tls_port, log)
        yield port, tls_port, log
    finally:
        stop_process(process)
        log.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def wait_listening(port: int, tls_port: int, log: OutputLines) -> None:
    """Until both TCP ports accept a connection (coturn does not log its listeners at this verbosity)."""
    deadline = time.monotonic() + 20
    for each in (port, tls_port):
        while True:
            try:
                socket.create_connection(("127.0.0.1", each), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"turnserver does not listen on 127.0.0.1:{each}:\n" + "\n".join(log.lines))
                try:  # the poll interval, and it sees an early exit
                    log.process.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    continue
                pytest.fail("turnserver exited:\n" + "\n".join(log.lines))


def uclient(port: int, username: str, password: str, *flags: str) -> str:
    """One allocation by coturn's own client, sending one packet towards 127.0.0.1 (a denied peer)."""
    client = require_tool("turnutils_uclient", "coturn")
    process = subprocess.Popen([client, "-v", *flags, "-p", str(port), "-u", username, "-w", password, "-n", "1", "-e", "127.0.0.1", "127.0.0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()  # bounded: what it said so far is the answer
        output, _ = process.communicate(timeout=10)
    return output


MAGIC = 0x2112A442
REALM, NONCE, USERNAME, INTEGRITY, REQUESTED_TRANSPORT = 0x0014, 0x0015, 0x0006, 0x0008, 0x0019


def stun(kind: int, attributes: list[tuple[int, bytes]], key: bytes | None = None) -> bytes:
    """A STUN message (RFC 5389 6, 15), with MESSAGE-INTEGRITY under *key* when given."""
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4) for t, v in attributes)
    header = struct.pack("!HHI", kind, len(body) + (24 if key else 0), MAGIC) + secrets.token_bytes(12)
    if key is None:
        return header + body
    digest = hmac.new(key, header + body, hashlib.sha1).digest()
    return header + body + struct.pack("!HH", INTEGRITY, 20) + digest


def read_stun(conn: ssl.SSLSocket) -> tuple[int, dict[int, bytes]]:
    data = b""
    while len(data) < 20 or len(data) < 20 + struct.unpack("!H", data[2:4])[0]:
        chunk = conn.recv(4096)
        assert chunk, "the TURN server closed the connection"
        data += chunk
    kind, length = struct.unpack("!HH", data[:4])
    attributes, at = {}, 20
    while at < 20 + length:
        t, n = struct.unpack("!HH", data[at:at + 4])
        attributes[t] = data[at + 4:at + 4 + n]
        at += 4 + n + (-n % 4)
    return kind, attributes


def tls_allocate(port: int, username: str, password: str) -> int:
    """A TURN Allocate (RFC 8656 7.2) over TLS with the long-term credential
    (RFC 5389 10.2): the first answer is a 401 with realm and nonce, the
    second the verdict, whose message type is returned."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # a throw-away self-signed certificate
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw) as conn:
        udp = [(REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))]
        conn.sendall(stun(0x0003, udp))
        kind, attributes = read_stun(conn)
        assert kind == 0x0113, hex(kind)
        realm, nonce = attributes[REALM], attributes[NONCE]
        key = hashlib.md5(username.encode() + b":" + realm + b":" + password.encode()).digest()  # noqa: S324 - RFC 5389's key
        conn.sendall(stun(0x0003, [*udp, (USERNAME, username.encode()), (REALM, realm), (NONCE, nonce)], key))
        return read_stun(conn)[0]


def allocated(output: str) -> bool:
    return bool(re.search(r"allocate response received: \n.*success", output)) and "Cannot complete Allocation" not in output


def test_a_credential_from_the_recipe_is_accepted_and_a_loopback_peer_is_refused(turn) -> None:
    port, _, log = turn
    username, password = recipe()(SECRET, "alice", 600)
    assert re.fullmatch(r"\d{10}:alice", username)
    output = uclient(port, username, password)
    assert allocated(output), output + "\n".join(log.lines)
    assert "403 (Forbidden IP)" in output, output  # denied-peer-ip: no relay into 127.0.0.0/8


def test_a_credential_from_the_recipe_is_accepted_over_tls_and_an_expired_one_is_not(turn) -> None:
    """Over TLS on the tls-listening-port, with Python's ssl and a TURN Allocate
    of our own (turnutils_uclient 4.6.1 sometimes hangs in its TLS handshake
    against a server with no-tlsv1)."""
    _, tls_port, _ = turn
    assert tls_allocate(tls_port, *recipe()(SECRET, "alice", 600)) == 0x0103  # Allocate success
    assert tls_allocate(tls_port, *recipe()(SECRET, "alice", -10)) == 0x0113  # Allocate error (401)


def test_an_expired_credential_and_a_wrong_secret_are_refused(turn) -> None:
    port, _, log = turn
    expired = recipe()(SECRET, "alice", -10)
    output = uclient(port, *expired)
    assert "Cannot complete Allocation" in output and not allocated(output), output
    assert log.wait_for(rf"Cannot find credentials of user <{re.escape(expired[0])}>", time.monotonic() + 10)
    output = uclient(port, *recipe()("another-secret", "alice", 600))
    assert "Cannot complete Allocation" in output and not allocated(output), output
