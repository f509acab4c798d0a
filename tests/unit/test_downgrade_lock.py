"""The MD5 downgrade lock through the real service (issue 8): once alice has
logged in with SHA-256, her right MD5 answer is refused as a wrong password
is (same answer on the wire) and reported as an ``auth-downgrade`` event;
``sipshield user unlock-md5`` lifts it; a user who never used SHA-2 keeps
MD5; the lock outlives a restart; an unreadable lock table fails closed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from digest_client import authorization, challenges
from pipeline_support import PASSWORD, Proxy, RecordingDispatcher, build_service, proxy_service, request
from twisted.logger import globalLogPublisher

from sipshield import cli
from sipshield.auth._downgrade import DowngradeLockStore
from sipshield.events import AUTH_DOWNGRADE, AUTH_FAILURE, SecurityEvent

MIXED = {"auth": {"algorithms": ["SHA-256", "SHA-512-256", "MD5"]}}
BOB = "sip:bob@192.0.2.20:5060"


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    p = proxy_service(tmp_path, {"alice": (PASSWORD, ("staff",)), "carol": ("carol-secret", ("staff",))}, **MIXED)
    p.register("bob", BOB)
    yield p
    p.stop()


def invite(proxy: Proxy, algorithm: str, password: str = PASSWORD) -> tuple[int, str]:
    """alice's INVITE to bob answering a fresh challenge with *algorithm*; (status, reason) of the answer, or (0, "") if forwarded."""
    before = len(proxy.forwarded())
    sent = len(proxy.phone.sent)
    proxy.send(proxy.authorized(algorithm=algorithm, password=password))
    if len(proxy.forwarded()) > before:
        return 0, ""
    answer = proxy.phone.messages()[sent + 1:][-1]
    return answer.status, answer.reason


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sipshield.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\ndomains = ["example.com"]\n'
                    '[auth]\nalgorithms = ["SHA-256", "SHA-512-256", "MD5"]\n')
    return path


class Recorder:
    """An observer on the service's security event bus (before the log's rate limit)."""

    def __init__(self) -> None:
        self.events: list[SecurityEvent] = []

    def emit(self, event: SecurityEvent) -> None:
        self.events.append(event)


def test_md5_after_a_sha256_login_is_refused_like_a_wrong_password_and_reported(proxy: Proxy) -> None:
    assert invite(proxy, "MD5") == (0, "")  # never used SHA-2 so far: MD5 works
    assert invite(proxy, "SHA-256") == (0, "")
    recorder = Recorder()
    proxy.service.events.subscribe(recorder)
    right = invite(proxy, "MD5")
    right_answer = proxy.phone.sent[-1][0]
    wrong = invite(proxy, "MD5", password="WRONG")
    wrong_answer = proxy.phone.sent[-1][0]
    assert right == wrong == (407, "Proxy Authentication Required")

    def shape(raw: bytes) -> list[Any]:
        names = [line.split(":", 1)[0] for line in raw.decode().split("\r\n")[1:] if ":" in line]
        return [names, [sorted(c) for c in challenges(raw, "Proxy-Authenticate")], [c.get("stale") for c in challenges(raw, "Proxy-Authenticate")]]

    assert shape(right_answer) == shape(wrong_answer)  # the refusal tells nobody the password was right
    # Both are an auth-failure (what bans count: the same for a right and a
    # wrong answer); the right one is also an auth-downgrade, for the operator.
    assert [(e.kind, e.source, e.transport, e.user) for e in recorder.events] == [
        (AUTH_FAILURE, "127.0.0.2", "UDP", "alice"), (AUTH_DOWNGRADE, "127.0.0.2", "UDP", "alice"), (AUTH_FAILURE, "127.0.0.2", "UDP", "alice")]
    assert "SHA-256" in recorder.events[1].reason and "unlock-md5" in recorder.events[1].reason
    assert invite(proxy, "SHA-256") == (0, "")  # SHA-2 keeps working


@pytest.mark.parametrize("algorithm", ["SHA-256", "SHA-512-256"])
def test_each_sha2_algorithm_sets_the_lock(tmp_path: Path, algorithm: str) -> None:
    proxy = proxy_service(tmp_path, **MIXED)
    try:
        proxy.send(request("INVITE"))
        challenge = next(c for c in challenges(proxy.phone.sent[-1][0], "Proxy-Authenticate") if c["algorithm"] == algorithm)
        auth = authorization(challenge, algorithm, "alice", PASSWORD, "INVITE", "sip:bob@example.com")
        proxy.send(request("INVITE", extra=f"Proxy-Authorization: {auth}\r\n"))
        assert proxy.last().status == 404  # authenticated; bob is not registered
        lock = DowngradeLockStore(proxy.service.config.database).get("alice", "example.com")
        assert lock is not None and lock.algorithm == algorithm
        assert invite(proxy, "MD5")[0] == 407
    finally:
        proxy.stop()


