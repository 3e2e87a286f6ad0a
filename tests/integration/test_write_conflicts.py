"""A write that PostgreSQL picks to break a deadlock is run again, not failed (PostgreSQL only:
SQLite has one writer, so no lock cycle can form)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from stepline_server.store.database import Database, Tx
from tests.conftest import PostgresDatabases


@pytest.fixture
def pg_url(postgres: PostgresDatabases) -> Iterator[str]:
    name = postgres.create()
    url = postgres.url(name)
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text("CREATE TABLE contended_rows (id integer PRIMARY KEY)"))
        conn.execute(text("INSERT INTO contended_rows VALUES (1), (2)"))
    admin.dispose()
    yield url
    postgres.drop(name)


def test_a_write_that_loses_a_deadlock_runs_again_and_succeeds(pg_url: str) -> None:
    asyncio.run(_deadlock_then_retry(pg_url))


async def _deadlock_then_retry(pg_url: str) -> None:
    db = Database(pg_url)
    await db.start()
    other = create_engine(pg_url)
    try:
        first_row_locked = threading.Event()
        runs: list[int] = []

        def job(tx: Tx) -> str:
            runs.append(len(runs) + 1)
            tx.conn.execute(text("SELECT id FROM contended_rows WHERE id = 1 FOR UPDATE"))
            first_row_locked.set()
            tx.conn.execute(text("SELECT id FROM contended_rows WHERE id = 2 FOR UPDATE"))
            return "committed"

        loop = asyncio.get_running_loop()
        with other.connect() as conn:
            trans = conn.begin()
            # This side waits longer before looking for a deadlock than the writer's 1 s, so
            # PostgreSQL picks the writer's transaction to fail.
            conn.execute(text("SET LOCAL deadlock_timeout = '60s'"))
            conn.execute(text("SELECT id FROM contended_rows WHERE id = 2 FOR UPDATE"))
            written = db.submit(job)
            assert await loop.run_in_executor(None, first_row_locked.wait, 10)

            def lock_the_other_row_then_commit() -> None:
                conn.execute(text("SELECT id FROM contended_rows WHERE id = 1 FOR UPDATE"))
                trans.commit()

            await loop.run_in_executor(None, lock_the_other_row_then_commit)
        assert await asyncio.wait_for(written, 30) == "committed"
        assert runs == [1, 2]
    finally:
        other.dispose()
        await db.close()
