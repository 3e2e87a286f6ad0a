"""The database handle: engines, migrations at start-up, and batched write transactions.

All writes go through one writer thread that takes every job pending at that moment and commits
them in one transaction (group commit): under load, N checkpoints cost one commit, not N.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

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


Job = Callable[[Tx], Any]


def migrate(url: str) -> None:
    """Bring the schema up to date (Alembic `upgrade head`)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


class Database:
    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL") -> None:
        self.url = url
        self.is_sqlite = dialect.is_sqlite(url)
        self.writer, self.reader = dialect.make_engines(url, sqlite_synchronous=sqlite_synchronous)
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="stepline-writer")
        self._read_threads = ThreadPoolExecutor(4, thread_name_prefix="stepline-reader")
        self._pending: list[tuple[Job, asyncio.Future[Any]]] = []
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

    def _commit(self, batch: list[tuple[Job, asyncio.Future[Any]]]) -> list[Any]:
        results: list[Any] = []
        with self.writer.connect() as conn:
            trans = conn.begin()
            tx = Tx(conn)
            if len(batch) == 1:
                # A lone job needs no savepoint: when it fails, the transaction rolls back.
                try:
                    results.append(batch[0][0](tx))
                except Exception as exc:
                    trans.rollback()
                    return [exc]
            else:
                for job, _ in batch:
                    try:
                        with conn.begin_nested():
                            results.append(job(tx))
                    except Exception as exc:
                        results.append(exc)
            if tx.notify:
                dialect.notify(conn)
            trans.commit()
        self.commits += 1
        return results

    # -- reads ---------------------------------------------------------------------------------
    async def read(self, query: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_threads, self._read, query)

    def _read(self, query: Callable[[Connection], T]) -> T:
        with self.reader.connect() as conn:
            return query(conn)
