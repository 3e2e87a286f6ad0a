"""The database handle: engines, migrations at start-up, and batched write transactions.

All writes go through one writer thread that takes every job pending at that moment and commits
them in one transaction (group commit): under load, N checkpoints cost one commit, not N.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from stepline_server.errors import Conflict, Unavailable
from stepline_server.store import dialect

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 512
# A write that PostgreSQL picks to break a deadlock is run this many times in all, with a
# random pause of up to CONTENDED_PAUSE times the attempt before each new run.
CONTENDED_ATTEMPTS = 5
CONTENDED_PAUSE = 0.005
MIGRATIONS = Path(__file__).parent / "migrations"


class Tx:
    """A write transaction as a job sees it: the connection, a way to wake dispatch (here and on
    other servers), and callbacks to run on the event loop once it has committed."""

    __slots__ = ("callbacks", "conn", "key_locks", "notify")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.notify = False
        self.callbacks: list[Callable[[], None]] = []
        # Flow control rows were locked (store/flow_state.py, flow_slots.py): each job takes
        # them in one order, so the writer commits before another job takes its own.
        self.key_locks = False

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the event loop after the commit (never if this work rolls back)."""
        self.callbacks.append(callback)

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
            mark = len(tx.callbacks)
            try:
                with tx.conn.begin_nested():
                    results += self.apply(tx, [item])
            except Exception as exc:
                del tx.callbacks[mark:]
                results.append(_translate(exc))
        return results


def _translate(exc: Exception) -> Exception:
    """Driver errors become server errors here, in one place."""
    if isinstance(exc, IntegrityError):
        # The driver's text (SQL, constraint names) is for the log, not for clients.
        log.info("write refused by the database: %s", exc.orig)
        return Conflict("conflicts with stored data")
    if dialect.unreachable(exc):
        # The next transaction reconnects. Lost before or during COMMIT, the work may or may
        # not be stored: a resend is safe for what is idempotent (events with an id, reports
        # fenced by their lease).
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return Unavailable("the database connection was lost; send the request again")
        return Unavailable("the database is unreachable; send the request again")
    return exc


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


