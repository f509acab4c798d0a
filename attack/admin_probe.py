"""Admin API probes over the service's own Site and a StringTransport
(run: PYTHONPATH=.:tests python attack/admin_probe.py): prints each request's status line."""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "tests")
sys.path.insert(0, "tests/unit")
from test_admin_http import connect, site  # noqa: E402

factory, clock, token = site(Path(tempfile.mkdtemp()))
AUTH = b"Authorization: Bearer " + token + b"\r\n"


def probe(name: str, raw: bytes) -> None:
    channel, transport = connect(factory)
    channel.dataReceived(raw)
    status = transport.value().split(b"\r\n", 1)[0].decode()
    print(f"{status:40} {name}")


def post(body: bytes, auth: bytes = AUTH, path: bytes = b"/v1/bans") -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: %d\r\n\r\n" % len(body) + body


probe("no auth", b"GET /v1/bans HTTP/1.1\r\nHost: x\r\n\r\n")
probe("BEARER upper", b"GET /v1/bans HTTP/1.1\r\nHost: x\r\nAuthorization: BEARER " + token + b"\r\n\r\n")
probe("two Authorization, good first", b"GET /v1/bans HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Authorization: Bearer x\r\n\r\n")
probe("HTTP/1.0", b"GET /v1/bans HTTP/1.0\r\n\r\n")
probe("absolute-form", b"GET http://evil/v1/bans HTTP/1.1\r\nHost: x\r\n\r\n")
probe("//v1/bans", b"GET //v1/bans HTTP/1.1\r\nHost: x\r\n\r\n")
probe("/v1/%2e%2e/v1/bans", b"GET /v1/%2e%2e/v1/bans HTTP/1.1\r\nHost: x\r\n\r\n")
probe("HEAD no auth", b"HEAD /v1/bans HTTP/1.1\r\nHost: x\r\n\r\n")
probe("OPTIONS * no auth", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
probe("PUT authed", b"PUT /v1/bans HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 0\r\n\r\n")
probe("trailing slash authed", b"GET /v1/bans/ HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n")
probe("deep JSON nesting", post(b"[" * 15000 + b"]" * 15000))
probe("huge int", post(b'{"address":"198.51.100.1","duration":' + b"9" * 5000 + b"}"))
probe("NaN", post(b'{"address":"198.51.100.1","duration":NaN}'))
probe("Infinity", post(b'{"address":"198.51.100.1","duration":Infinity}'))
for address in ("0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "ff02::1", "fe80::1%eth0", "::ffff:192.0.2.1", "127.0.0.1"):
    probe(f"ban {address}", post(json.dumps({"address": address}).encode()))
probe("DELETE non-ban key", b"DELETE /v1/bans/..%2f..%2fetc HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n")
probe("1e9 Content-Length", b"POST /v1/bans HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
