"""The SQL location store: SQLAlchemy 2 Core on SQLite (default) or PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from sipshield.interfaces import ILocationStore
from sipshield.state._binding import Binding
from sipshield.state._errors import StoreUnavailable
from sipshield.state._prepared import Prepared
from sipshield.state._sqlite import sqlite_pragmas

__all__ = ["SQLLocationStore"]

T = TypeVar("T")

_COLUMNS = (
    "aor", "contact", "expires_at", "q", "call_id", "cseq", "path",
    "source_transport", "source_host", "source_port", "instance", "reg_id", "user_agent", "extra", "identity",
)


def _location_table(metadata: MetaData, name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("aor", Text, nullable=False),
        Column("contact", Text, nullable=False),
        Column("expires_at", Float, nullable=False),
        Column("q", Float, nullable=False, default=1.0),
        Column("call_id", Text, nullable=False, default=""),
        Column("cseq", Integer, nullable=False, default=0),
        Column("path", Text, nullable=False, default="[]"),
        Column("source_transport", Text),
        Column("source_host", Text),
        Column("source_port", Integer),
        Column("instance", Text),
        Column("reg_id", Integer),
        Column("user_agent", Text),
        Column("extra", Text, nullable=False, default="{}"),
        Column("identity", Text),
        UniqueConstraint("aor", "contact", name=f"{name}_aor_contact"),
        Index(f"{name}_aor", "aor"),
        Index(f"{name}_expires_at", "expires_at"),
        Index(f"{name}_identity", "identity"),
    )


def _row(b: Binding) -> dict[str, Any]:
    source = b.source
    return {
        "aor": b.aor,
        "contact": b.contact,
        "expires_at": b.expires_at,
        "q": b.q,
        "call_id": b.call_id,
        "cseq": b.cseq,
        "path": json.dumps(list(b.path)),
        "source_transport": source[0] if source else None,
        "source_host": source[1] if source else None,
        "source_port": source[2] if source else None,
        "instance": b.instance,
        "reg_id": b.reg_id,
        "user_agent": b.user_agent,
        "extra": json.dumps(b.extra),
        "identity": b.identity,
    }


def _binding(row: Any) -> Binding:
    source = None
    if row.source_transport is not None and row.source_host is not None and row.source_port is not None:
        source = (row.source_transport, row.source_host, row.source_port)
    return Binding(
        aor=row.aor,
        contact=row.contact,
        expires_at=row.expires_at,
        q=row.q,
        call_id=row.call_id,
        cseq=row.cseq,
        path=tuple(json.loads(row.path)),
        source=source,
        instance=row.instance,
        reg_id=row.reg_id,
        user_agent=row.user_agent,
        identity=row.identity,
        extra=json.loads(row.extra),
    )


@implementer(ILocationStore)
class SQLLocationStore:
    """Bindings in one SQL table (RFC 3261 10.2 location service), shared by
    every proxy that points at the same database.

    ``url`` is a SQLAlchemy URL: ``sqlite:///path/sipshield.db`` (journal in
    WAL mode) or ``postgresql+psycopg://user@host/db``.  Every query runs in
    the store's own thread pool of ``threadpool_size`` threads
    (deferToThreadPool), never on the reactor thread and never in the
    reactor's shared pool, so a metrics scrape or DNS lookup does not queue
    behind the database.

    ``start()`` starts the pool and creates the table; ``stop()`` disposes
    of the engine and stops the pool (the service calls both).  Any database
    error, and any call while stopped, fails the Deferred with
    :class:`StoreUnavailable` so the registrar answers 503 (fail closed).

    Times are on the reactor's clock (``reactor.seconds()``, read on the
    reactor thread); ``bindings()`` leaves out bindings already past their
    expiry.  Among equal q values, bindings come in first-registration order.
    """

    def __init__(self, url: str, reactor: Any, threadpool_size: int = 4, *, table_name: str = "sipshield_location", echo: bool = False) -> None:
        self.url = make_url(url)
        self.reactor = reactor
        self.table = _location_table(MetaData(), table_name)
        self._sqlite = self.url.get_backend_name() == "sqlite"
        # A SQLite connection is a file handle, not a link that drops: no ping per checkout.
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": not self._sqlite}
        if self._sqlite and self.url.database in (None, "", ":memory:"):
            # One in-memory database shared by every thread of the pool.
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
            threadpool_size = 1
        elif self.url.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 5}
            kwargs["pool_size"] = threadpool_size
        self._engine_kwargs = kwargs
        self._threadpool_size = threadpool_size
        self._engine: Engine | None = None
        self._pool: ThreadPool | None = None
        self._in_pool = 0
        self._settled: list[Deferred[None]] = []
        self._select_aor: Prepared | None = None
        self._upsert_rows: Prepared | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Start the thread pool and create the table (and its indexes) if missing."""
        if self._pool is not None:
            return defer.succeed(None)
        engine = create_engine(self.url, **self._engine_kwargs)
        if self._sqlite:
            event.listen(engine, "connect", sqlite_pragmas)
        self._engine = engine
        self._prepare(engine)
        pool = self._pool = ThreadPool(minthreads=0, maxthreads=self._threadpool_size, name=f"sipshield-location-{self.table.name}")
        pool.start()
        return self._run(self._create)

    def stop(self) -> Deferred[None]:
        """Dispose of the engine's connections and stop the thread pool."""
        pool, self._pool = self._pool, None
        engine, self._engine = self._engine, None
        if pool is None:
            return defer.succeed(None)
        d = deferToThreadPool(self.reactor, pool, engine.dispose) if engine is not None else defer.succeed(None)

        def stopped(result: Any) -> None:
            pool.stop()
            if isinstance(result, Failure) and not result.check(SQLAlchemyError):
                result.raiseException()

        return d.addBoth(stopped)

    # -- ILocationStore ---------------------------------------------------------------

    def bindings(self, aor: str) -> Deferred[list[Binding]]:
        return self._run(self._bindings, aor, self.reactor.seconds())

    def put(self, binding: Binding) -> Deferred[None]:
        return self._run(self._update, binding.aor, (), (binding,))

    def remove(self, aor: str, contact: str) -> Deferred[bool]:
        table = self.table
        return self._run(self._delete, delete(table).where(table.c.aor == aor, table.c.contact == contact)).addCallback(bool)

    def remove_all(self, aor: str) -> Deferred[int]:
        table = self.table
        return self._run(self._delete, delete(table).where(table.c.aor == aor))

    def expire(self, now: float) -> Deferred[int]:
        table = self.table
        return self._run(self._delete, delete(table).where(table.c.expires_at <= now))

    def count(self) -> Deferred[int]:
        return self._run(self._count)

    def count_for_identity(self, identity: str) -> Deferred[int]:
        table = self.table
        query = select(func.count()).select_from(table).where(table.c.identity == identity, table.c.expires_at > self.reactor.seconds())
        return self._run(self._scalar, query)

    def listing(self, limit: int) -> Deferred[list[Binding]]:
        return self._run(self._listing, limit, self.reactor.seconds())

    # -- beyond the interface -----------------------------------------------------------

    def update(self, aor: str, remove: Iterable[str] = (), put: Iterable[Binding] = ()) -> Deferred[None]:
        """Remove contacts then add or replace bindings of one AOR in one
        transaction (RFC 3261 10.3 step 7: all binding updates of a REGISTER
        commit together or not at all)."""
        return self._run(self._update, aor, tuple(remove), tuple(put))

    def update_listing(self, aor: str, remove: Iterable[str] = (), put: Iterable[Binding] = ()) -> Deferred[list[Binding]]:
        """:meth:`update`, then the AOR's bindings as :meth:`bindings` gives
        them, read in the same transaction: what the registrar's 200 lists
        (RFC 3261 10.3 step 8), in one trip to the pool instead of two."""
        return self._run(self._update_listing, aor, tuple(remove), tuple(put), self.reactor.seconds())

    # -- in the thread pool ------------------------------------------------------------------

    def _run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``fn(engine, *args)`` in the store's thread pool.

        The returned Deferred can be cancelled (the registrar's timeout does
        that): a job still waiting in the pool's queue is then skipped, so a
        REGISTER answered 503 is not written later behind the client's back.
        A job already running finishes; its result is dropped.
        """
        pool = self._pool
        engine = self._engine
        if pool is None or engine is None:
            return defer.fail(StoreUnavailable("location store is not started"))
        abandoned: list[bool] = []

        def job() -> T:
            if abandoned:
                raise StoreUnavailable("abandoned before it ran")
            return fn(engine, *args)

        outer: Deferred[T] = Deferred(lambda _: abandoned.append(True))

        def relay(result: Any) -> None:
            self._in_pool -= 1
            if not self._in_pool:
                waiting, self._settled = self._settled, []
                for d in waiting:
                    d.callback(None)
            if not outer.called:
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)

        self._in_pool += 1
        deferToThreadPool(self.reactor, pool, job).addBoth(relay)
        return outer.addErrback(_unavailable)

    def settled(self) -> Deferred[None]:
        """Fires once no job of this store is queued or running in its pool.

        A cancelled call (the registrar's timeout) may still be running its
        write: the registrar waits for this before it lets the next
        REGISTER of the same AOR or identity read the bindings, or two
        could pass a cap that only one may."""
        if not self._in_pool:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._settled.append(d)
        return d

    def _create(self, engine: Engine) -> None:
        table = self.table
        with engine.begin() as conn:
            # A table from before the identity column gets it (bindings
            # registered before count for no identity until refreshed).
            if inspect(conn).has_table(table.name) and "identity" not in {c["name"] for c in inspect(conn).get_columns(table.name)}:
                conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN identity TEXT'))
        table.metadata.create_all(engine)
        for index in table.indexes:
            index.create(engine, checkfirst=True)  # create_all skips those of an existing table

    def _prepare(self, engine: Engine) -> None:
        """The statements of every REGISTER, compiled once (sipshield.state._prepared)."""
        table = self.table
        dialect = engine.dialect
        query = select(table).where(table.c.aor == bindparam("aor"), table.c.expires_at > bindparam("now")).order_by(table.c.q.desc(), table.c.id)
        self._select_aor = Prepared(query, dialect)
        if dialect.name in ("sqlite", "postgresql"):
            self._upsert_rows = Prepared(self._upsert_statement(dialect.name).values({c: bindparam(c) for c in _COLUMNS}), dialect)

    def _bindings(self, engine: Engine, aor: str, now: float) -> list[Binding]:
        with engine.connect() as conn:
            return self._select(conn, aor, now)

    def _select(self, conn: Connection, aor: str, now: float) -> list[Binding]:
        assert self._select_aor is not None
        return [_binding(row) for row in self._select_aor.execute(conn, {"aor": aor, "now": now})]

    def _update_listing(self, engine: Engine, aor: str, remove: Sequence[str], put: Sequence[Binding], now: float) -> list[Binding]:
        with engine.begin() as conn:
            self._write(conn, aor, remove, put)
            return self._select(conn, aor, now)

    def _listing(self, engine: Engine, limit: int, now: float) -> list[Binding]:
        table = self.table
        query = select(table).where(table.c.expires_at > now).order_by(table.c.aor, table.c.q.desc(), table.c.id).limit(limit)
        with engine.connect() as conn:
            return [_binding(row) for row in conn.execute(query)]

    def _update(self, engine: Engine, aor: str, remove: Sequence[str], put: Sequence[Binding]) -> None:
        with engine.begin() as conn:
            self._write(conn, aor, remove, put)

    def _write(self, conn: Connection, aor: str, remove: Sequence[str], put: Sequence[Binding]) -> None:
        table = self.table
        if remove:
            conn.execute(delete(table).where(table.c.aor == aor, table.c.contact.in_(remove)))
        if put:
            self._upsert(conn, [_row(b) for b in put])

    def _upsert_statement(self, name: str) -> Any:
        from sqlalchemy.dialects import postgresql, sqlite

        table = self.table
        stmt: Any = (sqlite.insert if name == "sqlite" else postgresql.insert)(table)
        return stmt.on_conflict_do_update(index_elements=[table.c.aor, table.c.contact], set_={c: stmt.excluded[c] for c in _COLUMNS[2:]})

    def _upsert(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """INSERT ... ON CONFLICT (aor, contact) DO UPDATE on SQLite and
        PostgreSQL (no race between two REGISTERs for one contact, and the
        row keeps its id, hence its place among equal q values); delete then
        insert in the same transaction elsewhere."""
        table = self.table
        if self._upsert_rows is not None:
            self._upsert_rows.execute_many(conn, rows)
            return
        for row in rows:
            conn.execute(delete(table).where(table.c.aor == row["aor"], table.c.contact == row["contact"]))
        conn.execute(insert(table), rows)

    def _delete(self, engine: Engine, stmt: Any) -> int:
        with engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def _count(self, engine: Engine) -> int:
        return self._scalar(engine, select(func.count()).select_from(self.table))

    def _scalar(self, engine: Engine, query: Any) -> int:
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


def _unavailable(failure: Failure) -> Failure:
    if failure.check(SQLAlchemyError):
        error = failure.value
        raise StoreUnavailable(f"location database error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error
    return failure
