"""The admin API's HTTP before the token is checked (attack/admin_probe.py):
twisted.web reads a whole request, body included, before the Portal sees its
Authorization, so the body size, the time a request may take, form parsing
and the number of connections are bounded first.  Through the service
makeService builds, its admin Site driven over a StringTransport."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_support import build_service
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sipshield.ops._admin import IDLE_TIMEOUT, MAX_BODY, MAX_CONNECTIONS, REQUEST_DEADLINE


def site(tmp_path: Path) -> tuple[Any, Clock, bytes]:
    clock = Clock()
    service = build_service(tmp_path, {"admin": {"port": 0}}, clock=clock, inline_lookups=False)
    token = (service.config.server.data_dir / "admin.token")
    factory = service.admin.site()
    return factory, clock, token.read_bytes().strip() if token.exists() else b""


def connect(factory: Any, port: int = 40000) -> tuple[Any, StringTransport]:
    channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", port))
    channel.makeConnection(transport)
    return channel, transport


def test_a_body_over_the_limit_is_refused_413_before_it_is_read_or_the_token_checked(tmp_path: Path) -> None:
    factory, _, _ = site(tmp_path)
    channel, transport = connect(factory)
    channel.dataReceived(b"POST /v1/bans HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ") and transport.disconnecting
    request = channel.requests[-1]
    channel.dataReceived(b"x" * 65536)
    assert request.content.tell() == 0  # nothing of it buffered (a temporary file would have filled the disk)


def test_a_chunked_body_is_cut_at_the_limit_with_413(tmp_path: Path) -> None:
    factory, _, _ = site(tmp_path)
    channel, transport = connect(factory)
    channel.dataReceived(b"POST /v1/bans HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (4096, b"{" * 4096)
    for _ in range(MAX_BODY // 4096 + 2):
        channel.dataReceived(chunk)
    assert transport.value().startswith(b"HTTP/1.1 413 ") and transport.disconnecting
    assert channel.requests[-1].content.tell() <= MAX_BODY


def test_a_slow_request_gets_408_at_its_deadline_although_bytes_keep_coming(tmp_path: Path) -> None:
    factory, clock, _ = site(tmp_path)
    channel, transport = connect(factory)
    channel.dataReceived(b"POST /v1/bans HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(int(REQUEST_DEADLINE) - 1):
        clock.advance(1)
        channel.dataReceived(b" ")  # a byte a second keeps the idle timeout from firing
    assert transport.value() == b"" and not transport.disconnecting
    clock.advance(1)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting


def test_a_complete_request_is_answered_and_its_deadline_does_not_fire_later(tmp_path: Path) -> None:
    factory, clock, token = site(tmp_path)
    channel, transport = connect(factory)
    channel.dataReceived(b"GET /v1/bans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    clock.advance(REQUEST_DEADLINE + 1)
    assert transport.value() == b"" and not transport.disconnecting
    clock.advance(IDLE_TIMEOUT)
    assert transport.disconnecting  # idle keep-alive connections end too


def test_a_multipart_form_body_is_not_parsed_before_the_token_check(tmp_path: Path) -> None:
    factory, _, _ = site(tmp_path)
    channel, transport = connect(factory)
    body = b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n" + b"x" * 1000 + b"\r\n--b--\r\n"
    channel.dataReceived(b"POST /v1/bans HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert transport.value().startswith(b"HTTP/1.1 401 ")
    assert channel.requests == [] or not channel.requests[-1].args


def test_connections_past_the_cap_are_refused_and_closed_ones_give_their_place_back(tmp_path: Path) -> None:
    factory, _, _ = site(tmp_path)
    open_ = [connect(factory, 40000 + i) for i in range(MAX_CONNECTIONS)]
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 1)) is None
    channel, transport = open_[0]
    transport.loseConnection()
    channel.connectionLost(None)
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 2)) is not None


def post(factory: Any, token: bytes, body: bytes) -> bytes:
    channel, transport = connect(factory)
    channel.dataReceived(b"POST /v1/bans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token
                         + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return bytes(transport.value())


def test_json_nested_too_deep_is_a_400_not_a_500(tmp_path: Path) -> None:
    factory, _, token = site(tmp_path)
    answer = post(factory, token, b"[" * 8000 + b"]" * 8000)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"nests too deep" in answer


def test_addresses_that_are_not_one_host_are_not_banned(tmp_path: Path) -> None:
    factory, _, token = site(tmp_path)
    for address in (b"0.0.0.0", b"::", b"224.0.0.1", b"ff02::1", b"255.255.255.255"):
        answer = post(factory, token, b'{"address": "%s"}' % address)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"not one host" in answer, address
    assert post(factory, token, b'{"address": "198.51.100.1"}').startswith(b"HTTP/1.1 201 ")


def test_the_token_file_is_made_private_and_never_followed_through_a_link(tmp_path: Path) -> None:
    from sipshield.ops import load_or_create_token

    path = tmp_path / "data" / "admin.token"
    path.parent.mkdir()
    path.write_bytes(b"operator-set\n")
    path.chmod(0o644)
    assert load_or_create_token(path) == b"operator-set" and path.stat().st_mode & 0o777 == 0o600
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"")
    link = tmp_path / "data" / "linked.token"
    link.symlink_to(elsewhere)
    try:
        load_or_create_token(link)
    except OSError:
        pass
    assert elsewhere.read_bytes() == b""  # no token written through the link
    fresh = tmp_path / "data" / "fresh.token"
    assert load_or_create_token(fresh) == load_or_create_token(fresh) and fresh.stat().st_mode & 0o777 == 0o600
