"""TLS operations against a real twistd sipshield (issue 10).

Failed handshakes: a client that sends plain SIP to the TLS port, a client
certificate from another CA on a mutual-TLS listener and a client offering
no cipher the listener has are each one ``tls-handshake-failure`` line, with
OpenSSL's reason, the source address and port and the SNI, in twistd's log
and in the JSON log (real ``openssl s_client``, bound to its own loopback
address so each line's source is known); a repeat from the same source
within the minute is held back; a good handshake is no event.

Certificate rotation without dropping calls (the issue's "proof that must
exist"): a phone's TLS connection, established with certificate A, has a
call up; the certificate and key files are replaced with B and ``sipshield
tls reload`` (the CLI, through the admin API) is run; ``openssl s_client
-showcerts`` sees B on new handshakes while, on the connection still
established with A, the call is hung up and a second call completes
(INVITE, 200, ACK, BYE, 200; the callee is SIPp over UDP).  A key that does
not match its certificate is refused (409 from the CLI, the error in the
log) and B stays served; SIGHUP does the same as the CLI, for a good and a
bad certificate.  (Debian's SIPp has no TLS: the phone is Python's ssl, as
in test_calls.StreamUAC.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import test_calls
from cert_support import Issued, make_ca, make_leaf, write_pem
from conftest import ephemeral_config, free_udp_port, require_tool
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from test_calls import SIPP_TIMEOUT, StreamUAC, header_values, register, uris_in

pytestmark = pytest.mark.e2e
sipp_runner = test_calls.sipp_runner  # the fixture, shared
ROOT = Path(__file__).resolve().parent.parent.parent


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def s_client(port: int, *args: str, source: str = "127.0.0.1", source_port: int = 0) -> subprocess.CompletedProcess[str]:
    """``openssl s_client`` to the listener from *source* (and *source_port*), stdin closed: handshake, then quit."""
    openssl = require_tool("openssl", "openssl")
    bind = f"{source}:{source_port}" if source_port else source
    command = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-bind", bind, *args]
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def served_certificate(port: int) -> x509.Certificate:
    """The leaf certificate a new handshake presents, as ``openssl s_client -showcerts`` prints it."""
    result = s_client(port, "-showcerts", "-servername", "localhost")
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", result.stdout, re.S)
    assert pem is not None, f"s_client printed no certificate:\n{result.stdout}\n{result.stderr}"
    return x509.load_pem_x509_certificate(pem.group(0).encode())


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def json_events(path: Path, kind: str) -> list[dict[str, Any]]:
    """The security events of *kind* in the JSON log (one object per line)."""
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("security_event") == kind]


# -- failed handshakes --------------------------------------------------------------------------


def _plain_sip(port: int, source: str) -> int:
    """A client that does not speak TLS: plain SIP to the TLS port from *source*; its port (the server closes it)."""
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        mine = int(s.getsockname()[1])
        s.sendall(
            f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP {source}:{mine};branch=z9hG4bKplain{mine}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:scan@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: plain{mine}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".encode()
        )
        while True:
            try:
                if not s.recv(65535):
                    break
            except (ConnectionResetError, TimeoutError):
                break
    return mine


@pytest.fixture(scope="module")
def client_ca() -> Issued:
    return make_ca("sipshield e2e client CA")


def test_failed_tls_handshakes_are_security_events_in_the_log_and_the_json_log(start_server, tmp_path: Path, client_ca: Issued) -> None:
    write_pem(tmp_path / "ca.pem", client_ca[0])
    rogue = make_leaf("trunk.example.net", [x509.UniformResourceIdentifier("sip:trunk.example.net")])  # self-signed: not from client_ca
    write_pem(tmp_path / "rogue.pem", rogue[0])
    write_pem(tmp_path / "rogue.key", key=rogue[1])
    server = start_server(ephemeral_config(extra='[tls]\nclient_ca = "ca.pem"\n\n[logging]\njson_file = "sipshield.json"\n'))
    _, tls = server.addresses["tls"]

    plain = _plain_sip(tls, "127.0.0.21")
    line = server.wait_for(r"security event tls-handshake-failure from 127\.0\.0\.21 over TLS \(user None\): (.*) \(port (\d+), SNI None\)$")
    assert int(line.group(2)) == plain
    assert line.group(1) in ("http request", "wrong version number")  # OpenSSL 3's words for "not TLS"
    _plain_sip(tls, "127.0.0.21")  # the same source again within the minute: counted, not written

    port = _free_port("127.0.0.22")
    s_client(tls, "-cert", str(tmp_path / "rogue.pem"), "-key", str(tmp_path / "rogue.key"), "-servername", "trunk.example.net",
             source="127.0.0.22", source_port=port)  # fmt: skip
    server.wait_for(
        rf"security event tls-handshake-failure from 127\.0\.0\.22 over TLS \(user None\): certificate verify failed \(port {port}, SNI trunk\.example\.net\)"
    )
    port = _free_port("127.0.0.23")
    s_client(tls, "-tls1_2", "-cipher", "AES128-SHA", "-servername", "sip.example.com", source="127.0.0.23", source_port=port)
    server.wait_for(rf"security event tls-handshake-failure from 127\.0\.0\.23 over TLS \(user None\): no shared cipher \(port {port}, SNI sip\.example\.com\)")
    good = s_client(tls, "-servername", "sip.example.com", source="127.0.0.24")
    assert "BEGIN CERTIFICATE" in good.stdout or "Server certificate" in good.stdout, good.stdout + good.stderr
    _plain_sip(tls, "127.0.0.25")  # a marker: once its line is written, every connection before it was handled
    server.wait_for(r"security event tls-handshake-failure from 127\.0\.0\.25 ")

    assert "Traceback" not in server.log
    server.stop()  # the JSON log is written by the same event as twistd's line, a moment after: read it once the server is gone
    events = json_events(tmp_path / "sipshield.json", "tls-handshake-failure")
    got = [(e["host"], e["transport"], e["user"], e["reason"], e["sni"], e["log_namespace"]) for e in events]
    assert got == [
        ("127.0.0.21", "TLS", None, line.group(1), None, "sipshield.security"),
        ("127.0.0.22", "TLS", None, "certificate verify failed", "trunk.example.net", "sipshield.security"),
        ("127.0.0.23", "TLS", None, "no shared cipher", "sip.example.com", "sipshield.security"),
        ("127.0.0.25", "TLS", None, line.group(1), None, "sipshield.security"),
    ]  # one line for 127.0.0.21's two connections; none for the good handshake from 127.0.0.24
    assert events[0]["port"] == plain and events[2]["port"] == port
    assert events[1]["suppressed"] == 1  # the second plain connection from 127.0.0.21, held back, counted in the next line


# -- certificate rotation without dropping calls ------------------------------------------------


class Caller:
    """A phone on one TLS connection to the proxy, calling bob (trusted loopback: no digest)."""

    def __init__(self, server: Any, trust: Path) -> None:
        host, port = server.addresses["tls"]
        self.uac = StreamUAC(host, port, trust)  # verifies the server's certificate against *trust* (cert A)
        self.me = f"{self.uac.local[0]}:{self.uac.local[1]}"
        self.server = server

    def peer_fingerprint(self) -> str:
        der = self.uac.sock.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()

    def invite(self, call_id: str) -> tuple[str, str]:
        """INVITE -> 200 -> ACK; what the BYE needs (the dialog's head lines, its target and route)."""
        sdp = "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
        common = f"From: <sip:caller@example.com>;tag={call_id}\nCall-ID: {call_id}\nContact: <sip:caller@{self.me};transport=tls>\nMax-Forwards: 70\n"
        self.uac.send(
            f"INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/TLS {self.me};branch=z9hG4bK{call_id}inv;rport\n{common}"
            f"To: <sip:bob@example.com>\nCSeq: 1 INVITE\nContent-Type: application/sdp\nContent-Length: {len(sdp)}\n\n" + sdp.replace("\r\n", "\n")
        )
        answer = self.uac.response("INVITE", time.monotonic() + SIPP_TIMEOUT)
        assert answer.startswith("SIP/2.0 200"), answer + "\n" + self.server.log[-6000:]
        route = "Route: " + ", ".join(f"<{u}>" for u in reversed(uris_in(header_values(answer, "Record-Route")))) + "\n"
        dialog = f"{route}{common}To: {header_values(answer, 'To')[0]}\n"
        target = uris_in(header_values(answer, "Contact"))[0]
        self.uac.send(f"ACK {target} SIP/2.0\nVia: SIP/2.0/TLS {self.me};branch=z9hG4bK{call_id}ack;rport\n{dialog}CSeq: 1 ACK\nContent-Length: 0\n\n")
        return dialog, target

    def bye(self, call_id: str, dialog: str, target: str) -> None:
        self.uac.send(f"BYE {target} SIP/2.0\nVia: SIP/2.0/TLS {self.me};branch=z9hG4bK{call_id}bye;rport\n{dialog}CSeq: 2 BYE\nContent-Length: 0\n\n")
        answer = self.uac.response("BYE", time.monotonic() + SIPP_TIMEOUT)
        assert answer.startswith("SIP/2.0 200"), answer + "\n" + self.server.log[-6000:]


def _issue(tmp_path: Path, cn: str) -> Issued:
    """A certificate (self-signed, for localhost) and key written where ``[tls]`` points."""
    issued = make_leaf(cn, [x509.DNSName("localhost"), x509.DNSName(cn)])
    write_pem(tmp_path / "cert.pem", issued[0])
    write_pem(tmp_path / "key.pem", key=issued[1])
    return issued


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "sipshield.cli", *args], capture_output=True, text=True, timeout=60, env=env)


