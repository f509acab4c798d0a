"""SIGHUP to a real twistd sipshield: the edited configuration file's
reloadable sections take effect (an ACL here), a TLS connection opened
before the reload keeps working after it, and a broken file is refused
with the error logged and the running configuration kept."""

from __future__ import annotations

import signal
import socket
import ssl
from pathlib import Path

from conftest import ephemeral_config


def options(host: str, port: int, source: str) -> bytes:
    """The status line of the answer to an OPTIONS to the proxy, over UDP from *source*."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        mine = s.getsockname()[1]
        s.sendto(_options(host, port, "UDP", source, mine), (host, port))
        s.settimeout(5)
        return s.recv(65535).split(b"\r\n", 1)[0]


def _options(host: str, port: int, transport: str, source: str, mine: int) -> bytes:
    return (f"OPTIONS sip:{host}:{port} SIP/2.0\r\nVia: SIP/2.0/{transport} {source}:{mine};branch=z9hG4bKhup{mine}{transport}\r\n"
            f"From: <sip:ops@example.com>;tag=1\r\nTo: <sip:{host}>\r\nCall-ID: hup{mine}{transport}\r\nCSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def test_sighup_reloads_the_acl_keeps_tls_connections_and_refuses_a_broken_file(start_server, tmp_path: Path) -> None:
    server = start_server(ephemeral_config())
    config = tmp_path / "sipshield.toml"
    original = config.read_text()
    host, udp = server.addresses["udp"]
    _, tls_port = server.addresses["tls"]
    assert options(host, udp, "127.0.0.5") == b"SIP/2.0 200 OK"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, tls_port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(_options(host, tls_port, "TLS", "127.0.0.1", tls.getsockname()[1]))
        assert tls.recv(65535).startswith(b"SIP/2.0 200 OK")

        config.write_text(original + '\n[[acl.rules]]\naction = "deny"\nnetworks = ["127.0.0.5/32"]\nmethods = ["OPTIONS"]\n')
        mark = len(server.lines)
        server.process.send_signal(signal.SIGHUP)
        server.wait_for(r"SIGHUP: reloaded acl", start=mark)
        assert options(host, udp, "127.0.0.5") == b"SIP/2.0 403 Forbidden: Not Allowed From This Source"
        assert options(host, udp, "127.0.0.6") == b"SIP/2.0 200 OK"
        tls.sendall(_options(host, tls_port, "TLS", "127.0.0.1", tls.getsockname()[1]).replace(b"CSeq: 1", b"CSeq: 2"))
        assert tls.recv(65535).startswith(b"SIP/2.0 200 OK")  # the connection from before the reload still works

    config.write_text("[acl\n")
    mark = len(server.lines)
    server.process.send_signal(signal.SIGHUP)
    server.wait_for(r"SIGHUP: configuration not reloaded, the running one kept: .*TOML", start=mark)
    assert options(host, udp, "127.0.0.5") == b"SIP/2.0 403 Forbidden: Not Allowed From This Source"
    assert server.process.poll() is None
    assert "Traceback" not in server.log
