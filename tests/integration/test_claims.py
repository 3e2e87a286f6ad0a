"""queue.claim against real SQLite and PostgreSQL: the oldest due items of the asked functions,
at most `limit`, leased; items not due, of other functions or leased by a live owner are left."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select

from stepline_server.store import queue as queue_store
from stepline_server.store.database import migrate
from stepline_server.store.dialect import make_engines
from stepline_server.store.records import NewQueueItem
from stepline_server.store.schema import queue

NOW = 1_000_000


@pytest.fixture
def writer(database_url: str) -> Iterator[Engine]:
    migrate(database_url)
    engine, reader = make_engines(database_url)
    yield engine
    engine.dispose()
    reader.dispose()


def _item(run: str, function: str, due: int, **extra: Any) -> NewQueueItem:
    return NewQueueItem(run_id=run, function_id=function, due_at_ms=due, max_attempts=4, **extra)


def test_claim_takes_the_oldest_due_items_across_functions(writer: Engine) -> None:
    with writer.connect() as conn, conn.begin():
        queue_store.enqueue(conn, [
            _item("a1", "fa", NOW - 50), _item("a2", "fa", NOW - 10), _item("a3", "fa", NOW - 5),
            _item("b1", "fb", NOW - 40), _item("b2", "fb", NOW - 20),
            _item("c1", "fc", NOW - 100),  # due, but not asked for
            _item("a4", "fa", NOW + 1_000),  # not due
            _item("b3", "fb", NOW - 90, lease_owner="live", lease_until_ms=NOW + 5_000),
            # A lease that ran out: its holder was lost mid-attempt.
            _item("b4", "fb", NOW - 30, lease=3, lease_owner="gone", lease_until_ms=NOW - 1),
        ])
        claimed = queue_store.claim(conn, "me", ["fa", "fb", "nobody"], 4, NOW, 60_000)
        assert sorted(item.run_id for item in claimed) == ["a1", "b1", "b2", "b4"]
        by_run = {item.run_id: item for item in claimed}
        assert by_run["a1"].lease == 1 and by_run["a1"].attempt == 0
        # Taken over, its attempt unchanged: what a lost worker costs is charged by its server.
        assert by_run["b4"].lease == 4 and by_run["b4"].attempt == 0
        assert all(item.lease_owner == "me" for item in claimed)
        # The next claim goes on from there; the live lease is never taken.
        again = queue_store.claim(conn, "me", ["fa", "fb"], 10, NOW, 60_000)
        assert sorted(item.run_id for item in again) == ["a2", "a3"]
        assert queue_store.claim(conn, "me", ["fa", "fb"], 10, NOW, 60_000) == []
        owners = dict(conn.execute(select(queue.c.run_id, queue.c.lease_owner)).all())
    assert owners == {"a1": "me", "a2": "me", "a3": "me", "a4": None, "b1": "me", "b2": "me",
                      "b3": "live", "b4": "me", "c1": None}
