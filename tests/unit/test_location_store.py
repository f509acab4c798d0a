"""The location stores (RFC 3261 10.2): the shared suite (location_store_contract)
on the memory and SQLite stores, and what is particular to each.  The same
suite on PostgreSQL: tests/integration/test_location_store_postgresql.py."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from location_store_contract import *  # noqa: F403  (the shared suite, run on the store below)
from location_store_contract import AOR, IN_CI, binding, sql_store
from sqlalchemy import event
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from sipshield.message import URI
from sipshield.state import Binding, MemoryLocationStore, SQLLocationStore, StoreUnavailable, aor_of


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryLocationStore(reactor)
    else:
        yield from sql_store(f"sqlite:///{tmp_path / 'sipshield.db'}")


# -- aor_of (RFC 3261 10.3 step 5) -------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "aor"),
    [
        ("sip:alice@example.com", "sip:alice@example.com"),
        ("sip:alice@EXAMPLE.com;transport=tcp;user=phone?subject=x", "sip:alice@example.com"),
        ("sips:alice@example.com", "sip:alice@example.com"),
        ("sip:alice@example.com:5060", "sip:alice@example.com"),
        ("sips:alice@example.com:5061", "sip:alice@example.com"),
        ("sip:alice@example.com:5070", "sip:alice@example.com:5070"),
        ("sip:%61lice@example.com", "sip:alice@example.com"),
        ("sip:Alice@example.com", "sip:Alice@example.com"),
        ("sip:alice:secret@example.com", "sip:alice@example.com"),
        ("sip:example.com", "sip:example.com"),
        ("sip:alice@[2001:db8::1]", "sip:alice@[2001:db8::1]"),
    ],
)
def test_aor_of_is_the_canonical_form(uri: str, aor: str) -> None:
    assert aor_of(uri) == aor
    assert aor_of(URI.parse(uri)) == aor


@pytest.mark.parametrize("uri", ["tel:+15551234567", "isbn:2983792873", "mailto:a@example.com"])
def test_aor_of_refuses_non_sip_uris(uri: str) -> None:
    with pytest.raises(ValueError):
        aor_of(uri)


# -- memory store specifics -----------------------------------------------------------------


def test_memory_store_answers_with_fired_deferreds() -> None:
    store = MemoryLocationStore(Clock())
    d = store.put(Binding(AOR, "sip:a@192.0.2.1", expires_at=10))
    assert d.called
    results: list[Any] = []
    store.bindings(AOR).addCallback(results.append)
    assert [b.contact for b in results[0]] == ["sip:a@192.0.2.1"]


def test_memory_store_hides_bindings_once_the_clock_passes_their_expiry() -> None:
    clock = Clock()
    store = MemoryLocationStore(clock)
    store.put(Binding(AOR, "sip:a@192.0.2.1", expires_at=60))
    assert len(store.bindings_now(AOR)) == 1
    clock.advance(60)
    assert store.bindings_now(AOR) == []


def test_memory_store_heap_stays_bounded_under_constant_refreshes() -> None:
    clock = Clock()
    store = MemoryLocationStore(clock)
    for i in range(10_000):
        clock.advance(1)
        store.put(Binding(AOR, "sip:a@192.0.2.1", expires_at=clock.seconds() + 3600, cseq=i))
    assert len(store._heap) <= 2 * 1 + 64 + 1
    store.remove(AOR, "sip:a@192.0.2.1")
    store.expire(clock.seconds() + 3600)
    assert store._aors == {} and store._heap == [] and store._count == 0


# -- SQL store specifics ------------------------------------------------------------------------


def test_sql_store_fails_with_store_unavailable_before_start(tmp_path: Path) -> None:
    store = SQLLocationStore(f"sqlite:///{tmp_path / 'x.db'}", reactor)
    failures: list[Any] = []
    store.bindings(AOR).addErrback(failures.append)
    assert failures and failures[0].check(StoreUnavailable)


@pytest_twisted.inlineCallbacks
def test_sql_store_start_on_an_unwritable_database_fails_with_store_unavailable(tmp_path: Path):
    store = SQLLocationStore(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}", reactor)
    with pytest.raises(StoreUnavailable):
        yield store.start()
    yield store.stop()


@pytest_twisted.inlineCallbacks
def test_sql_store_on_an_unreachable_postgres_fails_with_store_unavailable():
    if not IN_CI:
        pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' for the PostgreSQL store")
    store = SQLLocationStore("postgresql+psycopg://postgres@127.0.0.1:1/test", reactor, threadpool_size=1)
    with pytest.raises(StoreUnavailable):
        yield store.start()
    yield store.stop()


@pytest_twisted.inlineCallbacks
def test_sql_store_fails_with_store_unavailable_after_stop(tmp_path: Path):
    store = SQLLocationStore(f"sqlite:///{tmp_path / 'x.db'}", reactor)
    yield store.start()
    yield store.stop()
    with pytest.raises(StoreUnavailable):
        yield store.count()


@pytest_twisted.inlineCallbacks
def test_sqlite_store_uses_wal_and_runs_queries_off_the_reactor_thread(tmp_path: Path):
    path = tmp_path / "sipshield.db"
    store = SQLLocationStore(f"sqlite:///{path}", reactor)
    yield store.start()
    threads: list[threading.Thread] = []
    assert store._engine is not None
    event.listen(store._engine, "before_cursor_execute", lambda *args: threads.append(threading.current_thread()))
    try:
        yield store.put(binding())
        yield store.bindings(AOR)
    finally:
        yield store.stop()
    assert threads and all(t is not threading.main_thread() for t in threads)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest_twisted.inlineCallbacks
def test_sqlite_in_memory_url_shares_one_database_across_calls():
    store = SQLLocationStore("sqlite://", reactor)
    yield store.start()
    try:
        yield store.put(binding())
        assert (yield store.count()) == 1
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_sql_store_data_survives_a_restart(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'sipshield.db'}"
    store = SQLLocationStore(url, reactor)
    yield store.start()
    yield store.put(binding())
    yield store.stop()
    again = SQLLocationStore(url, reactor)
    yield again.start()
    try:
        assert [b.contact for b in (yield again.bindings(AOR))] == ["sip:alice@192.0.2.1:5060"]
    finally:
        yield again.stop()


@pytest_twisted.inlineCallbacks
def test_a_cancelled_call_still_queued_is_never_run(tmp_path: Path):
    store = SQLLocationStore(f"sqlite:///{tmp_path / 'x.db'}", reactor, threadpool_size=1)
    yield store.start()
    try:
        assert store._pool is not None
        gate = threading.Event()
        store._pool.callInThread(gate.wait, 10)  # occupy the only thread
        d = store.put(binding())
        d.cancel()
        with pytest.raises(defer.CancelledError):
            yield d
        gate.set()
        assert (yield store.count()) == 0
    finally:
        yield store.stop()


def test_stop_before_start_is_harmless() -> None:
    d = SQLLocationStore("sqlite://", reactor).stop()
    assert d.called


@pytest_twisted.inlineCallbacks
def test_start_twice_is_harmless(tmp_path: Path):
    store = SQLLocationStore(f"sqlite:///{tmp_path / 'x.db'}", reactor)
    yield store.start()
    yield store.start()
    yield store.stop()
    yield defer.succeed(None)
