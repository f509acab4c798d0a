"""End to end: digest authentication and RBAC against the real twistd service,
with users added by the `sipshield user` CLI and the digest client of
tests/digest_client.py (written from RFC 7616, nothing from sipshield.auth)."""

from __future__ import annotations

import secrets
import socket
import subprocess
from pathlib import Path

import pytest
from cli_support import add_user
from conftest import ephemeral_config
from digest_client import authorization, challenges

pytestmark = pytest.mark.e2e
CLIENT_IP = "127.0.0.2"  # not trusted: only 127.0.0.1 and ::1 are, and only when asked


class Client:
    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((CLIENT_IP, 0))
        except OSError:
            pytest.skip(f"cannot bind {CLIENT_IP} on this machine's loopback")
        self.port = self.sock.getsockname()[1]
        self.cseq = 0

    def send(self, method: str, uri: str, user: str, to: str, auth: str | None = None, extra: str = "") -> tuple[int, str, bytes]:
        self.cseq += 1
        header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {CLIENT_IP}:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@example.com>;tag={secrets.token_hex(4)}",
            f"To: <{to}>",
            f"Call-ID: auth-{user}-{self.cseq}@test" if method != "REGISTER" else f"Call-ID: reg-{user}@test",
            f"CSeq: {self.cseq} {method}",
            f"Contact: <sip:{user}@{CLIENT_IP}:{self.port}>",
        ]
        if auth:
            lines.append(f"{header}: {auth}")
        raw = "\r\n".join(lines) + "\r\n" + extra + "Content-Length: 0\r\n\r\n"
        return self.send_raw(raw.encode())

    def send_raw(self, data: bytes) -> tuple[int, str, bytes]:
        self.sock.sendto(data, self.server)
        self.sock.settimeout(10)
        while True:
            answer = self.sock.recv(65535)
            status = int(answer.split(b" ", 2)[1])
            if status >= 200:
                return status, answer.split(b"\r\n", 1)[0].decode(), answer


@pytest.fixture
def secured(start_server, tmp_path: Path):
    server = start_server(ephemeral_config(trusted=False))
    add_user(tmp_path, "alice", "alice-secret", "staff")
    add_user(tmp_path, "agent7", "agent-secret", "agent")
    return server, Client(server.addresses["udp"])


@pytest.mark.parametrize("algorithm", ["SHA-256", "SHA-512-256"])
def test_register_with_sha2_digest(secured, algorithm: str) -> None:
    server, client = secured
    status, _, answer = client.send("REGISTER", "sip:example.com", "alice", "sip:alice@example.com")
    assert status == 401
    offered = challenges(answer, "WWW-Authenticate")
    assert [c["algorithm"] for c in offered] == ["SHA-256", "SHA-512-256"]  # the default order, no MD5
    challenge = next(c for c in offered if c["algorithm"] == algorithm)
    assert challenge["realm"] == "example.com"
    auth = authorization(challenge, algorithm, "alice", "alice-secret", "REGISTER", "sip:example.com")
    status, line, answer = client.send("REGISTER", "sip:example.com", "alice", "sip:alice@example.com", auth)
    assert status == 200, line
    assert f"<sip:alice@{CLIENT_IP}:{client.port}>".encode() in answer
    assert "Traceback" not in server.log


def test_wrong_password_and_unknown_user_cannot_be_told_apart(secured) -> None:
    _, client = secured
    answers = []
    for user, password in (("alice", "wrong"), ("mallory", "whatever")):
        _, _, first = client.send("REGISTER", "sip:example.com", user, f"sip:{user}@example.com")
        challenge = challenges(first, "WWW-Authenticate")[0]
        status, line, answer = client.send("REGISTER", "sip:example.com", user, f"sip:{user}@example.com",
                                           authorization(challenge, challenge["algorithm"], user, password, "REGISTER", "sip:example.com"))
        shape = [(k, sorted(v)) for k, v in ((c["algorithm"], c.keys()) for c in challenges(answer, "WWW-Authenticate"))]
        names = sorted(line.split(":", 1)[0].lower() for line in answer.decode().split("\r\n")[1:] if ":" in line)
        answers.append((status, line, shape, names))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401


def test_replayed_nonce_count_is_refused(secured) -> None:
    _, client = secured
    _, _, first = client.send("REGISTER", "sip:example.com", "alice", "sip:alice@example.com")
    challenge = challenges(first, "WWW-Authenticate")[0]
    auth = authorization(challenge, challenge["algorithm"], "alice", "alice-secret", "REGISTER", "sip:example.com")
    assert client.send("REGISTER", "sip:example.com", "alice", "sip:alice@example.com", auth)[0] == 200
    status, _, answer = client.send("REGISTER", "sip:example.com", "alice", "sip:alice@example.com", auth)
    assert status == 401
    assert challenges(answer, "WWW-Authenticate")[0].get("stale") == "true"


def test_invite_needs_proxy_auth_and_from_must_match(secured) -> None:
    _, client = secured
    status, _, answer = client.send("INVITE", "sip:bob@example.com", "alice", "sip:bob@example.com")
    assert status == 407
    challenge = challenges(answer, "Proxy-Authenticate")[0]
    auth = authorization(challenge, challenge["algorithm"], "alice", "alice-secret", "INVITE", "sip:bob@example.com")
    status, line, _ = client.send("INVITE", "sip:bob@example.com", "alice", "sip:bob@example.com", auth)
    assert status == 404, line  # authenticated and allowed to call; bob is simply not registered
    _, _, answer = client.send("INVITE", "sip:bob@example.com", "alice", "sip:bob@example.com")
    challenge = challenges(answer, "Proxy-Authenticate")[0]
    auth = authorization(challenge, challenge["algorithm"], "alice", "alice-secret", "INVITE", "sip:bob@example.com")
    raw_from = "From: <sip:carol@example.com>;tag=x\r\n"
    status, line, _ = client.send_raw(
        (f"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT_IP}:{client.port};branch=z9hG4bKforge;rport\r\n"
         f"Max-Forwards: 70\r\n{raw_from}To: <sip:bob@example.com>\r\nCall-ID: forged@test\r\nCSeq: 1 INVITE\r\n"
         f"Proxy-Authorization: {auth}\r\nContent-Length: 0\r\n\r\n").encode()
    )
    assert (status, line) == (403, "SIP/2.0 403 Forbidden: From does not match the authenticated user")


