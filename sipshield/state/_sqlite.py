"""The connection settings every SQLite engine of sipshield uses."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

__all__ = ["sqlite_pragmas"]

#: How long a connection waits for another's lock, in seconds.
BUSY_TIMEOUT = 5.0


def sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    """A SQLAlchemy ``connect`` listener for SQLite engines.

    The location store and the user store share one file (and the CLI writes
    to it while the server runs), so their connections wait for each other's
    locks (busy_timeout).  WAL lets readers go on while one writer writes;
    foreign_keys makes the user store's ON DELETE CASCADE real.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (once: the mode is kept in the file).

    Switching needs an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy handler, when another connection holds
    a lock meanwhile (two stores creating their tables in a new file at
    start-up did exactly that), so the switch is retried up to the timeout.
    This runs in a store's thread pool or the CLI, never on the reactor.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
