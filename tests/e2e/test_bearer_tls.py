"""End to end: an RFC 8898 bearer token (a JWT signed by a key in a JWKS file)
registers over TLS against the real twistd service; over UDP it is refused."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

import jwt
import pytest
from conftest import ephemeral_config
from cryptography.hazmat.primitives.asymmetric import ec

pytestmark = pytest.mark.e2e
ISSUER, AUDIENCE = "https://as.example.com", "sip:example.com"


def register(token: str, local: tuple[str, int], transport: str) -> bytes:
    return (
        f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/{transport} {local[0]}:{local[1]};branch=z9hG4bKjwt{local[1]};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=j\r\nTo: <sip:alice@example.com>\r\nCall-ID: jwt@test\r\n"
        f"CSeq: 1 REGISTER\r\nContact: <sip:alice@{local[0]}:{local[1]};transport={transport.lower()}>\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def final(read) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or data.startswith(b"SIP/2.0 100 "):
        if data.startswith(b"SIP/2.0 100 ") and b"\r\n\r\n" in data:
            data = data.split(b"\r\n\r\n", 1)[1]
            continue
        data += read()
    return data


def test_bearer_token_registers_over_tls_and_not_over_udp(start_server, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public.update(kid="as1", use="sig", alg="ES256")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [public]}))
    server = start_server(ephemeral_config(trusted=False, extra=(
        f'[auth.bearer]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\nkeys = "jwks.json"\n'
    )))
    now = int(time.time())
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice@example.com", "iat": now, "exp": now + 300, "roles": ["staff"]},
                       key, algorithm="ES256", headers={"kid": "as1"})
    host, port = server.addresses["tls"]
    context = ssl.create_default_context(cafile=str(tmp_path / "data" / "tls-selfsigned.pem"))
    with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(register(token, tls.getsockname(), "TLS"))
        answer = final(lambda: tls.recv(65535))
    assert answer.startswith(b"SIP/2.0 200 "), answer.decode(errors="replace") + server.log
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.2", 0))
        udp.settimeout(10)
        udp.sendto(register(token, udp.getsockname(), "UDP"), server.addresses["udp"])
        answer = final(lambda: udp.recv(65535))
    assert answer.startswith(b"SIP/2.0 403 Forbidden: bearer tokens only over TLS"), answer
