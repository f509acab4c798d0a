"""User parts compared after RFC 3261 19.1.4 unescaping (issue 7, identity).

Through the whole service with digest users: ``sip:%61lice@example.com`` is
alice's address, so only alice may register it or call from it, and it is
keyed as alice's AOR in the memory and SQL location stores alike.  The digest
username is a quoted string (RFC 7616 3.4), taken as sent: a stored user
named ``%61lice`` is not alice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from inline_pool import InlinePool
from pipeline_support import Proxy, proxy_service

ALICE_AOR = "sip:alice@example.com"
USERS = {"alice": ("a-secret", ("staff",)), "bob": ("b-secret", ("staff",)), "%61lice": ("m-secret", ("staff",))}


@pytest.fixture(params=["memory", "sql"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if request.param == "sql":
        monkeypatch.setattr("sipshield.state._sql.ThreadPool", InlinePool)
    service = proxy_service(tmp_path, USERS, registrar={"store": request.param})
    yield service
    service.stop()


def register(proxy: Proxy, aor: str, user: str, password: str, contact: str = "sip:phone@127.0.0.2:40000"):
    return proxy.send_request("REGISTER", "sip:example.com", from_uri=aor, to=aor, credentials=(user, password), contact=contact)


def test_alice_registering_her_escaped_address_lands_in_her_one_aor(proxy: Proxy) -> None:
    assert register(proxy, "sip:%61lice@example.com", "alice", "a-secret").status == 200
    assert proxy.bindings(ALICE_AOR) == ["sip:phone@127.0.0.2:40000"]
    assert register(proxy, ALICE_AOR, "alice", "a-secret", contact="sip:desk@127.0.0.2:40001").status == 200
    assert sorted(proxy.bindings(ALICE_AOR)) == ["sip:desk@127.0.0.2:40001", "sip:phone@127.0.0.2:40000"]


def test_user_named_percent_61lice_cannot_bind_into_alices_aor(proxy: Proxy) -> None:
    answer = register(proxy, "sip:%61lice@example.com", "%61lice", "m-secret", contact="sip:mallory@127.0.0.2:40000")
    assert (answer.status, answer.reason) == (403, "Forbidden: may only register your own address")
    assert proxy.bindings(ALICE_AOR) == []


def test_digest_username_is_not_unescaped(proxy: Proxy) -> None:
    # "%61lice" with alice's password: no such user, so a challenge, and no binding.
    assert register(proxy, "sip:%61lice@example.com", "%61lice", "a-secret").status == 401
    assert proxy.bindings(ALICE_AOR) == []


def test_calls_from_an_escaped_alice_need_alices_credentials(proxy: Proxy) -> None:
    assert register(proxy, "sip:bob@example.com", "bob", "b-secret", contact="sip:bob@127.0.0.3:5060").status == 200
    as_bob = proxy.send_request("INVITE", "sip:bob@example.com", from_uri="sip:%61lice@example.com", credentials=("bob", "b-secret"))
    as_mallory = proxy.send_request("INVITE", "sip:bob@example.com", from_uri="sip:%61lice@example.com", credentials=("%61lice", "m-secret"))
    for answer in (as_bob, as_mallory):
        assert (answer.status, answer.reason) == (403, "Forbidden: From does not match the authenticated user")
    assert proxy.relayed("INVITE") == []
    proxy.send_request("INVITE", "sip:bob@example.com", from_uri="sip:%61lice@example.com", credentials=("alice", "a-secret"))
    (relayed,) = proxy.relayed("INVITE")
    assert str(relayed.uri) == "sip:bob@127.0.0.3:5060"
