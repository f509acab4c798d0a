"""SQL statements compiled once, for the queries every REGISTER makes.

SQLAlchemy Core builds, keys and looks up a statement in its compiled cache
on every ``execute``: about three quarters of the cost of a one-row query on
SQLite (measured 2026-12-04, docs/performance.md "Authenticated REGISTERs").
A :class:`Prepared` statement is compiled for the engine's dialect once and
then handed to the driver as text (``exec_driver_sql``), its parameters by
name, converted by the dialect's bind processors as Core would.  Only for
statements whose shape does not depend on the values (no expanding IN).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy.engine import Connection, CursorResult, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["Prepared"]


class Prepared:
    """``statement`` compiled for ``dialect``; its bind parameters are named (``bindparam("aor")``)."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        self.sql = compiled.string
        self._names: tuple[str, ...] = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.binds)
        self._positional = bool(compiled.positional)
        # The dialect's conversions of the values (SQLite's float() for a Float), as Core would apply them.
        processors = ((name, compiled.binds[name].type._cached_bind_processor(dialect)) for name in self._names)
        self._processors: dict[str, Callable[[Any], Any]] = {name: f for name, f in processors if f is not None}

    def _params(self, values: Mapping[str, Any]) -> Any:
        processors = self._processors
        if processors:
            values = {name: (processors[name](value) if name in processors else value) for name, value in values.items()}
        return tuple(values[name] for name in self._names) if self._positional else dict(values)

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> CursorResult[Any]:
        return conn.exec_driver_sql(self.sql, self._params(values))

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> CursorResult[Any]:
        return conn.exec_driver_sql(self.sql, [self._params(row) for row in rows])
