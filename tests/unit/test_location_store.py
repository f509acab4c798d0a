"""The location stores (RFC 3261 10.2): one suite run against memory, SQLite and PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from sqlalchemy import create_engine, event
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from sipshield.interfaces import ILocationStore
from sipshield.message import URI
from sipshield.state import Binding, MemoryLocationStore, SQLLocationStore, StoreUnavailable, aor_of

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get("SIPSHIELD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

AOR = "sip:alice@example.com"


def binding(contact: str = "sip:alice@192.0.2.1:5060", expires_in: float = 600, aor: str = AOR, **kw: Any) -> Binding:
    return Binding(aor=aor, contact=contact, expires_at=reactor.seconds() + expires_in, **kw)


def _sql_store(url: str) -> Iterator[SQLLocationStore]:
    table = f"sipshield_location_t{uuid.uuid4().hex[:10]}"
    store = SQLLocationStore(url, reactor, table_name=table)
    try:
        pytest_twisted.blockon(store.start())
    except (StoreUnavailable, ImportError) as e:
        pytest_twisted.blockon(store.stop())
        message = f"PostgreSQL not usable at {url} (set SIPSHIELD_TEST_POSTGRES_URL; needs pip install 'psycopg[binary]'): {e}"
        if IN_CI:
            pytest.fail(f"{message} (required under CI=true)")
        pytest.skip(message)
    yield store
    pytest_twisted.blockon(store.stop())
    engine = create_engine(url)
    store.table.drop(engine, checkfirst=True)
    engine.dispose()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryLocationStore(reactor)
    elif request.param == "sqlite":
        yield from _sql_store(f"sqlite:///{tmp_path / 'sipshield.db'}")
    else:
        yield from _sql_store(POSTGRES_URL)


# -- the shared suite ---------------------------------------------------------------


def test_store_provides_ilocationstore(store: Any) -> None:
    assert verifyObject(ILocationStore, store)


@pytest_twisted.inlineCallbacks
def test_unknown_aor_has_no_bindings_and_store_starts_empty(store: Any):
    assert (yield store.bindings(AOR)) == []
    assert (yield store.count()) == 0


@pytest_twisted.inlineCallbacks
def test_put_then_bindings_round_trips_every_field(store: Any):
    b = binding(
        q=0.5, call_id="c1@x", cseq=7, path=("<sip:edge1.example.net;lr>", "<sip:edge2.example.net;lr>"),
        source=("TLS", "198.51.100.7", 40123), instance='"<urn:uuid:00000000-0000-0000-0000-000000000001>"',
        reg_id=1, user_agent="Phone/1.0", extra={"k": "v"},
    )
    yield store.put(b)
    got = yield store.bindings(AOR)
    assert got == [b]
    assert got[0].extra == {"k": "v"}
    assert (yield store.count()) == 1


@pytest_twisted.inlineCallbacks
def test_bindings_are_highest_q_first_and_equal_q_in_registration_order(store: Any):
    yield store.put(binding("sip:a@192.0.2.1", q=0.5))
    yield store.put(binding("sip:b@192.0.2.2", q=1.0))
    yield store.put(binding("sip:c@192.0.2.3", q=0.5))
    yield store.put(binding("sip:d@192.0.2.4", q=0.9))
    yield store.put(binding("sip:a@192.0.2.1", q=0.5, cseq=2))  # a refresh keeps its place
    got = yield store.bindings(AOR)
    assert [b.contact for b in got] == ["sip:b@192.0.2.2", "sip:d@192.0.2.4", "sip:a@192.0.2.1", "sip:c@192.0.2.3"]


@pytest_twisted.inlineCallbacks
def test_put_with_the_same_aor_and_contact_replaces_the_binding(store: Any):
    yield store.put(binding(expires_in=100, cseq=1))
    newer = binding(expires_in=900, cseq=2, call_id="other")
    yield store.put(newer)
    assert (yield store.bindings(AOR)) == [newer]
    assert (yield store.count()) == 1


@pytest_twisted.inlineCallbacks
def test_bindings_of_other_aors_are_separate(store: Any):
    yield store.put(binding())
    yield store.put(binding(aor="sip:bob@example.com"))
    assert [b.aor for b in (yield store.bindings("sip:bob@example.com"))] == ["sip:bob@example.com"]
    assert (yield store.count()) == 2


@pytest_twisted.inlineCallbacks
def test_lapsed_binding_is_hidden_before_expire_removes_it(store: Any):
    yield store.put(binding("sip:old@192.0.2.1", expires_in=-1))
    yield store.put(binding("sip:new@192.0.2.2", expires_in=600))
    assert [b.contact for b in (yield store.bindings(AOR))] == ["sip:new@192.0.2.2"]
    assert (yield store.count()) == 2


@pytest_twisted.inlineCallbacks
def test_expire_removes_bindings_due_at_or_before_now(store: Any):
    now = reactor.seconds()
    yield store.put(Binding(AOR, "sip:a@192.0.2.1", expires_at=now + 10))
    yield store.put(Binding(AOR, "sip:b@192.0.2.2", expires_at=now + 20))
    yield store.put(Binding("sip:bob@example.com", "sip:c@192.0.2.3", expires_at=now + 30))
    assert (yield store.expire(now + 5)) == 0
    assert (yield store.expire(now + 20)) == 2
    assert (yield store.count()) == 1
    assert (yield store.expire(now + 1000)) == 1
    assert (yield store.count()) == 0


@pytest_twisted.inlineCallbacks
def test_remove_reports_whether_the_binding_existed(store: Any):
    yield store.put(binding())
    assert (yield store.remove(AOR, "sip:alice@192.0.2.1:5060")) is True
    assert (yield store.remove(AOR, "sip:alice@192.0.2.1:5060")) is False
    assert (yield store.bindings(AOR)) == []


@pytest_twisted.inlineCallbacks
def test_remove_all_removes_one_aor_and_counts(store: Any):
    yield store.put(binding("sip:a@192.0.2.1"))
    yield store.put(binding("sip:b@192.0.2.2"))
    yield store.put(binding("sip:c@192.0.2.3", aor="sip:bob@example.com"))
    assert (yield store.remove_all(AOR)) == 2
    assert (yield store.remove_all(AOR)) == 0
    assert (yield store.count()) == 1


@pytest_twisted.inlineCallbacks
def test_update_removes_then_puts_in_one_step(store: Any):
    yield store.put(binding("sip:a@192.0.2.1"))
    yield store.put(binding("sip:b@192.0.2.2"))
    c = binding("sip:c@192.0.2.3")
    yield store.update(AOR, ["sip:a@192.0.2.1", "sip:nothing@192.0.2.9"], [c])
    assert [b.contact for b in (yield store.bindings(AOR))] == ["sip:b@192.0.2.2", "sip:c@192.0.2.3"]


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