def test_unlock_md5_from_the_cli_lets_md5_in_again(proxy: Proxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert invite(proxy, "SHA-256") == (0, "")
    assert invite(proxy, "MD5")[0] == 407
    assert cli.main(["user", "show", "alice", "--config", str(config_file(tmp_path))]) == 0
    assert "md5: locked since" in capsys.readouterr().out
    assert cli.main(["user", "unlock-md5", "alice", "--config", str(config_file(tmp_path))]) == 0
    assert capsys.readouterr().out.strip() == "MD5 unlocked for alice@example.com"
    assert invite(proxy, "MD5") == (0, "")
    # and the next SHA-2 login locks it again
    proxy.clock.advance(proxy.service.downgrade.remember)
    assert invite(proxy, "SHA-256") == (0, "")
    assert invite(proxy, "MD5")[0] == 407


def test_a_user_who_never_used_sha2_keeps_md5(proxy: Proxy) -> None:
    assert invite(proxy, "SHA-256") == (0, "")  # alice locks herself, nobody else
    carol = proxy.send_request("INVITE", "sip:bob@example.com", from_uri="sip:carol@example.com", credentials=None)
    assert carol is not None and carol.status == 407
    assert DowngradeLockStore(proxy.service.config.database).get("carol", "example.com") is None
    for _ in range(2):
        assert invite(proxy, "MD5")[0] == 407
    assert DowngradeLockStore(proxy.service.config.database).list() == [DowngradeLockStore(proxy.service.config.database).get("alice", "example.com")]


def test_the_lock_survives_a_restart(proxy: Proxy, tmp_path: Path) -> None:
    assert invite(proxy, "SHA-256") == (0, "")
    proxy.stop()
    dispatcher = RecordingDispatcher()
    service = build_service(tmp_path, MIXED, dispatcher=dispatcher)
    again = Proxy(service, service.reactor, dispatcher)
    try:
        again.register("bob", BOB)
        assert invite(again, "MD5")[0] == 407
        assert invite(again, "SHA-256") == (0, "")
    finally:
        again.stop()


def test_an_unreadable_lock_table_fails_md5_closed_and_says_so(proxy: Proxy, tmp_path: Path) -> None:
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        db = sqlite3.connect(tmp_path / "data" / "sipshield.db")
        db.executescript("DROP TABLE IF EXISTS sipshield_md5_locks; CREATE TABLE sipshield_md5_locks (garbage INTEGER);")
        db.close()
        # Right or wrong, every MD5 answer: a 503 for right ones only would be an oracle.
        assert invite(proxy, "MD5") == (503, "Authentication Backend Unavailable")
        assert invite(proxy, "MD5", password="WRONG") == (503, "Authentication Backend Unavailable")
        assert invite(proxy, "SHA-256") == (0, "")  # SHA-2 is not weakened by the outage
    finally:
        globalLogPublisher.removeObserver(logged.append)
    text = [e.get("why", "") for e in logged if "credential backend unavailable" in str(e.get("log_format", ""))]
    assert text and "MD5 lock store" in text[0] and "refused until it can be read" in text[0]


@pytest.mark.parametrize("password", [PASSWORD, "WRONG"], ids=["right-but-locked", "wrong"])
def test_locked_right_md5_answers_ban_the_source_as_wrong_ones_do(proxy: Proxy, password: str) -> None:
    """Bans count auth-failure events: were a locked right answer not one, a
    guesser would learn which guess was right by not being banned."""
    assert invite(proxy, "SHA-256") == (0, "")
    bans = proxy.service.bans
    for _ in range(proxy.service.config.bans.max_failures - 1):
        assert invite(proxy, "MD5", password=password)[0] == 407
    assert not bans.refuse_source("127.0.0.2")
    # The ban lands with this failure: its 407 is dropped too (only the 100 Trying went out).
    assert invite(proxy, "MD5", password=password)[0] == 100
    assert bans.refuse_source("127.0.0.2")  # the transports now drop it before parsing
