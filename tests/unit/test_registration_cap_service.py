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

from sipshield.message import parse_message
from sipshield.routing._registrar import Registrar
from sipshield.state import SQLLocationStore

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
