"""The database handle: engines, migrations at start-up, and batched write transactions.

All writes go through one writer thread that takes every job pending at that moment and commits
them in one transaction (group commit): under load, N checkpoints cost one commit, not N.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from stepline_server.errors import Conflict
from stepline_server.store import dialect

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 512
MIGRATIONS = Path(__file__).parent / "migrations"


class Tx:
    """A write transaction as a job sees it: the connection, and a way to wake other servers."""

    __slots__ = ("conn", "notify")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.notify = False

    def pipelined(self) -> contextlib.AbstractContextManager[None]:
        """A block of writes whose results nobody reads, sent in one round trip where the
        driver allows it; their errors are raised at the block's end."""
        return dialect.pipelined(self.conn)


Job = Callable[[Tx], Any]
BatchApply = Callable[[Tx, list[Any]], list[Any]]


@dataclass(frozen=True, slots=True)
class _Batched:
    """An item that is applied together with adjacent items of the same kind."""

    apply: BatchApply
    item: Any


@dataclass(slots=True)
class _Unit:
    """Consecutive pending entries that run as one piece of the transaction."""

    job: Job | None = None
    apply: BatchApply | None = None
    items: list[Any] = field(default_factory=list)

    @property
    def size(self) -> int:
        return 1 if self.job is not None else len(self.items)

    def run(self, tx: Tx) -> list[Any]:
        if self.job is not None:
            return [self.job(tx)]
        assert self.apply is not None
        return self.apply(tx, self.items)

    def one_by_one(self, tx: Tx, first_error: Exception) -> list[Any]:
        """After the unit failed as a whole: each item alone, in its own savepoint."""
        if self.job is not None or len(self.items) == 1:
            return [_translate(first_error)]
        assert self.apply is not None
        results: list[Any] = []
        for item in self.items:
            try:
                with tx.conn.begin_nested():
                    results += self.apply(tx, [item])
            except Exception as exc:
                results.append(_translate(exc))
        return results


def _translate(exc: Exception) -> Exception:
    """Driver errors become server errors here, in one place."""
    if isinstance(exc, IntegrityError):
        return Conflict(f"conflicts with stored data: {exc.orig}")
    return exc


def migrate(url: str) -> None:
    """Bring the schema up to date (Alembic `upgrade head`)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


class _Retry(Exception):
    pass


class Database:
    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL") -> None:
        self.url = url
        self.is_sqlite = dialect.is_sqlite(url)
        self.writer, self.reader = dialect.make_engines(url, sqlite_synchronous=sqlite_synchronous)
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="stepline-writer")
        self._read_threads = ThreadPoolExecutor(4, thread_name_prefix="stepline-reader")
        self._pending: list[tuple[Job | _Batched, asyncio.Future[Any]]] = []
        self._conn: Connection | None = None  # the writer thread's own, kept open
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0  # transactions committed, for benchmarks and tests

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._write_thread, migrate, self.url)
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._write_loop(), name="stepline-writer")

    async def close(self) -> None:
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
        await asyncio.get_running_loop().run_in_executor(self._write_thread,
                                                         self._drop_connection)
        self._write_thread.shutdown(wait=True)
        self._read_threads.shutdown(wait=True)
        self.writer.dispose()
        self.reader.dispose()

    # -- writes --------------------------------------------------------------------------------
    def submit(self, job: Callable[[Tx], T]) -> asyncio.Future[T]:
        """Queue a write job; jobs run in submission order. The future resolves after commit."""
        assert self._wake is not None, "Database.start() first"
        if self._closing:
            raise RuntimeError("database is closing")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((job, fut))
        self._wake.set()
        return fut

    def submit_batched(self, apply: BatchApply, item: Any) -> asyncio.Future[Any]:
        """Queue an item that `apply(tx, items)` writes together with adjacent items of the same
        `apply`; it returns one result (or exception instance) per item, in order."""
        return self.submit(_Batched(apply, item))  # type: ignore[arg-type]

    async def write(self, job: Callable[[Tx], T]) -> T:
        return await self.submit(job)

    async def _write_loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    results = await loop.run_in_executor(self._write_thread, self._commit, batch)
                except Exception as exc:  # the commit itself failed: nothing in it is durable
                    log.exception("write transaction failed")
                    results = [exc] * len(batch)
                for (_, fut), result in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
            if self._closing and not self._pending:
                return

    def _commit(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> list[Any]:
        units: list[_Unit] = []
        for entry, _ in batch:
            if isinstance(entry, _Batched):
                if units and units[-1].apply is entry.apply:
                    units[-1].items.append(entry.item)
                else:
                    units.append(_Unit(apply=entry.apply, items=[entry.item]))
            else:
                units.append(_Unit(job=entry))
        try:
            return self._transaction(units, isolate=len(units) > 1)
        except _Retry:
            # A lone unit failed and rolled back; redo its items one by one.
            return self._transaction(units, isolate=True)
        except Exception:
            self._drop_connection()
            raise

    def _transaction(self, units: list[_Unit], *, isolate: bool) -> list[Any]:
        if self._conn is None:
            self._conn = self.writer.connect()
        conn = self._conn
        trans = conn.begin()
        tx = Tx(conn)
        results: list[Any] = []
        for unit in units:
            if not isolate:  # one unit: no savepoint needed, the transaction is its scope
                try:
                    results += unit.run(tx)
                except Exception as exc:
                    trans.rollback()
                    if unit.size > 1:
                        raise _Retry() from exc
                    return [_translate(exc)]
                continue
            try:
                with conn.begin_nested():
                    results += unit.run(tx)
            except Exception as exc:
                results += unit.one_by_one(tx, exc)
        if tx.notify:
            dialect.notify(conn)
        trans.commit()
        self.commits += 1
        return results

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    # -- reads ---------------------------------------------------------------------------------
    async def read(self, query: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_threads, self._read, query)

    def _read(self, query: Callable[[Connection], T]) -> T:
        try:
            with self.reader.connect() as conn:
                return query(conn)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # The pooled connection had died (database restart): the pool has dropped it and
            # its siblings; a read has no side effects, so run it once more on a fresh one.
            with self.reader.connect() as conn:
                return query(conn)
