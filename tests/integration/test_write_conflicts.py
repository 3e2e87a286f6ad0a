"""Writes that meet other transactions' locks (PostgreSQL only: SQLite has one writer): a write
PostgreSQL picks to break a deadlock is run again, not failed; a flow control row deleted
under a lock being taken is created again."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Connection

from stepline_server.model import FlowKind
from stepline_server.store import flow_state, schema
from stepline_server.store.database import Database, Tx, migrate
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


def test_a_flow_row_deleted_between_its_creation_and_its_lock_is_created_again(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pruner deletes the row of an idle concurrency key (flow_slots.prune_idle) while a
    start is about to lock it: the start creates it again instead of going on unlocked."""
    migrate(pg_url)
    engine = create_engine(pg_url)
    ref = flow_state.KeyRef(kind=FlowKind.CONCURRENCY, key="f:k", function_id="f",
                            value="k")
    try:
        with engine.begin() as conn:
            flow_state.lock(conn, [ref])
        create = flow_state._create
        pruned: list[int] = []

        def create_then_prune(conn: Connection, refs: list[flow_state.KeyRef]) -> None:
            create(conn, refs)  # the row exists: nothing inserted, nothing locked
            if not pruned:
                with engine.begin() as other:
                    pruned.append(other.execute(schema.flow_keys.delete()).rowcount)

        monkeypatch.setattr(flow_state, "_create", create_then_prune)
        with engine.begin() as conn:
            locked = flow_state.lock(conn, [ref])
        assert pruned == [1]
        assert list(locked) == [(FlowKind.CONCURRENCY, "f:k")]
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(schema.flow_keys)).scalar() == 1
    finally:
        engine.dispose()
