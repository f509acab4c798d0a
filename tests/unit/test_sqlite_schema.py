"""The location store and the user store create their tables in one SQLite
file (the default) without "database is locked" at start-up."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest_twisted
from sqlalchemy import create_engine, inspect
from twisted.internet import reactor

from sipshield.auth._keys import KeyFile
from sipshield.auth._users import UserStore
from sipshield.state._sql import SQLLocationStore


def _writer_holding(path: Path) -> sqlite3.Connection:
    """A second connection holding the write lock on a new file, as the other
    store does while it creates its tables."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE other_store (x)")
    other.execute("BEGIN IMMEDIATE")
    return other


def _release(other: sqlite3.Connection) -> None:
    other.execute("COMMIT")
    other.close()


def _while_another_writer_holds_the_file(path: Path, create: Callable[[], None]) -> list[BaseException]:
    """Run ``create`` in a thread while another writer holds the new file,
    release it, and return what ``create`` raised."""
    other = _writer_holding(path)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            create()
        except BaseException as e:  # reported to the test below
            raised.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    # Long enough for ``create`` to reach the lock; it must then wait, not fail.
    thread.join(0.3)
    _release(other)
    thread.join(30)
    assert not thread.is_alive()
    return raised


def test_user_store_schema_waits_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "sipshield.db"
    store = UserStore(f"sqlite:///{path}", keys=KeyFile(tmp_path / "credential.keys"))
    try:
        assert _while_another_writer_holds_the_file(path, store.create_schema) == []
    finally:
        store.close()
    assert {"sipshield_users", "sipshield_credentials"} <= set(inspect(create_engine(f"sqlite:///{path}")).get_table_names())


@pytest_twisted.inlineCallbacks
def test_location_store_start_waits_for_another_writer(tmp_path: Path):
    path = tmp_path / "sipshield.db"
    other = _writer_holding(path)
    store = SQLLocationStore(f"sqlite:///{path}", reactor)
    started = store.start()
    # Released after the store's thread has reached the lock; it must wait, not fail.
    reactor.callLater(0.3, _release, other)
    try:
        yield started.addTimeout(30, reactor)
    finally:
        yield store.stop()
    assert "sipshield_location" in inspect(create_engine(f"sqlite:///{path}")).get_table_names()