def test_tls_reload_rotates_the_certificate_while_a_call_on_an_old_connection_completes(start_server, sipp_runner, tmp_path: Path) -> None:
    cert_a, _ = _issue(tmp_path, "a.example.com")
    write_pem(tmp_path / "trust-a.pem", cert_a)
    server = start_server(ephemeral_config(extra='[tls]\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n'))
    url = server.wait_for(r"admin API listening on (http://127\.0\.0\.1:\d+)/v1/").group(1)
    config = str(tmp_path / "sipshield.toml")
    _, tls = server.addresses["tls"]
    assert fingerprint(served_certificate(tls)) == fingerprint(cert_a)

    port = free_udp_port()
    register(sipp_runner, server, "bob", port)
    callee = sipp_runner("callee", "uas_answer.xml", port=port, service="bob", calls=2, timeout=SIPP_TIMEOUT * 4)
    callee.wait_listening(port)
    caller = Caller(server, tmp_path / "trust-a.pem")
    try:
        assert caller.peer_fingerprint() == fingerprint(cert_a)
        first = caller.invite("rotate-1")  # a call up across the rotation

        cert_b, _ = _issue(tmp_path, "b.example.com")
        mark = len(server.lines)
        result = _cli("tls", "reload", "--config", config, "--url", url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("now serving CN=b.example.com, valid until "), result.stdout
        server.wait_for(r"TLS certificate reloaded: CN=b\.example\.com", start=mark)
        served = served_certificate(tls)
        assert (fingerprint(served), served.serial_number, served.subject) == (fingerprint(cert_b), cert_b.serial_number, cert_b.subject)

        # The connection from before the reload is still the one with certificate A, and carries on.
        assert caller.peer_fingerprint() == fingerprint(cert_a)
        caller.bye("rotate-1", *first)
        caller.bye("rotate-2", *caller.invite("rotate-2"))

        # A key that does not match its certificate: refused, 409, logged, B still served.
        write_pem(tmp_path / "cert.pem", make_leaf("c.example.com", [x509.DNSName("localhost")])[0])
        mark = len(server.lines)
        result = _cli("tls", "reload", "--config", config, "--url", url)
        assert result.returncode == 1 and result.stderr.startswith("sipshield tls reload: 409: kept the certificate in use: "), result.stderr
        assert "does not match the certificate" in result.stderr
        server.wait_for(r"TLS certificate not reloaded, the one in use kept: .*tls\.private_key: .*key\.pem does not match the certificate", start=mark)
        assert fingerprint(served_certificate(tls)) == fingerprint(cert_b)

        # SIGHUP reloads the TLS files too: a good pair is served, a bad one is refused and logged.
        cert_d, _ = _issue(tmp_path, "d.example.com")
        mark = len(server.lines)
        server.process.send_signal(signal.SIGHUP)
        server.wait_for(r"SIGHUP: reloaded", start=mark)
        assert fingerprint(served_certificate(tls)) == fingerprint(cert_d)
        write_pem(tmp_path / "key.pem", key=make_leaf("e.example.com", None)[1])
        mark = len(server.lines)
        server.process.send_signal(signal.SIGHUP)
        server.wait_for(r"SIGHUP: configuration not reloaded, the running one kept: .*does not match the certificate", start=mark)
        assert fingerprint(served_certificate(tls)) == fingerprint(cert_d)
        assert caller.peer_fingerprint() == fingerprint(cert_a)  # the same connection all along
    finally:
        caller.uac.close()
    uas = callee.wait()
    test_calls.assert_ok(server, uas, calls=2)
