"""RBAC for every out-of-dialog method, not only INVITE (issue 7, no open relay).

Through the whole service with digest users of different roles: whatever the
method, a request the proxy would relay to a user needs ``call``, to a
gateway (a route marked external) ``call:external`` too, and its From must
be the authenticated user.  A role without ``call`` may only REGISTER itself
and send OPTIONS to the proxy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_support import Proxy, proxy_service

METHODS = ["INVITE", "MESSAGE", "SUBSCRIBE", "OPTIONS", "REFER", "PUBLISH", "INFO", "NOTIFY", "UPDATE", "FOO"]
USERS = {
    "bob": ("b-secret", ("staff",)),
    "agnes": ("a-secret", ("agent",)),  # register only
    "carol": ("c-secret", ("staff",)),  # register, call
    "root": ("r-secret", ("admin",)),  # register, call, call:external
}
GATEWAY = "127.0.0.9"
BOB_PHONE = "127.0.0.3"


@pytest.fixture
def proxy(tmp_path: Path):
    routes = [{"match_user_prefix": "9", "target": f"sip:{GATEWAY}:5090;transport=udp", "external": True}]
    service = proxy_service(tmp_path, USERS, routes=routes)
    bob = "sip:bob@example.com"
    registered = service.send_request("REGISTER", "sip:example.com", from_uri=bob, to=bob, credentials=("bob", "b-secret"),
                              source=(BOB_PHONE, 5060), contact=f"sip:bob@{BOB_PHONE}:5060")
    assert registered.status == 200
    yield service
    service.stop()


def sent_to(proxy: Proxy, host: str) -> list[str]:
    return [m.method for m, hop in proxy.dispatcher.sent if hop[1] == host and hasattr(m, "method")]


def send(proxy: Proxy, method: str, user: str, target: str = "sip:bob@example.com", from_user: str | None = None):
    password = USERS[user][0]
    return proxy.send_request(method, target, from_uri=f"sip:{from_user or user}@example.com", credentials=(user, password))


@pytest.mark.parametrize("method", METHODS)
def test_a_role_without_call_cannot_send_to_a_user(proxy: Proxy, method: str) -> None:
    answer = send(proxy, method, "agnes")
    assert (answer.status, answer.reason) == (403, "Forbidden: missing permission call")
    assert sent_to(proxy, BOB_PHONE) == []


@pytest.mark.parametrize("method", METHODS)
def test_a_role_with_call_reaches_the_user_from_its_own_address(proxy: Proxy, method: str) -> None:
    send(proxy, method, "carol")
    assert sent_to(proxy, BOB_PHONE) == [method]


@pytest.mark.parametrize("method", METHODS)
def test_from_must_be_the_authenticated_user(proxy: Proxy, method: str) -> None:
    answer = send(proxy, method, "carol", from_user="root")
    assert (answer.status, answer.reason) == (403, "Forbidden: From does not match the authenticated user")
    assert sent_to(proxy, BOB_PHONE) == []


@pytest.mark.parametrize("method", METHODS)
def test_a_gateway_needs_call_external(proxy: Proxy, method: str) -> None:
    for user in ("agnes", "carol"):
        answer = send(proxy, method, user, target="sip:9555123@example.com")
        assert answer.status == 403 and answer.reason.startswith("Forbidden: missing permission call")
    assert sent_to(proxy, GATEWAY) == []
    send(proxy, method, "root", target="sip:9555123@example.com")
    assert sent_to(proxy, GATEWAY) == [method]


def test_a_role_without_call_may_register_itself_and_ask_the_proxy_for_options(proxy: Proxy) -> None:
    agnes = "sip:agnes@example.com"
    assert proxy.send_request("REGISTER", "sip:example.com", from_uri=agnes, to=agnes, credentials=("agnes", "a-secret"),
                      contact="sip:agnes@127.0.0.2:40000").status == 200
    assert proxy.send_request("OPTIONS", "sip:example.com", from_uri=agnes, credentials=("agnes", "a-secret")).status == 200
    assert proxy.send_request("OPTIONS", "sip:127.0.0.1:5060", from_uri=agnes).status == 200  # no credentials needed
