"""What every location store keeps (RFC 3261 10.2): one suite of tests on a
``store`` fixture, which the module that imports them provides.

tests/unit/test_location_store.py runs them on the memory and SQLite stores,
tests/integration/test_location_store_postgresql.py on PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from sqlalchemy import create_engine
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from sipshield.interfaces import ILocationStore
from sipshield.state import Binding, SQLLocationStore, StoreUnavailable

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get("SIPSHIELD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

AOR = "sip:alice@example.com"


def binding(contact: str = "sip:alice@192.0.2.1:5060", expires_in: float = 600, aor: str = AOR, **kw: Any) -> Binding:
    return Binding(aor=aor, contact=contact, expires_at=reactor.seconds() + expires_in, **kw)


def sql_store(url: str) -> Iterator[SQLLocationStore]:
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


@pytest_twisted.inlineCallbacks
def test_listing_gives_unexpired_bindings_of_every_aor_by_aor_then_q_up_to_a_limit(store: Any):
    yield store.put(binding("sip:b@192.0.2.2", aor="sip:bob@example.com"))
    yield store.put(binding("sip:a1@192.0.2.1", q=0.5))
    yield store.put(binding("sip:a2@192.0.2.1", q=0.9))
    yield store.put(binding("sip:gone@192.0.2.9", expires_in=-1, aor="sip:carol@example.com"))
    listed = yield store.listing(10)
    assert [(b.aor, b.contact) for b in listed] == [
        (AOR, "sip:a2@192.0.2.1"), (AOR, "sip:a1@192.0.2.1"), ("sip:bob@example.com", "sip:b@192.0.2.2")]
    assert [b.contact for b in (yield store.listing(2))] == ["sip:a2@192.0.2.1", "sip:a1@192.0.2.1"]
