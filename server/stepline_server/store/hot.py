"""Hot-path statements: built with SQLAlchemy, compiled once per dialect, run on the driver.

SQLAlchemy's per-call work (cache key, parameter processing, result wrapping, events) costs
several times what the driver itself needs for a one-row statement: locking one queue row took
144 µs through `Connection.execute` and 30 µs on the psycopg cursor, measured here. A run's
transactions are a dozen such statements on the writer thread's critical path, so the
statements every step goes through are declared as `Hot` and skip that machinery.

A `Hot` statement is an ordinary SQLAlchemy construct. What it supports, checked when it is
compiled: bound parameters by name (a missing one raises KeyError on SQLite, ProgrammingError
on PostgreSQL), literal values, `IN (expanding)` lists (PostgreSQL: `= ANY(array)`, one
prepared statement whatever the length; SQLite: one `?` per item), and columns that need no
Python-side type conversion (strings and integers, as the hot tables use).
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.dml import Insert

_EXPANDING = re.compile(r"(NOT )?IN \(__\[POSTCOMPILE_(\w+)\]\)")


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    # Positional drivers (SQLite): the parameter names in order; None for named ones (psycopg).
    order: tuple[str, ...] | None
    constants: dict[str, Any]  # values of literals bound by SQLAlchemy (`step_id == ""`)
    expanding: frozenset[str]
    row: Any  # a namedtuple class for result rows, or None

    def params(self, given: Mapping[str, Any]) -> Any:
        values = {**self.constants, **given} if self.constants else given
        if self.order is None:
            return values
        return tuple(values[name] for name in self.order)


class Hot:
    """A statement run on the DBAPI cursor of the transaction's connection."""

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...] | None], _Compiled] = {}

    # -- running ---------------------------------------------------------------------------
    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Execute once; the result rows as named tuples."""
        compiled = self._get(conn, params)
        sql, args = _expand(compiled, params)
        cursor = _run(conn, sql, args, many=False)
        fetched = cursor.fetchall()
        return [compiled.row._make(row) for row in fetched] if compiled.row else fetched

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Execute once; return the number of rows it changed."""
        compiled = self._get(conn, params)
        sql, args = _expand(compiled, params)
        return int(_run(conn, sql, args, many=False).rowcount)

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute for each parameter set (no expanding lists)."""
        if not rows:
            return
        compiled = self._get(conn, rows[0])
        assert not compiled.expanding, "execute_many takes no expanding parameters"
        if len(rows) == 1:  # psycopg's executemany sets up a pipeline even for one row
            _run(conn, compiled.sql, compiled.params(rows[0]), many=False)
        else:
            _run(conn, compiled.sql, [compiled.params(row) for row in rows], many=True)

    # -- compiling ---------------------------------------------------------------------------
    def _get(self, conn: Connection, params: Mapping[str, Any]) -> _Compiled:
        # An INSERT renders the columns it is given: compiled once per set of keys.
        keys = tuple(params) if isinstance(self.statement, Insert) else None
        key = (conn.dialect.name, keys)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _compile(self.statement, conn, keys)
        return compiled


def _expand(compiled: _Compiled, params: Mapping[str, Any]) -> tuple[str, Any]:
    """The SQL and driver arguments for one execution."""
    if not compiled.expanding or compiled.order is None:
        return compiled.sql, compiled.params(params)  # PostgreSQL passes lists as arrays
    # SQLite: one placeholder per item, in the expanding parameter's place.
    sql, args = compiled.sql, []
    values = {**compiled.constants, **params} if compiled.constants else params
    for name in compiled.order:
        value = values[name]
        if name in compiled.expanding:
            items = list(value)
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * len(items)) or
                              "SELECT NULL WHERE 0", 1)
            args += items
        else:
            args.append(value)
    return sql, tuple(args)


def _compile(statement: ClauseElement, conn: Connection, keys: tuple[str, ...] | None
             ) -> _Compiled:
    dialect = conn.dialect
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys) if keys else None)
    if compiled._bind_processors or getattr(compiled, "insert_prefetch", None):
        raise TypeError(f"not a hot statement (needs type processing or defaults): {compiled}")
    required = {compiled.bind_names[bind] for bind in compiled.binds.values() if bind.required}
    constants = {name: value for name, value in compiled.construct_params(_check=False).items()
                 if name not in required}
    expanding = frozenset(compiled.bind_names[bind] for bind in compiled.binds.values()
                          if bind.expanding)
    sql = compiled.string
    positional = bool(dialect.positional)
    if expanding and not positional:
        def as_array(match: re.Match[str]) -> str:
            operator = "<> ALL" if match.group(1) else "= ANY"
            return f"{operator}(%({match.group(2)})s)"

        sql = _EXPANDING.sub(as_array, sql)
        if "__[POSTCOMPILE_" in sql:
            raise TypeError(f"not a hot statement (an expanding parameter outside IN): {sql}")
    columns = getattr(statement, "exported_columns", ())
    row = namedtuple("Row", [c.key for c in columns]) if columns else None
    return _Compiled(sql, tuple(compiled.positiontup) if positional else None, constants,
                     expanding, row)


def _run(conn: Connection, sql: str, args: Any, *, many: bool) -> Any:
    """Execute on the connection's DBAPI cursor (one kept per connection); driver errors are
    raised as SQLAlchemy raises them (IntegrityError, ...), and a lost connection is
    invalidated so the pool replaces it."""
    fairy = conn.connection
    cursor = fairy.info.get("hot_cursor")
    if cursor is None:
        assert fairy.dbapi_connection is not None
        cursor = fairy.info["hot_cursor"] = fairy.dbapi_connection.cursor()
    dbapi = conn.dialect.loaded_dbapi
    try:
        if many:
            cursor.executemany(sql, args)
        else:
            cursor.execute(sql, args)
    except dbapi.Error as err:
        fairy.info.pop("hot_cursor", None)
        disconnected = conn.dialect.is_disconnect(err, fairy.dbapi_connection, cursor)
        if disconnected:
            conn.invalidate(err)
        raise exc.DBAPIError.instance(sql, args, err, dbapi.Error, dialect=conn.dialect,
                                      connection_invalidated=disconnected) from err
    return cursor
