"""The MD5 downgrade lock.

Once a user has logged in with a SHA-2 digest algorithm (SHA-256,
SHA-512-256 or their -sess variants, RFC 7616 3.2, RFC 8760), an MD5 answer
for that user is refused: the client can do better, so an MD5 answer is
either an old phone the operator has not told us about or someone who
stripped the SHA-2 challenges on the way (RFC 8760 3: "a downgrade
attack").  The refusal is the answer to a wrong password, so it tells an
attacker nothing, and it is reported as an ``auth-downgrade`` security event.

The marks are kept in a table of their own, ``sipshield_md5_locks``, in the
database the SQL user store uses (``Config.database``: by default the SQLite
file in data_dir, or ``[database] url``).  Keyed by (digest username, realm)
and independent of the user tables, so it works for every backend (SQL, LDAP,
htdigest files, read-only ones); in the shared database, so a cluster of
proxies on one PostgreSQL shares the marks (a file per proxy would let an
attacker pick the node that never saw the SHA-2 login).
``sipshield user unlock-md5 NAME`` deletes a mark.

:class:`DowngradeLockStore` is blocking (the CLI calls it directly);
:class:`DowngradeLock` runs it in the auth thread pool, never on the reactor
thread, and fails closed: an MD5 answer while the marks cannot be read gets
503, as when a credential backend is down.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, MetaData, Table, Text, UniqueConstraint, bindparam, create_engine, delete, event, insert, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from sipshield._ratelog import ThrottledLog
from sipshield.auth._checkers import BackendUnavailable
from sipshield.auth._users import one_line
from sipshield.state._prepared import Prepared
from sipshield.state._sqlite import sqlite_pragmas

__all__ = ["DowngradeLock", "DowngradeLockStore", "DowngradeRefused", "LockStoreError", "MD5Lock", "is_md5", "is_sha2"]

_SHA2 = frozenset(("SHA-256", "SHA-256-sess", "SHA-512-256", "SHA-512-256-sess"))
_MD5 = frozenset(("MD5", "MD5-sess"))


def is_sha2(algorithm: str) -> bool:
    """SHA-256, SHA-512-256 or a -sess variant (RFC 8760)."""
    return algorithm in _SHA2


def is_md5(algorithm: str) -> bool:
    """MD5 or MD5-sess (RFC 7616 3.2)."""
    return algorithm in _MD5


class LockStoreError(Exception):
    """The lock table cannot be read or written; one line naming the database (password masked)."""


class DowngradeRefused(UnauthorizedLogin):
    """A right MD5 answer for a user who has logged in with SHA-2: refused
    exactly as a wrong password is (an UnauthorizedLogin)."""

    def __init__(self, lock: MD5Lock) -> None:
        super().__init__(f"MD5 answer after a {lock.algorithm} login")
        self.lock = lock


@dataclass(frozen=True, slots=True)
class MD5Lock:
    """One user for whom MD5 is refused, since its first SHA-2 login."""

    username: str
    """The digest username, as the client sent it (the HA1 is over those characters)."""
    realm: str
    algorithm: str
    """The SHA-2 algorithm of the login that set the lock."""
    since: float
    """When (seconds since the epoch, on the server's clock)."""


class DowngradeLockStore:
    """The lock marks in one SQL table (``table_name``) of the database at ``url``.

    Blocking: the CLI calls it directly, the server through
    :class:`DowngradeLock` in a thread pool.  Every database failure raises
    :class:`LockStoreError`.  The table is created on first use if missing.
    """

    def __init__(self, url: str, *, table_name: str = "sipshield_md5_locks") -> None:
        try:
            self.url = make_url(url)
        except ArgumentError as e:
            raise LockStoreError(f"not a database URL: {e}") from None
        self._where = self.url.render_as_string(hide_password=True)
        self.table = Table(
            table_name, MetaData(),
            Column("username", Text, nullable=False),
            Column("realm", Text, nullable=False),
            Column("algorithm", Text, nullable=False),
            Column("since", Float, nullable=False),
            UniqueConstraint("username", "realm", name=f"{table_name}_username_realm"),
        )
        sqlite = self.url.get_backend_name() == "sqlite"
        # A SQLite connection is a file handle, not a link that drops: no ping per checkout.
        kwargs: dict[str, Any] = {"pool_pre_ping": not sqlite, "hide_parameters": True}
        if sqlite and self.url.database in (None, "", ":memory:"):
            from sqlalchemy.pool import StaticPool

            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        elif self.url.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 5}
        with self._errors():
            engine = create_engine(self.url, **kwargs)
        if sqlite:
            event.listen(engine, "connect", sqlite_pragmas)
        self._engine: Engine | None = engine
        table = self.table
        self._get = Prepared(select(table).where(table.c.username == bindparam("username"), table.c.realm == bindparam("realm")), engine.dialect)
        self._schema = threading.Lock()
        self._created = False

    def create_schema(self) -> None:
        """Create the table if it is missing (an existing one is kept)."""
        if self._created:
            return
        with self._schema:
            if not self._created:
                with self._errors():
                    self.table.metadata.create_all(self._live())
                self._created = True

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def mark(self, username: str, realm: str, algorithm: str, when: float) -> bool:
        """Lock MD5 for the user (a SHA-2 login at *when*); False if it already was."""
        self.create_schema()
        try:
            with self._errors(), self._live().begin() as conn:
                if self._row(conn, username, realm) is not None:
                    return False
                conn.execute(insert(self.table).values(username=username, realm=realm, algorithm=algorithm, since=when))
                return True
        except LockStoreError as e:
            if isinstance(e.__cause__, IntegrityError):
                return False  # another proxy or thread set it between our read and insert
            raise

    def get(self, username: str, realm: str) -> MD5Lock | None:
        """The user's lock, or None when MD5 is not locked for it."""
        self.create_schema()
        with self._errors(), self._live().connect() as conn:
            row = self._get.execute(conn, {"username": username, "realm": realm}).first()
        return None if row is None else MD5Lock(row.username, row.realm, row.algorithm, row.since)

    def unlock(self, username: str, realm: str) -> bool:
        """Forget the user's lock (MD5 accepted again); False if there was none."""
        self.create_schema()
        table = self.table
        with self._errors(), self._live().begin() as conn:
            result = conn.execute(delete(table).where(table.c.username == username, table.c.realm == realm))
            return bool(result.rowcount)

    def list(self, realm: str | None = None) -> builtins.list[MD5Lock]:
        """Every lock (of *realm* if given), by realm then username."""
        self.create_schema()
        table = self.table
        query = select(table).order_by(table.c.realm, table.c.username)
        if realm is not None:
            query = query.where(table.c.realm == realm)
        with self._errors(), self._live().connect() as conn:
            return [MD5Lock(r.username, r.realm, r.algorithm, r.since) for r in conn.execute(query)]

    def _row(self, conn: Any, username: str, realm: str) -> MD5Lock | None:
        table = self.table
        row = conn.execute(select(table).where(table.c.username == username, table.c.realm == realm)).first()
        return None if row is None else MD5Lock(row.username, row.realm, row.algorithm, row.since)

    def _live(self) -> Engine:
        if self._engine is None:
            raise LockStoreError("the MD5 lock store is closed")
        return self._engine

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (SQLAlchemyError, ImportError) as e:
            raise LockStoreError(f"MD5 lock store {self._where}: {one_line(e)}") from e


