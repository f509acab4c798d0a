"""Registrations are capped per authenticated identity across all its AORs
([registrar] max_bindings_per_identity), not only per AOR: over the memory
store and the SQL store (SQLite, as deployed by default)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from sqlalchemy import create_engine, text
from test_registrar import register
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from sipshield.config import parse_config
from sipshield.interfaces import ILocationStore
from sipshield.routing import Decision
from sipshield.routing._registrar import Registrar
from sipshield.state import Binding, MemoryLocationStore, SQLLocationStore

AORS = ("sip:alice@example.com", "sip:sales@example.com", "sip:support@example.com")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        yield MemoryLocationStore(reactor)
        return
    sql = SQLLocationStore(f"sqlite:///{tmp_path / 'sipshield.db'}", reactor)
    pytest_twisted.blockon(sql.start())
    yield sql
    pytest_twisted.blockon(sql.stop())


def as_identity(aor: str, contact: str, identity: str, cseq: int = 1, expires: int | None = None) -> Any:
    context = register([f"<{contact}>"], to=aor, call_id=re.sub(r"[^A-Za-z0-9]", "", identity + aor + contact) + "@ua", cseq=cseq, expires=expires)
    context.identity = identity
    return context


@pytest_twisted.inlineCallbacks
def test_an_identity_over_its_cap_across_aors_gets_403_and_nothing_is_bound(store: Any):
    registrar = Registrar(store, ["example.com"], reactor, max_bindings=16, max_bindings_per_identity=3)
    for n, aor in enumerate(AORS):
        decision: Decision = yield registrar.process(as_identity(aor, f"sip:alice@192.0.2.{n}", "alice@example.com"))
        assert decision.status == 200
    # A fourth binding, in an AOR with room (per-AOR cap 16): refused for the identity.
    decision = yield registrar.process(as_identity(AORS[0], "sip:alice@192.0.2.99", "alice@example.com"))
    assert (decision.status, decision.reason) == (403, "Too Many Registrations")
    assert [b.contact for b in (yield store.bindings(AORS[0]))] == ["sip:alice@192.0.2.0"]
    assert (yield store.count_for_identity("alice@example.com")) == 3
    # Another identity is not affected; refreshing one's own bindings never is refused.
    decision = yield registrar.process(as_identity(AORS[0], "sip:bob@192.0.2.50", "bob@example.com"))
    assert decision.status == 200
    decision = yield registrar.process(as_identity(AORS[1], "sip:alice@192.0.2.1", "alice@example.com", cseq=2))
    assert decision.status == 200


@pytest_twisted.inlineCallbacks
def test_removing_a_binding_makes_room_and_counts_drop_to_zero(store: Any):
    registrar = Registrar(store, ["example.com"], reactor, max_bindings_per_identity=2)
    for n, aor in enumerate(AORS[:2]):
        yield registrar.process(as_identity(aor, f"sip:alice@192.0.2.{n}", "alice@example.com"))
    decision = yield registrar.process(as_identity(AORS[0], "sip:alice@192.0.2.0", "alice@example.com", cseq=2, expires=0))
    assert decision.status == 200
    decision = yield registrar.process(as_identity(AORS[2], "sip:alice@192.0.2.2", "alice@example.com"))
    assert decision.status == 200
    yield store.remove_all(AORS[1])
    yield store.remove_all(AORS[2])
    assert (yield store.count_for_identity("alice@example.com")) == 0
    if isinstance(store, MemoryLocationStore):
        assert store._identities == {}  # no entry left behind per identity


@pytest_twisted.inlineCallbacks
def test_expired_bindings_do_not_count(store: Any):
    now = reactor.seconds()
    yield store.put(Binding(aor=AORS[0], contact="sip:a@192.0.2.1", expires_at=now + 600, identity="alice@example.com"))
    yield store.put(Binding(aor=AORS[1], contact="sip:a@192.0.2.2", expires_at=now - 1, identity="alice@example.com"))
    yield store.expire(now)
    assert (yield store.count_for_identity("alice@example.com")) == 1
    assert verifyObject(ILocationStore, store)


@pytest_twisted.inlineCallbacks
def test_a_location_table_from_before_the_identity_column_gets_it(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE sipshield_location (id INTEGER PRIMARY KEY AUTOINCREMENT, aor TEXT NOT NULL, contact TEXT NOT NULL, "
            "expires_at FLOAT NOT NULL, q FLOAT NOT NULL, call_id TEXT NOT NULL, cseq INTEGER NOT NULL, path TEXT NOT NULL, "
            "source_transport TEXT, source_host TEXT, source_port INTEGER, instance TEXT, reg_id INTEGER, user_agent TEXT, "
            "extra TEXT NOT NULL, UNIQUE (aor, contact))"
        ))
        conn.execute(text("INSERT INTO sipshield_location (aor, contact, expires_at, q, call_id, cseq, path, extra) "
                          f"VALUES ('{AORS[0]}', 'sip:old@192.0.2.1', {reactor.seconds() + 600}, 1.0, 'c', 1, '[]', '{{}}')"))
    engine.dispose()
    store = SQLLocationStore(url, reactor)
    yield store.start()
    try:
        [old] = yield store.bindings(AORS[0])
        assert old.identity is None
        decision = yield Registrar(store, ["example.com"], reactor).process(as_identity(AORS[0], "sip:new@192.0.2.2", "alice@example.com"))
        assert decision.status == 200
        assert (yield store.count_for_identity("alice@example.com")) == 1
    finally:
        yield store.stop()


def test_the_cap_is_a_registrar_config_key() -> None:
    assert parse_config({}).registrar.max_bindings_per_identity == 32
    assert parse_config({"registrar": {"max_bindings_per_identity": 5}}).registrar.max_bindings_per_identity == 5
