"""End to end: the registrar on the SQL location store (SQLite in data_dir)
keeps bindings across a restart of the real twistd service."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import ephemeral_config

pytestmark = pytest.mark.e2e


def register(server: tuple[str, int], sock: socket.socket, cseq: int, contact: str | None) -> bytes:
    port = sock.getsockname()[1]
    contact_line = f"Contact: <{contact}>\r\n" if contact else ""
    sock.sendto(
        (
            f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKreg{cseq};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=r1\r\nTo: <sip:alice@example.com>\r\n"
            f"Call-ID: reg-persist\r\nCSeq: {cseq} REGISTER\r\n{contact_line}Expires: 600\r\nContent-Length: 0\r\n\r\n"
        ).encode(),
        server,
    )
    sock.settimeout(10)
    while True:
        data = sock.recv(65535)
        if not data.startswith(b"SIP/2.0 100 "):
            return data


def test_sql_bindings_survive_a_restart(start_server, tmp_path: Path) -> None:
    config = ephemeral_config(extra='[registrar]\nstore = "sql"')
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        first = start_server(config)
        first.wait_for("location store ready: SQLLocationStore")
        answer = register(first.addresses["udp"], sock, 1, "sip:alice@127.0.0.1:5999")
        assert answer.startswith(b"SIP/2.0 200 "), answer
        assert b"<sip:alice@127.0.0.1:5999>;expires=" in answer
        first.stop()
        assert (tmp_path / "data" / "sipshield.db").exists()
        second = start_server(config)
        second.wait_for("location store ready: SQLLocationStore")
        query = register(second.addresses["udp"], sock, 2, None)
    assert query.startswith(b"SIP/2.0 200 ")
    assert b"<sip:alice@127.0.0.1:5999>;expires=" in query
    assert "Traceback" not in first.log + second.log
