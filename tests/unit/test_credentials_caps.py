"""Credentials too costly to parse get 400 before anything parses them (issue 7, CPU).

Parsing costs about 5 us per auth-param: one 60 KB ``Proxy-Authorization:
Digest a="b",a="b",...`` took 20-50 ms of the reactor for a guaranteed
failure.  A value over 4096 octets, or with more than 32 auth-params
(commas inside quoted strings do not count), gets ``400 Bad Request:
credentials too long`` / ``too many auth-params``, statelessly, at
admission.  The whole service through its real pipeline (pipeline_support).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from digest_client import H
from pipeline_support import PASSWORD, Proxy, proxy_service, request

import sipshield.auth._digest
import sipshield.auth._stages

ZERO = {"server": 0, "client": 0, "rfc2543_ack": 0, "sources": 0}


@pytest.fixture
def proxy(tmp_path: Path) -> Proxy:
    proxy = proxy_service(tmp_path)
    proxy.register("bob", "sip:bob@127.0.0.5:5070")
    return proxy


@pytest.fixture
def unparsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every credentials value the auth stage or the digest code parses."""
    parsed: list[str] = []
    for module in (sipshield.auth._stages, sipshield.auth._digest):
        real = module.parse_auth

        def spy(value: str, real=real):  # type: ignore[no-untyped-def]
            parsed.append(value)
            return real(value)

        monkeypatch.setattr(module, "parse_auth", spy)
    return parsed


def params(n: int) -> str:
    return "Digest " + ",".join(['a="b"'] * n)


def answer(proxy: Proxy, data: bytes) -> tuple[int, str]:
    before = len(proxy.phone.sent)
    proxy.send(data)
    (sent,) = proxy.phone.sent[before:]  # one datagram back
    message = proxy.phone.messages()[-1]
    return message.status, message.reason


def test_a_60_kb_proxy_authorization_gets_400_unparsed_and_statelessly(proxy: Proxy, unparsed: list[str]) -> None:
    data = request("INVITE", extra=f"Proxy-Authorization: {params(10000)}\r\n")
    assert len(data) > 60_000
    assert answer(proxy, data) == (400, "Bad Request: credentials too long")
    assert unparsed == []
    assert proxy.service.transactions.counts() == ZERO  # no transaction, no 100 Trying
    assert proxy.forwarded() == []


def test_more_than_32_auth_params_get_400_unparsed(proxy: Proxy, unparsed: list[str]) -> None:
    assert answer(proxy, request("INVITE", extra=f"Proxy-Authorization: {params(33)}\r\n")) == (400, "Bad Request: too many auth-params")
    assert unparsed == []


def test_32_auth_params_are_read_like_any_credentials(proxy: Proxy, unparsed: list[str]) -> None:
    """The control: at the cap the value is parsed (and, naming no realm of ours, challenged)."""
    assert answer(proxy, request("INVITE", extra=f"Proxy-Authorization: {params(32)}\r\n"))[0] == 407
    assert unparsed


def test_a_register_with_an_authorization_over_4096_octets_gets_400(proxy: Proxy, unparsed: list[str]) -> None:
    value = f'Digest username="{"a" * 4100}", realm="example.com"'
    assert answer(proxy, request("REGISTER", uri="sip:example.com", extra=f"Authorization: {value}\r\n")) == (400, "Bad Request: credentials too long")
    assert unparsed == []


def test_one_value_over_the_cap_among_several_gets_400(proxy: Proxy, unparsed: list[str]) -> None:
    extra = f"Proxy-Authorization: {params(3)}\r\nProxy-Authorization: {params(40)}\r\n"
    assert answer(proxy, request("INVITE", extra=extra)) == (400, "Bad Request: too many auth-params")
    assert unparsed == []


def test_genuine_credentials_with_commas_inside_quoted_strings_still_authenticate(proxy: Proxy) -> None:
    """Commas in a quoted cnonce separate no auth-params: 40 of them are not 40 params."""
    challenge = proxy.challenge("INVITE")
    uri = "sip:bob@example.com"
    cnonce = ",".join(["c"] * 41)
    ha1 = H("SHA-256", f"alice:example.com:{PASSWORD}")
    response = H("SHA-256", f"{ha1}:{challenge['nonce']}:00000001:{cnonce}:auth:{H('SHA-256', f'INVITE:{uri}')}")
    value = (f'Digest username="alice", realm="example.com", nonce="{challenge["nonce"]}", uri="{uri}", response="{response}", '
             f'algorithm=SHA-256, cnonce="{cnonce}", qop=auth, nc=00000001, opaque="{secrets.token_hex(4)}"')
    assert value.count(",") > 40
    proxy.send(request("INVITE", uri=uri, extra=f"Proxy-Authorization: {value}\r\n"))
    assert [hop for _, hop in proxy.forwarded()] == [("UDP", "127.0.0.5", 5070)]
