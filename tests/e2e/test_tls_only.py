"""End to end: a TLS-only deployment (examples/hardened.toml) and sips: over
hops in clear (issue 9, RFC 5630), against the real twistd service.

examples/hardened.toml runs as shipped but for what a test machine needs: its
data_dir, key file and log file made relative, its listener (one TLS listener)
and admin API on ephemeral loopback ports, its certificate replaced by the self-signed one the
service generates.  Users are added with the ``sipshield user`` CLI and log
in with SHA-256 digest (tests/digest_client.py) over real TLS (Python's ssl:
Debian's SIPp 3.6.1 has no TLS, so there is no ``sipp -t l1`` here).  The
sips: INVITE over UDP and TCP is SIPp's (``scenarios/uac_sips_refused.xml``).
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

import pytest
import test_calls
from conftest import ephemeral_config
from digest_client import authorization, challenges
from test_auth import add_user
from test_calls import SIPP_TIMEOUT, StreamUAC, header_values

pytestmark = pytest.mark.e2e
sipp_runner = test_calls.sipp_runner  # the fixture, shared
HARDENED = Path(__file__).parent.parent.parent / "examples" / "hardened.toml"
CORPORATE = 'networks = ["10.0.0.0/8", '


def hardened(tmp_path: Path, *, loopback_is_corporate: bool = True) -> str:
    """examples/hardened.toml with paths and the listener a test can use."""
    text = HARDENED.read_text()
    replacements = [
        ('data_dir = "/var/lib/sipshield"', 'data_dir = "data"'),
        ('listen = ["tls:5061:interface=0.0.0.0"]', 'listen = ["tls:0:interface=127.0.0.1"]'),
        ('certificate = "/etc/sipshield/tls/fullchain.pem"', '# certificate: the generated self-signed one'),
        ('private_key = "/etc/sipshield/tls/privkey.pem"', ''),
        ('key_file = "/etc/sipshield/keys/credential.keys"', 'key_file = "keys/credential.keys"'),
        ('json_file = "/var/log/sipshield/sipshield.json"', 'json_file = "sipshield.json"'),
        ("port = 9061", "port = 0"),
    ]
    if loopback_is_corporate:
        replacements.append((CORPORATE, 'networks = ["127.0.0.0/8", "10.0.0.0/8", '))
    for old, new in replacements:
        assert text.count(old) == 1, f"examples/hardened.toml changed: {old!r} is not in it once"
        text = text.replace(old, new)
    (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
    return text


class Phone:
    """A phone on one TLS connection: REGISTER with digest, INVITE, answer."""

    def __init__(self, server, tmp_path: Path, user: str, password: str) -> None:
        host, port = server.addresses["tls"]
        self.uac = StreamUAC(host, port, tmp_path / "data" / "tls-selfsigned.pem")
        self.user, self.password = user, password
        self.me = f"{self.uac.local[0]}:{self.uac.local[1]}"
        self.cseq = 0

    def request(self, method: str, uri: str, to: str, extra: str = "", call_id: str = "", sdp: str = "") -> None:
        self.cseq += 1
        body = f"Content-Type: application/sdp\nContent-Length: {wire_length(sdp)}\n\n{sdp}" if sdp else "Content-Length: 0\n\n"
        self.uac.send(
            f"{method} {uri} SIP/2.0\nVia: SIP/2.0/TLS {self.me};branch=z9hG4bK{secrets.token_hex(6)};rport\nMax-Forwards: 70\n"
            f"From: <sips:{self.user}@example.com>;tag={self.user}{self.cseq}\nTo: <{to}>\n"
            f"Call-ID: {call_id or self.user + '-' + method.lower() + '@tls-only'}\nCSeq: {self.cseq} {method}\n{extra}{body}"
        )

    def final(self, method: str) -> str:
        return self.uac.response(method, time.monotonic() + SIPP_TIMEOUT)

    def authenticated(self, method: str, uri: str, to: str, extra: str = "", call_id: str = "", wait: bool = True, sdp: str = "") -> str:
        """Send, answer the challenge with SHA-256 digest, return the final response (with *wait*)."""
        header = "WWW-Authenticate" if method == "REGISTER" else "Proxy-Authenticate"
        self.request(method, uri, to, extra, call_id, sdp)
        challenge = self.final(method)
        assert challenge.split(" ", 2)[1] in ("401", "407"), challenge
        offered = challenges(challenge.replace("\n", "\r\n").encode(), header)
        assert [c.get("algorithm") for c in offered] == ["SHA-256", "SHA-512-256"]  # no MD5 anywhere
        credentials = authorization(offered[0], "SHA-256", self.user, self.password, method, uri)
        answer = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
        self.request(method, uri, to, extra + f"{answer}: {credentials}\n", call_id, sdp)
        return self.final(method) if wait else ""

    def register(self, contact: str) -> str:
        return self.authenticated("REGISTER", "sips:example.com", f"sips:{self.user}@example.com", f"Contact: <{contact}>\nExpires: 600\n")

    def close(self) -> None:
        self.uac.close()


def wire_length(text: str) -> int:
    """Its length once StreamUAC.send has made every line end CRLF."""
    return len(text.replace("\n", "\r\n"))


def sdes(port: int) -> str:
    """An SRTP (SDES) audio offer or answer: what [media] srtp = "mandatory" lets through over TLS."""
    key = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
    return (f"v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio {port} RTP/SAVP 0\n"
            f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\n")


def status(message: str) -> int:
    return int(message.split(" ", 2)[1])


@pytest.fixture
def tls_only(start_server, tmp_path: Path):
    server = start_server(hardened(tmp_path), listeners=1)
    add_user(tmp_path, "alice", "alice-Orbit-7-canal", "staff")
    add_user(tmp_path, "bob", "bob-tulip-9-harbour", "staff")
    phones: list[Phone] = []

    def phone(user: str, password: str) -> Phone:
        phones.append(Phone(server, tmp_path, user, password))
        return phones[-1]

    yield server, phone
    for p in phones:
        p.close()


def test_the_hardened_example_starts_with_tls_listeners_only(tls_only) -> None:
    server, _ = tls_only
    assert set(server.addresses) == {"tls"}
    assert not re.search(r"listening on (udp|tcp)", server.log)
    assert "unsafe configuration" not in server.log
    assert "digest algorithms: SHA-256, SHA-512-256" in server.log


def test_register_and_call_sips_over_tls_only(tls_only) -> None:
    server, phone = tls_only
    bob = phone("bob", "bob-tulip-9-harbour")
    registered = bob.register(f"sips:bob@{bob.me}")
    assert status(registered) == 200, registered + server.log[-4000:]
    alice = phone("alice", "alice-Orbit-7-canal")
    assert status(alice.register(f"sips:alice@{alice.me}")) == 200
    alice.authenticated("INVITE", "sips:bob@example.com", "sips:bob@example.com", f"Contact: <sips:alice@{alice.me}>\n", call_id="tls-only-call",
                        wait=False, sdp=sdes(6000))
    invite = bob.uac.read(time.monotonic() + SIPP_TIMEOUT)
    assert invite.startswith(f"INVITE sips:bob@{bob.me} SIP/2.0"), invite
    (record_route,) = header_values(invite, "Record-Route")
    assert record_route.startswith("<sips:127.0.0.1:") and "transport=" not in record_route  # one TLS side, a sips: URI
    vias = "".join(f"Via: {v}\n" for v in header_values(invite, "Via"))
    heads = "".join(f"{name}: {header_values(invite, name)[0]}\n" for name in ("From", "Call-ID", "CSeq"))
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80" in invite  # the SRTP offer, relayed over TLS
    answer_sdp = sdes(6002)
    bob.uac.send(f"SIP/2.0 200 OK\n{vias}{heads}To: <sips:bob@example.com>;tag=bob1\nRecord-Route: {record_route}\n"
                 f"Contact: <sips:bob@{bob.me}>\nContent-Type: application/sdp\nContent-Length: {wire_length(answer_sdp)}\n\n{answer_sdp}")
    answer = alice.final("INVITE")
    assert status(answer) == 200, answer + server.log[-4000:]
    assert "m=audio 6002 RTP/SAVP 0" in answer
    assert "Traceback" not in server.log


def test_a_sips_call_to_a_phone_with_only_a_sip_contact_gets_480_sips_not_allowed(tls_only) -> None:
    server, phone = tls_only
    bob = phone("bob", "bob-tulip-9-harbour")
    assert status(bob.register(f"sip:bob@{bob.me};transport=tls")) == 200
    alice = phone("alice", "alice-Orbit-7-canal")
    answer = alice.authenticated("INVITE", "sips:bob@example.com", "sips:bob@example.com", f"Contact: <sips:alice@{alice.me}>\n")
    assert answer.startswith("SIP/2.0 480 Temporarily Unavailable: sips target not reachable over TLS"), answer
    assert re.search(r'^Warning: 380 127\.0\.0\.1:\d+ "SIPS Not Allowed"\r$', answer, re.M), answer
    assert server.wait_for(r"security event sips-refused from 127\.0\.0\.1 over TLS \(user alice\)")


def test_register_from_outside_the_corporate_ranges_is_refused_by_the_acl(start_server, tmp_path: Path) -> None:
    server = start_server(hardened(tmp_path, loopback_is_corporate=False), listeners=1)
    add_user(tmp_path, "alice", "alice-Orbit-7-canal", "staff")
    alice = Phone(server, tmp_path, "alice", "alice-Orbit-7-canal")
    try:
        alice.request("REGISTER", "sips:example.com", "sips:alice@example.com", f"Contact: <sips:alice@{alice.me}>\n")
        answer = alice.final("REGISTER")
    finally:
        alice.close()
    assert answer.startswith("SIP/2.0 403 Forbidden: Not Allowed From This Source"), answer
    assert server.wait_for(r"security event acl-deny from 127\.0\.0\.1 over TLS")


@pytest.mark.parametrize(("transport", "flag"), [("udp", "u1"), ("tcp", "t1")])
def test_sipp_sips_invite_over_udp_or_tcp_gets_480_sips_required(start_server, sipp_runner, transport: str, flag: str) -> None:
    server = start_server(ephemeral_config())
    result = sipp_runner(f"sips-{transport}", "uac_sips_refused.xml", port=0, service="bob", remote=server.addresses[transport], transport=flag).wait()
    assert result.returncode == 0 and result.successful == 1, result.describe() + "\n--- proxy log\n" + server.log[-6000:]
    assert "SIP/2.0 100" not in result.messages  # refused statelessly, at admission
    assert server.wait_for(rf"security event sips-refused from 127\.0\.0\.1 over {transport.upper()}")
    assert "Traceback" not in server.log