class DowngradeLock:
    """The lock as the auth stage uses it, on the reactor thread.

    :meth:`guard` wraps a Portal login: a SHA-2 login that succeeds marks
    the user (in the thread pool; the login does not wait for the write); an
    MD5 answer has its lock read in the thread pool beside the login, for
    every MD5 answer (right, wrong or unknown user: the same work, so the
    time taken tells nothing), and a right one for a locked user fails with
    :class:`DowngradeRefused`.

    A SHA-2 login is written once per user per ``remember`` seconds (a
    table of at most ``max_remembered`` users, oldest forgotten first), not
    at every REGISTER; the reads always go to the store, so an operator's
    ``unlock-md5`` takes effect at the next MD5 answer.  (After an unlock, a
    SHA-2 login within ``remember`` seconds of the last write may not lock
    the user again until that time has passed.)
    """

    log = Logger(namespace="sipshield.auth")

    def __init__(self, store: DowngradeLockStore, reactor: Any, threadpool: ThreadPool, *,
                 remember: float = 600.0, max_remembered: int = 10000) -> None:
        self.store = store
        self.reactor = reactor
        self.threadpool = threadpool
        self.remember = remember
        self.max_remembered = max_remembered
        self._written: dict[tuple[str, str], float] = {}
        self._lines = ThrottledLog(self.log, reactor)

    def guard(self, login: defer.Deferred[Any], username: str, realm: str, algorithm: str) -> defer.Deferred[Any]:
        """*login* (a Portal login for *username* in *realm* with *algorithm*)
        with the lock applied; fires with the login's result or fails with
        its failure, :class:`DowngradeRefused` or :class:`BackendUnavailable`."""
        if is_sha2(algorithm):
            return login.addCallback(self._logged_in_with_sha2, username, realm, algorithm)
        if not is_md5(algorithm):
            return login
        locked = deferToThreadPool(self.reactor, self.threadpool, self.store.get, username, realm)
        both = defer.DeferredList([login, locked], consumeErrors=True)
        return both.addCallback(self._md5_decision, username, realm)

    def _md5_decision(self, results: list[tuple[bool, Any]], username: str, realm: str) -> Any:
        (login_ok, login), (read_ok, lock) = results
        if not read_ok and not (isinstance(login, Failure) and login.check(defer.CancelledError)):
            # Every MD5 answer, right or wrong: a 503 for right ones only would tell which were.
            if isinstance(lock, Failure) and lock.check(LockStoreError):
                raise BackendUnavailable(f"{lock.getErrorMessage()}; MD5 answers are refused until it can be read")
            return lock
        if not login_ok:
            return login  # a wrong password (or an outage) is that, lock or not
        if lock is None:
            self._written.pop((username, realm), None)  # unlocked meanwhile: the next SHA-2 login writes again
            return login
        raise DowngradeRefused(lock)

    def _logged_in_with_sha2(self, result: Any, username: str, realm: str, algorithm: str) -> Any:
        key = (username, realm)
        now = self.reactor.seconds()
        written = self._written.get(key)
        if written is not None and now - written < self.remember:
            return result
        self._written.pop(key, None)
        if len(self._written) >= self.max_remembered:
            self._written.pop(next(iter(self._written)))
        self._written[key] = now
        d = deferToThreadPool(self.reactor, self.threadpool, self.store.mark, username, realm, algorithm, now)
        d.addErrback(self._not_written, key)
        return result

    def _not_written(self, failure: Failure, key: tuple[str, str]) -> None:
        self._written.pop(key, None)  # try again at the next SHA-2 login
        self._lines.warn("md5-lock-store", "store", "cannot record a SHA-2 login for the MD5 downgrade lock: {why}", why=failure.getErrorMessage())