@functools.cache
def head_revision() -> str:
    """The newest migration this code knows."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def schema_revision(conn: Connection) -> str | None:
    """The migration the database is at (None before the first one)."""
    return MigrationContext.configure(conn).get_current_revision()


class SchemaTooNew(Exception):
    """The database was migrated by a newer Stepline than this one."""


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every migration this code knows, oldest to head."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(script.revision for script in scripts.walk_revisions())


def migrate(url: str) -> None:
    """Bring the schema up to date (Alembic `upgrade head`). Refuses a database that a newer
    Stepline migrated: its migrations are unknown here, and this code was never tested on it.
    (A server already running when a newer replica migrates keeps running: migrations only
    expand the schema within a release series; see README, "Upgrades".)"""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            current = schema_revision(conn)
    finally:
        engine.dispose()
    if current is not None and current not in known_revisions():
        raise SchemaTooNew(
            f"the database schema is at migration {current}, newer than this server knows "
            f"(its newest is {head_revision()}): a newer Stepline upgraded it. Start the newer "
            "version (upgrading every replica), or restore the backup taken before the upgrade")
    if current != head_revision():  # at head (every restart): nothing for Alembic to run
        command.upgrade(alembic_config(url), "head")


def _resolve(batch: list[tuple[Any, asyncio.Future[Any]]], results: list[Any],
             callbacks: list[Callable[[], None]]) -> None:
    for (_, fut), result in zip(batch, results, strict=True):
        if fut.done():
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("after-commit callback failed")


class _Retry(Exception):
    pass


class Database:
    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL") -> None:
        self.url = url
        self.is_sqlite = dialect.is_sqlite(url)
        self.writer, self.reader = dialect.make_engines(url, sqlite_synchronous=sqlite_synchronous)
        self._read_threads = ThreadPoolExecutor(4, thread_name_prefix="stepline-reader")
        # Jobs go straight to the writer thread: it wakes without a trip through the event loop.
        self._queue: queue.SimpleQueue[tuple[Any, asyncio.Future[Any]] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Connection | None = None  # the writer thread's own, kept open
        self._closing = False
        self.commits = 0  # transactions committed, for benchmarks and tests
        # Called on the event loop after a commit that set Tx.notify (wakes local dispatch).
        self.on_notify: Callable[[], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(None, migrate, self.url)
        self._thread = threading.Thread(target=self._write_forever, name="stepline-writer",
                                        daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Commit what is queued, then stop the writer and release the connections."""
        self._closing = True
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._read_threads.shutdown(wait=True)
        self.writer.dispose()
        self.reader.dispose()

    # -- writes --------------------------------------------------------------------------------
    def submit(self, job: Callable[[Tx], T]) -> asyncio.Future[T]:
        """Queue a write job; jobs run in submission order. The future resolves after commit."""
        assert self._thread is not None, "Database.start() first"
        if self._closing:
            raise RuntimeError("database is closing")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put((job, fut))
        return fut

    def submit_batched(self, apply: BatchApply, item: Any) -> asyncio.Future[Any]:
        """Queue an item that `apply(tx, items)` writes together with adjacent items of the same
        `apply`; it returns one result (or exception instance) per item, in order."""
        return self.submit(_Batched(apply, item))  # type: ignore[arg-type]

    async def write(self, job: Callable[[Tx], T]) -> T:
        return await self.submit(job)

    def _write_forever(self) -> None:
        """The writer thread: take everything queued, commit it as one transaction, repeat."""
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    stopping = True
                    break
                batch.append(entry)
            callbacks: list[Callable[[], None]] = []
            try:
                results = self._commit(batch, callbacks)
            except Exception as exc:  # the commit itself failed
                translated = _translate(exc)
                if isinstance(translated, Unavailable):  # an outage: no traceback per write
                    log.warning("write transaction failed: %s", str(exc).splitlines()[0])
                else:
                    log.exception("write transaction failed")
                results = [translated] * len(batch)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_resolve, batch, results, callbacks)
        self._drop_connection()

    def _commit(self, batch: list[tuple[Any, asyncio.Future[Any]]],
                callbacks: list[Callable[[], None]]) -> list[Any]:
        """Commit the batch; entries whose work lost a lock conflict to another server's
        transaction (PostgreSQL chose it to break a deadlock) run again in a transaction of
        their own, once the others have committed and released their locks."""
        entries = [entry for entry, _ in batch]
        results = self._run(entries, callbacks)
        for attempt in range(1, CONTENDED_ATTEMPTS):
            lost = [i for i, result in enumerate(results) if dialect.contended(result)]
            if not lost:
                return results
            log.info("%d write(s) lost a lock conflict; running them again (attempt %d)",
                     len(lost), attempt + 1)
            time.sleep(random.uniform(0, CONTENDED_PAUSE * attempt))  # the winner goes first
            try:
                again = self._run([entries[i] for i in lost], callbacks)
            except Exception as exc:  # only the retried entries failed; the rest is committed
                log.exception("write transaction failed")
                again = [_translate(exc)] * len(lost)
            for i, result in zip(lost, again, strict=True):
                results[i] = result
        return [Unavailable("the write lost lock conflicts with other servers' writes "
                            f"{CONTENDED_ATTEMPTS} times; send the request again")
                if dialect.contended(result) else result for result in results]

    def _run(self, entries: list[Any], callbacks: list[Callable[[], None]]) -> list[Any]:
        units: list[_Unit] = []
        for entry in entries:
            if isinstance(entry, _Batched):
                if units and units[-1].apply is entry.apply:
                    units[-1].items.append(entry.item)
                else:
                    units.append(_Unit(apply=entry.apply, items=[entry.item]))
            else:
                units.append(_Unit(job=entry))
        mark = len(callbacks)
        try:
            return self._transaction(units, callbacks, isolate=len(units) > 1)
        except _Retry:
            # A lone unit failed and rolled back; redo its items one by one.
            del callbacks[mark:]
            return self._transaction(units, callbacks, isolate=True)
        except Exception:
            self._drop_connection()
            raise

    def _transaction(self, units: list[_Unit], callbacks: list[Callable[[], None]], *,
                     isolate: bool) -> list[Any]:
        if self._conn is None:
            self._conn = self.writer.connect()
        conn = self._conn
        trans = conn.begin()
        tx = Tx(conn)
        results: list[Any] = []
        for index, unit in enumerate(units):
            if tx.key_locks and index and not self.is_sqlite:
                # The previous jobs locked flow control rows: held while this job waits for
                # rows of its own, another server's transaction could wait for them in the
                # other order (a deadlock: retried by _commit, but only after PostgreSQL's
                # deadlock_timeout, 1 s by default). Their commit releases them. (SQLite: one
                # writer.)
                self._committed(trans, tx, callbacks)
                trans, tx = conn.begin(), Tx(conn)
            if not isolate:  # one unit: no savepoint needed, the transaction is its scope
                try:
                    results += unit.run(tx)
                except Exception as exc:
                    trans.rollback()
                    if unit.size > 1:
                        raise _Retry() from exc
                    return [_translate(exc)]
                continue
            mark = len(tx.callbacks)
            try:
                with conn.begin_nested():
                    results += unit.run(tx)
            except Exception as exc:
                del tx.callbacks[mark:]
                results += unit.one_by_one(tx, exc)
        self._committed(trans, tx, callbacks)
        return results

    def _committed(self, trans: Any, tx: Tx, callbacks: list[Callable[[], None]]) -> None:
        """Commit; the transaction's callbacks are then due."""
        if tx.notify:
            dialect.notify(tx.conn)
        trans.commit()
        self.commits += 1
        callbacks += tx.callbacks
        if tx.notify and self.on_notify is not None:
            callbacks.append(self.on_notify)

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
            try:
                with self.reader.connect() as conn:
                    return query(conn)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # The pooled connection had died (database restart): the pool has dropped it
                # and its siblings; a read has no side effects, so run it once more on a fresh
                # one.
                with self.reader.connect() as conn:
                    return query(conn)
        except Exception as exc:
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc
