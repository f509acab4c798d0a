"""One nonce serves at most ``[auth] max_nonce_failures`` failed guesses (issue 7).

The attacker review made 1501 password guesses with one nonce.  Now, after
``max_nonce_failures`` (default 3) failed digest responses to a nonce this
proxy issued to that source, the nonce is invalid: the next request with it
gets a fresh challenge (``stale=false``), statelessly at admission, even with
the right password.  Guesses still being verified count too, so a burst sent
before the first failure is known gets no more.  The whole service through
its real pipeline (pipeline_support), its SQL user store behind a thread pool
that runs inline, or on demand for the race.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from digest_client import authorization, challenges
from inline_pool import InlinePool, call_inline
from pipeline_support import PASSWORD, PHONE, Proxy, proxy_service, request
from test_core import RecordingFlow

from sipshield.auth._credentials import ISIPDigestCredentials
from sipshield.config import ConfigError, parse_config

BOB = ("UDP", "127.0.0.5", 5070)
ZERO = {"server": 0, "client": 0, "rfc2543_ack": 0, "sources": 0}


def make(tmp_path: Path, **auth: Any) -> Proxy:
    # The nonce's own limit, alone: with bans on, the third failure would ban the phone
    # (tests/unit/test_bans.py), and what follows it here would be dropped instead.
    no_bans = {"bans": {"enabled": False}}
    proxy = proxy_service(tmp_path, auth=auth, **no_bans) if auth else proxy_service(tmp_path, **no_bans)
    proxy.register("bob", "sip:bob@127.0.0.5:5070")
    return proxy


def invite(proxy: Proxy, nonce: str, password: str, flow: RecordingFlow | None = None, nc: int = 1) -> tuple[int, dict[str, str]]:
    """An INVITE answering *nonce* with *password*; the status and the new challenge (if any)."""
    flow = flow or proxy.phone
    challenge = {"realm": "example.com", "nonce": nonce}
    auth = authorization(challenge, "SHA-256", "alice", password, "INVITE", "sip:bob@example.com", nc=f"{nc:08x}")
    before = len(flow.sent)
    proxy.send(request("INVITE", extra=f"Proxy-Authorization: {auth}\r\n"), flow)
    finals = [m for m in flow.messages()[before:] if m.status >= 200]
    if not finals:
        return (0, {})
    sha256 = [c for c in challenges(flow.sent[-1][0], "Proxy-Authenticate") if c.get("algorithm") == "SHA-256"]
    return finals[-1].status, (sha256[0] if sha256 else {})


def not_stale(challenge: dict[str, str]) -> bool:
    return challenge.get("stale", "false") == "false"


def test_after_three_wrong_passwords_the_nonce_is_dead_even_for_the_right_one(tmp_path: Path) -> None:
    proxy = make(tmp_path)
    spared = proxy.challenge()["nonce"]
    for _ in range(2):
        assert invite(proxy, spared, "guess")[0] == 407
    invite(proxy, spared, PASSWORD)  # two failures: the nonce still serves
    assert [hop for _, hop in proxy.forwarded()] == [BOB]

    nonce = proxy.challenge()["nonce"]
    for _ in range(3):
        status, fresh = invite(proxy, nonce, "guess")
        assert status == 407 and not_stale(fresh) and fresh["nonce"] != nonce
    trying = proxy.phone.statuses().count(100)
    status, fresh = invite(proxy, nonce, PASSWORD)
    assert status == 407 and not_stale(fresh) and fresh["nonce"] != nonce
    assert len(proxy.forwarded()) == 1
    assert proxy.phone.statuses().count(100) == trying  # answered at admission: no transaction, no 100 Trying
    invite(proxy, fresh["nonce"], PASSWORD)  # the fresh nonce works
    assert len(proxy.forwarded()) == 2


def test_successful_uses_do_not_count_and_do_not_forgive_failures(tmp_path: Path) -> None:
    """A phone reuses its nonce with a growing nc (RFC 7616 3.4): no limit on
    those, and a success between guesses does not reset the count."""
    proxy = make(tmp_path)
    nonce = proxy.challenge()["nonce"]
    nc = 0
    for round_ in range(3):
        for _ in range(3):
            nc += 1
            invite(proxy, nonce, PASSWORD, nc=nc)
        assert len(proxy.forwarded()) == 3 * (round_ + 1)
        assert invite(proxy, nonce, "guess", nc=nc + 1)[0] == 407
    assert invite(proxy, nonce, PASSWORD, nc=nc + 2)[0] == 407  # the third failure killed it
    assert len(proxy.forwarded()) == 9


def test_max_nonce_failures_is_configurable(tmp_path: Path) -> None:
    proxy = make(tmp_path, max_nonce_failures=1)
    nonce = proxy.challenge()["nonce"]
    assert invite(proxy, nonce, "guess")[0] == 407
    assert invite(proxy, nonce, PASSWORD)[0] == 407
    assert proxy.forwarded() == []


def test_guesses_with_a_nonce_issued_to_another_source_do_not_count(tmp_path: Path) -> None:
    """An attacker replaying alice's nonce from elsewhere gets challenges of
    its own and cannot burn her nonce; alice's own failures do."""
    proxy = make(tmp_path)
    nonce = proxy.challenge()["nonce"]  # issued to alice's phone
    attacker = RecordingFlow(("127.0.0.3", PHONE[1]), local=proxy.phone.local)
    for _ in range(5):
        assert invite(proxy, nonce, "guess", attacker)[0] == 407
    assert attacker.statuses().count(100) == 0  # not even a transaction: the nonce is not theirs
    invite(proxy, nonce, PASSWORD)
    assert [hop for _, hop in proxy.forwarded()] == [BOB]
    for nc in range(2, 5):
        assert invite(proxy, nonce, "guess", nc=nc)[0] == 407
    status, fresh = invite(proxy, nonce, PASSWORD, nc=5)
    assert status == 407 and not_stale(fresh)
    assert len(proxy.forwarded()) == 1