def test_role_without_call_permission_is_refused(secured) -> None:
    _, client = secured
    _, _, answer = client.send("INVITE", "sip:alice@example.com", "agent7", "sip:alice@example.com")
    challenge = challenges(answer, "Proxy-Authenticate")[0]
    auth = authorization(challenge, challenge["algorithm"], "agent7", "agent-secret", "INVITE", "sip:alice@example.com")
    status, line, _ = client.send("INVITE", "sip:alice@example.com", "agent7", "sip:alice@example.com", auth)
    assert (status, line) == (403, "SIP/2.0 403 Forbidden: missing permission call")


def test_options_to_the_proxy_needs_no_credentials(secured) -> None:
    _, client = secured
    assert client.send("OPTIONS", "sip:127.0.0.1", "alice", "sip:127.0.0.1")[0] == 200


def test_sipp_registers_and_calls_with_md5_when_enabled(start_server, tmp_path: Path) -> None:
    from conftest import require_tool

    sipp = require_tool("sipp", "sip-tester")
    server = start_server(ephemeral_config(extra='[auth]\nalgorithms = ["MD5"]', trusted=False))
    add_user(tmp_path, "legacy", "phone-secret", "staff")
    host, port = server.addresses["udp"]
    result = subprocess.run(
        [sipp, f"{host}:{port}", "-sf", str(Path(__file__).parent / "scenarios" / "register_auth.xml"), "-s", "legacy",
         "-au", "legacy", "-ap", "phone-secret", "-i", CLIENT_IP, "-p", "0", "-m", "1", "-timeout", "20", "-timeout_error", "-nostdin"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr + server.log
    assert "Traceback" not in server.log


def test_ldap_backend_from_config_registers_a_directory_user(start_server, tmp_path: Path) -> None:
    """[auth] backends = ["ldap", "sql"] against a private slapd: a directory
    user registers with SHA-256, and its LDAP group gives it the staff role."""
    import ldap_support

    slapd = ldap_support.start_slapd(tmp_path / "slapd")
    try:
        (tmp_path / "ldap.secret").write_text(ldap_support.SERVICE_PASSWORD + "\n")
        config = ephemeral_config(trusted=False, extra=(
            '[auth]\nbackends = ["ldap", "sql"]\n'
            f'[ldap]\nurl = "{slapd.url}"\nbase_dn = "{ldap_support.PEOPLE_DN}"\nbind_dn = "{ldap_support.SERVICE_DN}"\n'
            f'bind_password_file = "ldap.secret"\ngroup_base_dn = "{ldap_support.GROUPS_DN}"\n'
            '[ldap.group_roles]\n"sip-staff" = ["staff"]\n'
        ))
        server = start_server(config)
        client = Client(server.addresses["udp"])
        _, _, first = client.send("REGISTER", "sip:example.com", "alice", "sip:alice@example.com")
        challenge = next(c for c in challenges(first, "WWW-Authenticate") if c["algorithm"] == "SHA-256")
        password = ldap_support.USERS["alice"][0]
        auth = authorization(challenge, "SHA-256", "alice", password, "REGISTER", "sip:example.com")
        status, line, _ = client.send("REGISTER", "sip:example.com", "alice", "sip:alice@example.com", auth)
        assert status == 200, line + server.log
    finally:
        slapd.stop()


VICTIM_IP = "127.0.0.5"


@pytest.mark.parametrize("method", ["BYE", "INFO", "MESSAGE", "INVITE", "ACK"])
def test_forged_in_dialog_request_with_plain_route_is_not_relayed(secured, method: str) -> None:
    """The open relay of issue 7: a To tag and a Route naming the proxy (no
    token of ours) must not carry an unauthenticated request to a victim."""
    server, client = secured
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        victim.bind((VICTIM_IP, 0))
    except OSError:
        pytest.skip(f"cannot bind {VICTIM_IP} on this machine's loopback")
    with victim:
        host, port = server.addresses["udp"]
        target = f"sip:victim@{VICTIM_IP}:{victim.getsockname()[1]}"
        raw = (f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {CLIENT_IP}:{client.port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:mallory@example.com>;tag=m1\r\nTo: <{target}>;tag=forged\r\n"
               f"Call-ID: relay-{method}@test\r\nCSeq: 2 {method}\r\nRoute: <sip:{host}:{port};lr>\r\nContent-Length: 0\r\n\r\n").encode()
        if method == "ACK":
            client.sock.sendto(raw, server.addresses["udp"])
        else:
            status, line, _ = client.send_raw(raw)
            assert status in (403, 404, 407), line
        # A barrier: the proxy handles datagrams in order, so anything the
        # request made it send went out before this OPTIONS is answered.
        assert client.send("OPTIONS", "sip:127.0.0.1", "alice", "sip:127.0.0.1")[0] == 200
        victim.setblocking(False)
        with pytest.raises(BlockingIOError):
            victim.recv(65535)
    assert "Traceback" not in server.log
