"""The per-identity registration cap holds through the real service (the
auth stage sets the identity the registrar counts), and holds when
REGISTERs race: with a location store that answers later (SQL), two
REGISTERs in progress at once must not both pass the cap because each read
the count before the other wrote."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from inline_pool import ImmediateReactor, QueuedPool
from pipeline_support import PASSWORD, PHONE, Proxy, RecordingFlow, proxy_service
from test_registrar import register
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from sipshield.message import parse_message
from sipshield.routing._registrar import Registrar
from sipshield.state import MemoryLocationStore, SQLLocationStore

AOR = "sip:alice@example.com"


def alice(tmp_path: Path, **registrar: Any) -> Proxy:
    return proxy_service(tmp_path, registrar={"store": "sql", **registrar})


def queue_store_calls(store: SQLLocationStore) -> QueuedPool:
    """From now on the store's calls wait until the test runs them."""
    pool = QueuedPool()
    old, store._pool = store._pool, pool
    assert old is not None
    old.stop()
    return pool


def registration(proxy: Proxy, contact: str, password: str = PASSWORD) -> tuple[bytes, RecordingFlow]:
    """A REGISTER from alice's phone binding *contact*, with a digest answer (her password by default)."""
    auth = proxy.digest("REGISTER", "sip:example.com", "alice", password, source=PHONE[0])
    call_id = re.sub(r"\W", "", contact)
    data = (
        f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK{call_id}\r\n"
        f"Max-Forwards: 70\r\nFrom: <{AOR}>;tag=r1\r\nTo: <{AOR}>\r\nCall-ID: {call_id}@phone\r\nCSeq: 1 REGISTER\r\n"
        f"Contact: <{contact}>\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    return data, RecordingFlow(PHONE)


def bindings(proxy: Proxy, pool: QueuedPool) -> list[str]:
    found: list[Any] = []
    proxy.service.location.bindings(AOR).addBoth(found.append)
    pool.run_queued()
    return [b.contact for b in found[0]]


def send(proxy: Proxy, data: bytes, flow: RecordingFlow) -> None:
    proxy.core.message_received(parse_message(data), flow)


def test_an_authenticated_user_over_the_identity_cap_gets_403(tmp_path: Path) -> None:
    proxy = alice(tmp_path, max_bindings=16, max_bindings_per_identity=2)
    try:
        pool = queue_store_calls(proxy.service.location)
        statuses = []
        for n in range(3):
            data, flow = registration(proxy, f"sip:alice@192.0.2.{n}:5060")
            send(proxy, data, flow)
            pool.run_queued()
            statuses.append((flow.messages()[-1].status, flow.messages()[-1].reason))
        assert statuses == [(200, "OK"), (200, "OK"), (403, "Too Many Registrations")]
        assert sorted(bindings(proxy, pool)) == ["sip:alice@192.0.2.0:5060", "sip:alice@192.0.2.1:5060"]
    finally:
        proxy.stop()


def test_registers_in_progress_at_once_do_not_both_pass_the_cap(tmp_path: Path) -> None:
    proxy = alice(tmp_path, max_bindings=16, max_bindings_per_identity=1)
    try:
        pool = queue_store_calls(proxy.service.location)
        first, second = (registration(proxy, f"sip:alice@192.0.2.{n}:5060") for n in (1, 2))
        send(proxy, *first)
        send(proxy, *second)
        assert pool.run_queued() > 0
        answers = sorted((flow.messages()[-1].status, flow.messages()[-1].reason) for _, flow in (first, second))
        assert answers == [(200, "OK"), (403, "Too Many Registrations")]
        assert len(bindings(proxy, pool)) == 1
        registrar = next(s for s in proxy.service.pipeline.stages if isinstance(s, Registrar))
        assert len(registrar._serial) == 0  # no lock left behind
    finally:
        proxy.stop()


def test_one_identity_racing_into_two_aors_stays_under_its_cap(tmp_path: Path) -> None:
    """The identity's own lock: two AORs (so the AOR locks do not serialise them)."""
    reactor = ImmediateReactor()
    reactor.advance(1_000_000)
    store = SQLLocationStore(f"sqlite:///{tmp_path / 'loc.db'}", reactor)
    started: list[Any] = []
    store.start().addBoth(started.append)
    pool = queue_store_calls(store)
    pool.run_queued()
    registrar = Registrar(store, ["example.com"], reactor, max_bindings_per_identity=1)
    results: list[Any] = []
    for n, aor in enumerate(("sip:alice@example.com", "sip:sales@example.com")):
        context = register([f"<sip:alice@192.0.2.{n}>"], to=aor, call_id=f"race{n}@ua")
        context.identity = "alice@example.com"
        registrar.process(context).addBoth(results.append)
    pool.run_queued()
    assert sorted((d.status, d.reason) for d in results) == [(200, "OK"), (403, "Too Many Registrations")]
    counted: list[int] = []
    store.count_for_identity("alice@example.com").addBoth(counted.append)
    pool.run_queued()
    assert counted == [1]
    assert len(registrar._serial) == 0


class SlowWriteStore(MemoryLocationStore):
    """A store whose writes, once started, end only when the test says so,
    and go on when the registrar's timeout cancels them: a SQL write that is
    still running in its thread after its call timed out.  (A real slow
    database cannot be made to stop at a given point; this can.)"""

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.writes: list[tuple[str, tuple[str, ...], tuple[Any, ...]]] = []
        self.waiting: list[Deferred[None]] = []

    def update(self, aor: str, remove: Any = (), put: Any = ()) -> Deferred[None]:
        self.writes.append((aor, tuple(remove), tuple(put)))
        return Deferred()  # cancelled by the timeout; the write itself goes on

    def finish_writes(self) -> None:
        writes, self.writes = self.writes, []
        for aor, remove, put in writes:
            super().update(aor, remove, put)
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def settled(self) -> Deferred[None]:
        if not self.writes:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        return d


def test_a_write_that_timed_out_but_still_runs_keeps_the_next_register_of_its_identity_waiting() -> None:
    """The first REGISTER's write times out (503) while it is still running;
    the next REGISTER of the same identity must not read the count before
    that write has ended, or both pass max_bindings_per_identity = 1."""
    clock = Clock()
    store = SlowWriteStore(clock)
    registrar = Registrar(store, ["example.com"], clock, max_bindings_per_identity=1, store_timeout=5)
    results: dict[str, list[Any]] = {"first": [], "second": [], "third": []}

    def start(name: str, aor: str, n: int) -> None:
        context = register([f"<sip:alice@192.0.2.{n}>"], to=aor, call_id=f"{name}{n}@ua")
        context.identity = "alice@example.com"
        registrar.process(context).addBoth(results[name].append)

    start("first", "sip:alice@example.com", 1)
    clock.advance(5)
    assert [(d.status, d.reason) for d in results["first"]] == [(503, "Location Service Unavailable")]
    start("second", "sip:sales@example.com", 2)
    assert results["second"] == []  # waits for the identity's lock: the first write has not ended
    store.finish_writes()
    assert [(d.status, d.reason) for d in results["second"]] == [(403, "Too Many Registrations")]
    counted: list[int] = []
    store.count_for_identity("alice@example.com").addBoth(counted.append)
    assert counted == [1]
    assert len(registrar._serial) == 0

    # a write that never ends: the REGISTERs behind it get 503 once their wait for the lock times out
    start("third", "sip:alice@example.com", 1)  # a refresh of the one binding: it writes (and hangs)
    clock.advance(5)
    start("second", "sip:alice@example.com", 1)
    clock.advance(5)
    assert [(d.status, d.reason) for d in results["third"]] == [(503, "Location Service Unavailable")]
    assert [(d.status, d.reason) for d in results["second"][1:]] == [(503, "Location Service Unavailable")]


def test_the_sql_store_is_settled_only_once_its_jobs_have_ended_cancelled_ones_included(tmp_path: Path) -> None:
    reactor = ImmediateReactor()
    store = SQLLocationStore(f"sqlite:///{tmp_path / 'loc.db'}", reactor)
    store.start()
    pool = queue_store_calls(store)
    pool.run_queued()
    first = store.count()
    first.cancel()  # as the registrar's timeout does: the job may still run
    store.count()
    settled: list[Any] = []
    store.settled().addBoth(settled.append)
    assert settled == []
    pool.run_queued()
    assert settled == [None]
    again: list[Any] = []
    store.settled().addBoth(again.append)
    assert again == [None]
