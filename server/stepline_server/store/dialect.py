"""Every difference between SQLite and PostgreSQL lives here: engines, pragmas, upserts, NOTIFY,
byte lengths."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import (
    Engine,
    LargeBinary,
    Table,
    cast,
    create_engine,
    event,
    exc,
    func,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "stepline_queue"
LISTEN_WAIT_SECONDS = 0.5


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engines(url: str, *, sqlite_synchronous: str = "FULL") -> tuple[Engine, Engine]:
    """Return (writer, reader) engines.

    SQLite: writes open with BEGIN IMMEDIATE so a transaction never has to upgrade its lock
    half-way; reads use plain deferred BEGIN and run beside the writer thanks to WAL.
    """
    if not is_sqlite(url):
        writer = create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True)
        # No pre-ping on reads (a round trip each): Database.read retries once instead when a
        # pooled connection turns out to be dead.
        reader = create_engine(url, pool_size=4, max_overflow=4)
        return writer, reader
    writer = create_engine(url, poolclass=NullPool if ":memory:" in url else None)
    reader = create_engine(url)
    for engine, begin in ((writer, "BEGIN IMMEDIATE"), (reader, "BEGIN")):
        _configure_sqlite(engine, begin, sqlite_synchronous)
    return writer, reader


def _configure_sqlite(engine: Engine, begin_sql: str, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module, which would otherwise BEGIN lazily.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        # 64 MiB of page cache per connection (the default is 2 MiB): indexes of a queue with
        # 100k sleeping runs stay in memory.
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(begin_sql)


@contextlib.contextmanager
def pipelined(conn: Connection) -> Iterator[None]:
    """Send the statements run inside in one round trip (PostgreSQL: a psycopg pipeline).

    Only for writes whose results (rows, rowcount) nobody reads: they arrive at the block's end,
    where an error is raised as SQLAlchemy raises it (IntegrityError, ...). Elsewhere a no-op.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    import psycopg

    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        with driver.pipeline():
            yield
    except psycopg.Error as err:
        raise exc.DBAPIError.instance(None, None, err, psycopg.Error) from err


# SQLSTATEs that say the database cannot serve us now, though it may in a moment: connection
# exceptions (class 08), a server shutting down or starting up (57P01-57P03), no free
# connection slot (53300).
_UNREACHABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300")


def unreachable(error: BaseException) -> bool:
    """Whether a driver error means "the database is unreachable": the request may succeed if
    sent again once it is back. PostgreSQL only; a SQLite file is never unreachable."""
    if isinstance(error, exc.PendingRollbackError):
        # The transaction's connection died under it (SQLAlchemy invalidated it).
        return True
    if not isinstance(error, exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    import psycopg

    orig = error.orig
    if not isinstance(orig, psycopg.OperationalError):
        return False
    # psycopg raises connection failures (refused, reset, closed) without a SQLSTATE.
    state = orig.sqlstate
    return state is None or state.startswith(_UNREACHABLE_STATES)


# A transaction that lost to another one: a deadlock (40P01) or a serialization failure (40001).
# Nothing it wrote stays; run again, it succeeds.
_CONTENDED_STATES = frozenset({"40P01", "40001"})


def contended(error: BaseException) -> bool:
    """Whether a driver error means "this transaction was chosen to lose a lock conflict"
    (PostgreSQL's deadlock detector): the same work run again, in a new transaction, succeeds."""
    if not isinstance(error, exc.DBAPIError):
        return False
    return getattr(error.orig, "sqlstate", None) in _CONTENDED_STATES


def insert_or_replace(dialect_name: str, table: Table, *, replace_if: Any) -> Any:
    """INSERT … ON CONFLICT (primary key) DO UPDATE every other column WHERE `replace_if`,
    RETURNING the key: a row comes back exactly when it was inserted or replaced."""
    stmt: Any = (sqlite if dialect_name == "sqlite" else postgresql).insert(table)
    key = list(table.primary_key.columns)
    return stmt.on_conflict_do_update(
        index_elements=key,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if not c.primary_key},
        where=replace_if,
    ).returning(*key)


# Advisory lock keys (PostgreSQL): arbitrary, fixed, ours.
PRUNER_LOCK = 0x5354_4550_5052_554E  # "STEPPRUN"


def try_exclusive(conn: Connection, key: int) -> bool:
    """Take the transaction-scoped lock `key` if no other transaction holds it (PostgreSQL:
    pg_try_advisory_xact_lock, released at commit; never waits). SQLite: always True, its
    writer is one process's."""
    if conn.dialect.name != "postgresql":
        return True
    return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:key)"),
                             {"key": key}).scalar())


def byte_length(dialect_name: str, column: Any) -> Any:
    """The length of a text column in bytes (UTF-8), not characters."""
    if dialect_name == "postgresql":
        return func.octet_length(column)
    return func.length(cast(column, LargeBinary))


def notify(conn: Connection) -> None:
    """Tell other server processes that ready work exists (PostgreSQL; sent at commit)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


# Tables whose planner statistics matter to the hot path, and autovacuum's analyze rule.
_ANALYZED = ("queue", "waits", "steps", "runs", "events", "cron_schedules")
_STALE_STATISTICS = f"""
SELECT relname FROM pg_stat_user_tables
WHERE relname IN ({", ".join(f"'{t}'" for t in _ANALYZED)})
  AND n_mod_since_analyze > 50 + 0.1 * GREATEST(n_live_tup, 0)
"""
MAINTAIN_SECONDS = 10.0


async def keep_statistics(url: str, stop: asyncio.Event) -> None:
    """PostgreSQL without autovacuum (it is on by default): ANALYZE our tables when they have
    changed as much as autovacuum would wait for. Without statistics the planner takes the
    queue for a small table and scans it whole where the primary key would do."""
    if is_sqlite(url):
        return
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, connect_timeout=10) as conn:
                setting = await (await conn.execute("SHOW autovacuum")).fetchone()
                if setting is not None and setting[0] == "on":
                    return
                log.warning("PostgreSQL runs without autovacuum: Stepline analyzes its own "
                            "tables when they change")
                while not stop.is_set():
                    stale = [row[0] for row in await (await conn.execute(
                        _STALE_STATISTICS)).fetchall()]
                    for table in stale:
                        await conn.execute(f"ANALYZE {table}")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), MAINTAIN_SECONDS)
        except (OSError, psycopg.Error) as exc:
            log.warning("statistics upkeep failed (%s); trying again", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), MAINTAIN_SECONDS)


async def listen(url: str, on_notify: Callable[[], None], stop: asyncio.Event) -> None:
    """Call on_notify for each NOTIFY from other processes until stop is set (PostgreSQL only).

    Reconnects with a bounded backoff; the dispatcher's polling covers any gap.
    """
    if is_sqlite(url):
        return
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    delay = 0.5
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, connect_timeout=10) as conn:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                delay = 0.5
                while not stop.is_set():
                    # A bounded wait, so `stop` is seen; the generator ends before we leave the
                    # connection (an abandoned one would hold its lock and hang the close).
                    async for _ in conn.notifies(timeout=LISTEN_WAIT_SECONDS):
                        on_notify()
        except (OSError, psycopg.Error) as exc:
            log.warning("LISTEN connection lost (%s); polling until it is back", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)
