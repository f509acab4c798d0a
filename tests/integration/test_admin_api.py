"""The admin API of a real service over real HTTP on loopback: every answer
is checked against docs/admin-api.yaml (OpenAPI 3.1, its schemas as JSON
Schema 2020-12), every operation in that document is exercised, and what
the API does is checked on the service itself (a ban drops the source's
datagrams, a lifted one lets them in, a TLS reload serves the new
certificate)."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import pytest_twisted
import yaml
from cert_support import make_leaf, served_subject, write_pem
from cryptography import x509
from twisted.internet import reactor, threads
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from sipshield.config import parse_config
from sipshield.service import makeService
from sipshield.state import Binding


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = make_leaf(name, [x509.DNSName(name)])
    return write_pem(directory / f"{name}.pem", cert), write_pem(directory / f"{name}.key", key=key)


ROOT = Path(__file__).resolve().parent.parent.parent
SPEC = yaml.safe_load((ROOT / "docs" / "admin-api.yaml").read_text())
EXERCISED: set[tuple[str, str]] = set()


def _response_schema(path: str, method: str, status: int) -> dict[str, Any] | None:
    operation = SPEC["paths"][path][method.lower()]
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {path} answered {status}, which docs/admin-api.yaml does not list"
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    content = response.get("content")
    return None if content is None else content["application/json"]["schema"]


def check(path: str, method: str, status: int, body: bytes) -> Any:
    """Validate one real answer against the document; its JSON."""
    EXERCISED.add((path, method.lower()))
    schema = _response_schema(path, method, status)
    if schema is None:
        return None
    data = json.loads(body)
    jsonschema.Draft202012Validator({**schema, "components": SPEC["components"]}).validate(data)
    return data


class API:
    def __init__(self, port: int, token: str | None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.agent = Agent(reactor)

    @pytest_twisted.inlineCallbacks
    def call(self, method: str, path: str, spec_path: str | None = None, body: Any = None, token: str | None = "default") -> Any:
        headers = Headers()
        token = self.token if token == "default" else token
        if token is not None:
            headers.addRawHeader(b"authorization", f"Bearer {token}".encode())
        producer = None
        if body is not None:
            producer = FileBodyProducer(io.BytesIO(json.dumps(body).encode() if not isinstance(body, bytes) else body))
            headers.addRawHeader(b"content-type", b"application/json")
        response = yield self.agent.request(method.encode(), (self.base + path).encode(), headers, producer)
        raw = yield readBody(response)
        return response, check(spec_path or path.split("?")[0], method, response.code, raw)


@pytest.fixture
def service(tmp_path: Path) -> Any:
    cert, key = make_cert(tmp_path, "old.example.com")
    config = parse_config({
        "server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1", "tls:0:interface=127.0.0.1"]},
        "tls": {"certificate": str(cert), "private_key": str(key)},
        "bans": {"allowlist": ["192.0.2.0/24"]},
        "admin": {"port": 0},
    })  # fmt: skip
    service = makeService(config)
    service.privilegedStartService()
    service.startService()
    yield service
    pytest_twisted.blockon(service.stopService())


def _api(service: Any, token: str | None = None) -> API:
    port = service.admin.listening.getHost().port
    if token is None:
        token = (service.config.server.data_dir / "admin.token").read_text().strip()
    return API(port, token)


@pytest_twisted.inlineCallbacks
def test_without_a_known_token_nothing_is_reachable(service: Any) -> Any:
    api = _api(service)
    for method, path in (("GET", "/v1/status"), ("GET", "/v1/bans"), ("POST", "/v1/bans"), ("GET", "/v1/registrations")):
        for token in (None, "not-the-token", api.token + "x"):
            response, _ = yield api.call(method, path, token=token, body={"address": "198.51.100.1"} if method == "POST" else None)
            assert response.code == 401, (method, path, token)
            assert response.headers.getRawHeaders(b"www-authenticate") == [b'bearer realm="sipshield-admin"']
    assert not service.bans.bans()  # the unauthenticated POST banned nobody
    assert (service.config.server.data_dir / "admin.token").stat().st_mode & 0o777 == 0o600


@pytest_twisted.inlineCallbacks
def test_a_token_whose_role_lacks_manage_gets_403(tmp_path: Path) -> Any:
    config = parse_config({
        "server": {"data_dir": str(tmp_path / "data"), "listen": ["udp:0:interface=127.0.0.1"]},
        "roles": {"admin": ["register", "call"], "ops": ["manage"]}, "admin": {"port": 0},
    })  # fmt: skip
    service = makeService(config)
    service.startService()
    try:
        response, body = yield _api(service).call("GET", "/v1/bans")
        assert response.code == 403 and "manage" in body["error"]
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_status_bans_and_registrations(service: Any) -> Any:
    api = _api(service)
    response, status = yield api.call("GET", "/v1/status")
    assert response.code == 200 and status["version"] and {entry["transport"] for entry in status["listeners"]} == {"udp", "tls"}

    # a ban through the API drops the source before parsing; lifting it lets it in again
    response, ban = yield api.call("POST", "/v1/bans", body={"address": "198.51.100.7", "duration": 600, "reason": "seen in the SIEM"})
    assert response.code == 201 and ban["key"] == "198.51.100.7" and 598 <= ban["remaining"] <= 600
    assert service.core.refuse_source("198.51.100.7") and not service.core.refuse_source("198.51.100.8")
    response, ban6 = yield api.call("POST", "/v1/bans", body={"address": "2001:db8:1:2::99"})
    assert response.code == 201 and ban6["key"] == "2001:db8:1:2::/64"
    assert service.core.refuse_source("2001:db8:1:2::1")
    response, listed = yield api.call("GET", "/v1/bans")
    assert {b["key"] for b in listed["bans"]} == {"198.51.100.7", "2001:db8:1:2::/64"}
    response, _ = yield api.call("DELETE", "/v1/bans/2001%3Adb8%3A1%3A2%3A%3A%2F64", spec_path="/v1/bans/{key}")
    assert response.code == 200 and not service.core.refuse_source("2001:db8:1:2::1")
    response, gone = yield api.call("DELETE", "/v1/bans/203.0.113.1", spec_path="/v1/bans/{key}")
    assert response.code == 404 and "203.0.113.1" in gone["error"]

    # refusals name what is wrong
    for body, why in (({"address": "example.com"}, "address"), ({"address": "198.51.100.9", "duration": 0}, "duration"),
                      ({"address": "198.51.100.9", "until": 5}, "unknown field"), (b"not json", "JSON"), ([1], "object")):
        response, error = yield api.call("POST", "/v1/bans", body=body)
        assert response.code == 400 and why in error["error"], (body, error)
    response, error = yield api.call("POST", "/v1/bans", body={"address": "192.0.2.5"})
    assert response.code == 409 and "allowlist" in error["error"] and not service.core.refuse_source("192.0.2.5")

    yield service.location.put(Binding("sip:alice@example.com", "sip:alice@192.0.2.10:5060", reactor.seconds() + 300,
                                       source=("UDP", "192.0.2.10", 5060), user_agent="Phone/1.0", identity="alice@example.com"))
    response, regs = yield api.call("GET", "/v1/registrations?limit=5")
    assert response.code == 200
    (row,) = regs["registrations"]
    assert (row["aor"], row["source"], row["identity"]) == ("sip:alice@example.com", "UDP 192.0.2.10:5060", "alice@example.com")
    response, error = yield api.call("GET", "/v1/registrations?limit=0")
    assert response.code == 400 and "limit" in error["error"]


@pytest_twisted.inlineCallbacks
def test_tls_reload_serves_the_new_certificate_and_keeps_the_old_one_when_the_new_does_not_load(service: Any, tmp_path: Path) -> Any:
    api = _api(service)
    tls_port = service.addresses()["tls"][1]
    assert "old.example.com" in (yield threads.deferToThread(served_subject, tls_port))
    cert, key = make_cert(tmp_path / "new", "new.example.com")
    Path(service.config.tls.certificate).write_bytes(cert.read_bytes())
    Path(service.config.tls.private_key).write_bytes(key.read_bytes())
    response, served = yield api.call("POST", "/v1/tls/reload")
    assert response.code == 200 and "new.example.com" in served["subject"]
    assert "new.example.com" in (yield threads.deferToThread(served_subject, tls_port))
    Path(service.config.tls.private_key).write_text("not a key")
    response, error = yield api.call("POST", "/v1/tls/reload")
    assert response.code == 409 and "kept" in error["error"]
    assert "new.example.com" in (yield threads.deferToThread(served_subject, tls_port))


def _options_from(source: str, port: int) -> bytes | None:
    """An OPTIONS to the proxy from *source* over real UDP (blocking: run it in a thread); the answer's status line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        mine = s.getsockname()[1]
        s.sendto((f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {source}:{mine};branch=z9hG4bKrl{mine}\r\n"
                  f"From: <sip:ops@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: rl{mine}\r\nCSeq: 1 OPTIONS\r\n"
                  "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
        s.settimeout(5)
        return s.recv(65535).split(b"\r\n", 1)[0]


@pytest_twisted.inlineCallbacks
def test_reload_applies_the_reloadable_sections_of_the_file_and_refuses_the_rest(tmp_path: Path) -> Any:
    from sipshield.config import load_config

    path = tmp_path / "sipshield.toml"
    base = f'[server]\ndata_dir = "{tmp_path / "data"}"\nlisten = ["udp:0:interface=127.0.0.1"]\n[admin]\nport = 0\n'
    path.write_text(base)
    service = makeService(load_config(path))
    service.startService()
    try:
        api = _api(service)
        udp = service.addresses()["udp"][1]
        assert (yield threads.deferToThread(_options_from, "127.0.0.5", udp)) == b"SIP/2.0 200 OK"
        response, done = yield api.call("POST", "/v1/reload")
        assert response.code == 200 and done == {"reloaded": [], "tls": None}
        # an ACL now refuses OPTIONS from 127.0.0.5: the running service takes it on
        path.write_text(base + '[[acl.rules]]\naction = "deny"\nnetworks = ["127.0.0.5/32"]\nmethods = ["OPTIONS"]\n')
        response, done = yield api.call("POST", "/v1/reload")
        assert response.code == 200 and done["reloaded"] == ["acl"]
        assert (yield threads.deferToThread(_options_from, "127.0.0.5", udp)) == b"SIP/2.0 403 Forbidden: Not Allowed From This Source"
        assert (yield threads.deferToThread(_options_from, "127.0.0.6", udp)) == b"SIP/2.0 200 OK"
        # a broken file, and one that changes what needs a restart: 409, the running configuration kept
        for text, why in (("[acl\n", "TOML"), (base.replace("udp:0:", "tcp:0:") + "[acl]\n", "needs a restart")):
            path.write_text(text)
            response, error = yield api.call("POST", "/v1/reload")
            assert response.code == 409 and why in error["error"], error
        assert (yield threads.deferToThread(_options_from, "127.0.0.5", udp)) == b"SIP/2.0 403 Forbidden: Not Allowed From This Source"
        # [roles] reloads too: a token_role that no longer grants manage locks the token out at once
        path.write_text(base + '[roles]\nadmin = ["register", "call"]\n')
        response, done = yield api.call("POST", "/v1/reload")
        assert response.code == 200 and set(done["reloaded"]) == {"acl", "roles"}
        response, _ = yield api.call("GET", "/v1/status")
        assert response.code == 403
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_reload_of_a_service_started_without_a_file_is_refused(service: Any, log_lines: list[str]) -> Any:
    response, error = yield _api(service).call("POST", "/v1/reload")
    assert response.code == 409 and "without a configuration file" in error["error"]
    assert any(line.startswith("admin API reload: configuration not reloaded, the running one kept:") and "without a configuration file" in line
               for line in log_lines), log_lines[-5:]  # fmt: skip


@pytest_twisted.inlineCallbacks
def test_rates_and_top_talkers_count_what_the_proxy_received(service: Any) -> Any:
    api = _api(service)
    udp = service.addresses()["udp"][1]
    for source, count in (("127.0.0.21", 3), ("127.0.0.22", 1)):
        for _ in range(count):
            assert (yield threads.deferToThread(_options_from, source, udp)) == b"SIP/2.0 200 OK"
    service.activity.sample()  # a reading now; the monitor took the one before at start (then one every 5 s)
    response, rates = yield api.call("GET", "/v1/rates?window=60")
    assert response.code == 200 and rates["window"] == 60 and 0 < rates["seconds"] <= 60
    assert rates["requests"]["OPTIONS"] > 0 and rates["responses"]["2xx"] > 0 and set(rates["drops"]) >= {"banned", "admission"}
    response, top = yield api.call("GET", "/v1/top-talkers?limit=2")
    assert response.code == 200 and top["by"] == "requests"
    assert [(row["source"], row["requests"], row["banned"]) for row in top["talkers"]] == [("127.0.0.21", 3, False), ("127.0.0.22", 1, False)]
    response, _ = yield api.call("POST", "/v1/bans", body={"address": "127.0.0.22"})
    response, top = yield api.call("GET", "/v1/top-talkers?limit=5&by=auth_failures")
    assert response.code == 200 and top["by"] == "auth_failures" and top["talkers"] == []  # OPTIONS asked for no credentials
    response, top = yield api.call("GET", "/v1/top-talkers")
    assert {row["source"]: row["banned"] for row in top["talkers"]} == {"127.0.0.21": False, "127.0.0.22": True}
    for path, why in (("/v1/rates?window=0", "window"), ("/v1/rates?window=301", "window"), ("/v1/top-talkers?limit=101", "limit"),
                      ("/v1/top-talkers?by=bytes", "by")):  # fmt: skip
        response, error = yield api.call("GET", path)
        assert response.code == 400 and why in error["error"], path


@pytest_twisted.inlineCallbacks
def test_explain_names_the_ban_and_the_challenge_and_refuses_bad_input(service: Any) -> Any:
    api = _api(service)
    yield service.schema_ready  # the user store, asked for the roles of a user
    response, _ = yield api.call("POST", "/v1/bans", body={"address": "198.51.100.9", "reason": "seen in the SIEM"})
    assert response.code == 201
    invite = "INVITE sip:bob@127.0.0.1 SIP/2.0"
    response, banned = yield api.call("POST", "/v1/explain", body={"request": invite, "source": "udp 198.51.100.9:5060"})
    assert response.code == 200 and [s["stage"] for s in banned["steps"]] == ["bans"] and banned["steps"][0]["decides"]
    assert "seen in the SIEM" in banned["steps"][0]["reason"] and banned["outcome"].startswith("drop")
    response, challenged = yield api.call("POST", "/v1/explain", body={"request": invite, "source": "203.0.113.5", "headers": ["User-Agent: softphone"]})
    assert response.code == 200 and challenged["source"] == "udp 203.0.113.5:5060" and challenged["user"] is None
    assert challenged["outcome"].startswith("answer 407 Proxy Authentication Required")
    response, assumed = yield api.call("POST", "/v1/explain", body={"request": invite, "source": "tls 203.0.113.5:5061", "user": "nobody"})
    assert response.code == 200 and assumed["user"] == "nobody@localhost"
    assert any("not found" in s["reason"] for s in assumed["steps"] if s["stage"] == "auth" and s["phase"] == "pipeline"), assumed
    for body, named in (
        ({"request": "INVITE sip:bob@127.0.0.1", "source": "udp 203.0.113.5"}, "request"), ({"request": invite, "source": "udp bob:5060"}, "source"),
        ({"request": invite, "source": "sctp 203.0.113.5"}, "source"), ({"source": "udp 203.0.113.5"}, "request"),
        ({"request": invite}, "source"), ({"request": invite, "source": "udp 203.0.113.5:0"}, "source"),
        ({"request": invite, "source": "udp 203.0.113.5", "headers": ["no colon"]}, "headers"),
        ({"request": invite, "source": "udp 203.0.113.5", "why": 1}, "unknown"),
        ({"request": "INVITE <sip:bob@127.0.0.1> SIP/2.0", "source": "udp 203.0.113.5"}, "request"),
        ({"request": "ACK sip:bob@127.0.0.1 SIP/2.0", "source": "udp 203.0.113.5"}, "request"),
        ({"request": invite, "source": "udp 203.0.113.5", "user": 7}, "user"),
        ({"request": invite, "source": "udp 203.0.113.5", "user": "a b"}, "user"),
    ):  # fmt: skip
        response, error = yield api.call("POST", "/v1/explain", body=body)
        assert response.code == 400 and error["error"].startswith(named), (body, error)
    assert [b.key for b in service.bans.bans()] == ["198.51.100.9"]  # explaining banned nobody more


def test_every_operation_in_the_document_was_exercised() -> None:
    """Run last in this module (pytest keeps file order)."""
    documented = {(path, method) for path, operations in SPEC["paths"].items() for method in operations}
    assert documented <= EXERCISED, sorted(documented - EXERCISED)
