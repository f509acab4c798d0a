"""Challenges nobody answers (issue 8) through the real service on Clock time:
a client that gives up after the 401/407 (no algorithm it supports, another
realm) gets one rate-limited line per source and user naming what was
offered; an authenticated answer within the nonce lifetime means none; the
table is bounded against forged sources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_support import PASSWORD, Proxy, proxy_service
from twisted.logger import formatEvent, globalLogPublisher

KIND = "unanswered-challenge"
LIFETIME = 300  # [auth] nonce_lifetime's default


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    p = proxy_service(tmp_path)
    yield p
    p.stop()


@pytest.fixture
def lines() -> Iterator[list[dict[str, Any]]]:
    found: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_kind") == KIND:
            found.append(event)

    globalLogPublisher.addObserver(observe)
    yield found
    globalLogPublisher.removeObserver(observe)


def tracker(proxy: Proxy) -> Any:
    return next(stage for stage in proxy.service.pipeline.stages if stage.name == "auth").unanswered


def register(proxy: Proxy, source: tuple[str, int], user: str = "alice", credentials: tuple[str, str] | None = None) -> int:
    answer = proxy.send_request("REGISTER", "sip:example.com", from_uri=f"sip:{user}@example.com", to=f"sip:{user}@example.com",
                                source=source, credentials=credentials, contact=f"sip:{user}@{source[0]}:{source[1]}")
    assert answer is not None
    return answer.status


def test_a_client_that_never_answers_gets_one_line_naming_the_algorithms_offered(proxy: Proxy, lines: list[dict[str, Any]]) -> None:
    source = ("127.0.0.7", 5062)
    for _ in range(5):  # a phone retrying every 30 s, never answering: it speaks MD5 only
        assert register(proxy, source) == 401
        proxy.clock.advance(30)
    assert lines == []
    proxy.clock.advance(LIFETIME - 5 * 30)
    [line] = lines
    assert (line["host"], line["user"], line["transport"], line["realm"]) == ("127.0.0.7", "alice", "UDP", "example.com")
    assert line["algorithms"] == "SHA-256, SHA-512-256" and line["challenges"] == 5 and line["refused"] == 0
    text = formatEvent(line)
    assert "no authenticated answer from 127.0.0.7" in text and "offering SHA-256, SHA-512-256" in text
    assert len(tracker(proxy)) == 0 and proxy.clock.getDelayedCalls() == []
    proxy.clock.advance(10 * LIFETIME)
    assert len(lines) == 1


def test_an_authenticated_answer_within_the_lifetime_means_no_line(proxy: Proxy, lines: list[dict[str, Any]]) -> None:
    source = ("127.0.0.8", 5060)
    assert register(proxy, source) == 401
    proxy.clock.advance(LIFETIME - 1)
    assert register(proxy, source, credentials=("alice", PASSWORD)) == 200
    proxy.clock.advance(2 * LIFETIME)
    assert lines == [] and len(tracker(proxy)) == 0


def test_wrong_passwords_are_not_an_answer_and_are_counted(proxy: Proxy, lines: list[dict[str, Any]]) -> None:
    source = ("127.0.0.9", 5060)
    assert register(proxy, source) == 401
    assert register(proxy, source, credentials=("alice", "WRONG")) == 401
    proxy.clock.advance(LIFETIME)
    [line] = lines
    assert line["refused"] == 1 and line["challenges"] == 2


def test_an_answer_for_another_realm_is_no_answer(proxy: Proxy, lines: list[dict[str, Any]]) -> None:
    """A phone set up for realm "pbx.local" answers with it: its credentials
    are not for us, so it is challenged again, and the line names our realm."""
    source = ("127.0.0.10", 5060)
    digest = 'Digest username="alice", realm="pbx.local", nonce="x", uri="sip:example.com", response="00", algorithm=MD5'
    raw = (f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bKrealm\r\nMax-Forwards: 70\r\n"
           "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: realm@test\r\nCSeq: 1 REGISTER\r\n"
           f"Authorization: {digest}\r\nContent-Length: 0\r\n\r\n").encode()
    from pipeline_support import RecordingFlow

    flow = RecordingFlow(source)
    proxy.send(raw, flow)
    assert flow.statuses() == [401]
    proxy.clock.advance(LIFETIME)
    [line] = lines
    assert line["realm"] == "example.com" and line["user"] == "alice"


def test_the_user_is_the_unescaped_from_user_and_is_logged_escaped(proxy: Proxy, lines: list[dict[str, Any]]) -> None:
    proxy.send_request("INVITE", "sip:bob@example.com", from_uri="sip:%61lice@example.com", source=("127.0.0.11", 5060))
    proxy.send_request("INVITE", "sip:bob@example.com", from_uri="sip:alice@example.com", source=("127.0.0.11", 5060))
    proxy.send_request("INVITE", "sip:bob@example.com", from_uri="sip:ev%0d%0aFAKE%20LINE@example.com", source=("127.0.0.12", 5060))
    proxy.clock.advance(LIFETIME)
    assert sorted((line["host"], line["user"], line["challenges"]) for line in lines) == [
        ("127.0.0.11", "alice", 2), ("127.0.0.12", "ev\\r\\nFAKE LINE", 1)]
    assert all("\r" not in formatEvent(line) and "\n" not in formatEvent(line) for line in lines)


def test_forged_sources_cannot_grow_the_table_and_the_dropped_are_counted(proxy: Proxy, lines: list[dict[str, Any]]) -> None:
    table = tracker(proxy)
    table.max_entries = 50
    for i in range(200):
        proxy.send_request("INVITE", "sip:bob@example.com", from_uri=f"sip:u{i}@example.com", source=(f"127.0.{i // 250}.{i % 250 + 2}", 5060))
        assert len(table) <= 50
    assert len(table) == 50 and table.dropped == 150
    assert len(proxy.clock.getDelayedCalls()) == 1  # one timer for the whole table
    proxy.clock.advance(LIFETIME)
    assert len(table) == 0 and proxy.clock.getDelayedCalls() == []
    # The oldest were evicted: the 50 left are the last ones; the rate limiter lets 20 lines through.
    assert {line["user"] for line in lines} <= {f"u{i}" for i in range(150, 200)}
    assert len(lines) == 20 and lines[0]["dropped"] == 150 and "dropped unreported" in formatEvent(lines[0])
    assert all(line["dropped"] == 0 for line in lines[1:])