class HeldPool(InlinePool):
    """A thread pool whose work waits until ``run()``: the verifications interleave."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[Any, Any, tuple[Any, ...], dict[str, Any]]] = []

    def callInThreadWithCallback(self, onResult: Any, func: Any, *args: Any, **kw: Any) -> None:
        self.held.append((onResult, func, args, kw))

    def run(self) -> int:
        held, self.held = self.held, []
        for onResult, func, args, kw in held:
            call_inline(onResult, func, *args, **kw)
        return len(held)


def hold_backends(proxy: Proxy) -> HeldPool:
    pool = HeldPool()
    for checker in proxy.service.portal.checkers[ISIPDigestCredentials].checkers:
        checker.threadpool = pool
    return pool


def test_a_burst_of_guesses_sent_before_any_failure_is_known_gets_only_three_to_the_backend(tmp_path: Path) -> None:
    proxy = make(tmp_path)
    nonce = proxy.challenge()["nonce"]
    pool = hold_backends(proxy)
    answers = [invite(proxy, nonce, f"guess{i}")[0] for i in range(10)]
    assert answers == [0, 0, 0] + [407] * 7  # three being verified; the rest challenged at once
    assert len(pool.held) == 3
    assert pool.run() == 3
    assert invite(proxy, nonce, PASSWORD)[0] == 407
    assert pool.held == [] and proxy.forwarded() == []


def test_a_verification_that_times_out_is_no_guess(tmp_path: Path) -> None:
    """A hung backend (the stage deadline answers 500) does not burn the nonce."""
    proxy = make(tmp_path)
    nonce = proxy.challenge()["nonce"]
    hold_backends(proxy)
    for _ in range(3):
        assert invite(proxy, nonce, PASSWORD)[0] == 0
    proxy.clock.advance(proxy.service.config.limits.stage_timeout + 1)
    assert proxy.phone.statuses().count(500) == 3
    for checker in proxy.service.portal.checkers[ISIPDigestCredentials].checkers:
        checker.threadpool = InlinePool()
    auth = authorization({"realm": "example.com", "nonce": nonce}, "SHA-256", "alice", PASSWORD, "INVITE", "sip:bob@example.com", nc="00000002")
    proxy.send(request("INVITE", extra=f"Proxy-Authorization: {auth}\r\n"))
    assert [hop for _, hop in proxy.forwarded()] == [BOB]


@pytest.mark.parametrize(("value", "message"), [
    ("0", "auth.max_nonce_failures: 0 is out of range (1..1000)"),
    ('"3"', "auth.max_nonce_failures"),
    ("2.5", "auth.max_nonce_failures"),
])
def test_max_nonce_failures_is_validated(value: str, message: str) -> None:
    import tomllib

    with pytest.raises(ConfigError) as raised:
        parse_config(tomllib.loads(f"[auth]\nmax_nonce_failures = {value}\n"))
    assert message in str(raised.value)
