"""waits.paths: the distinct key paths of each event name's pending waits (a loose index scan),
against real SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from stepline_server.model import MatchKind
from stepline_server.store import waits as wait_store
from stepline_server.store.database import migrate
from stepline_server.store.dialect import make_engines
from stepline_server.store.records import NewWait
from stepline_server.store.schema import waits


def _wait(run: int, name: str, path: str | None) -> NewWait:
    return NewWait(run_id=f"r{run}", step_id="w", kind=MatchKind.WAIT_FOR_EVENT,
                   event_name=name, expression=None, match_path=path,
                   match_key=None if path is None else f"{path}={run}",
                   trigger_event_id="e", expires_at_ms=None, created_at_ms=run)


def test_paths_are_the_distinct_paths_of_each_name(database_url: str) -> None:
    migrate(database_url)
    writer, reader = make_engines(database_url)
    rows = ([_wait(i, "billing/upgraded", "data.userId") for i in range(300)]
            + [_wait(1000 + i, "billing/upgraded", "data.accountId") for i in range(5)]
            + [_wait(2000, "billing/upgraded", None)]
            + [_wait(3000 + i, "user/login", None) for i in range(3)]
            + [_wait(4000, "user/logout", "data.a.b")])
    try:
        with writer.connect() as conn, conn.begin():
            wait_store.insert(conn, rows)
            found = wait_store.paths(conn, ["billing/upgraded", "user/login", "user/logout",
                                            "nobody/waits"])
            # What SELECT DISTINCT says, for comparison.
            distinct = conn.execute(select(waits.c.event_name, waits.c.match_path).distinct())
            expected: dict[str, set[str | None]] = {}
            for name, path in distinct:
                expected.setdefault(name, set()).add(path)
        assert found == expected == {
            "billing/upgraded": {"data.userId", "data.accountId", None},
            "user/login": {None},
            "user/logout": {"data.a.b"},
        }
        with writer.connect() as conn, conn.begin():
            wait_store.delete_for_runs(conn, ["r2000"])
            assert wait_store.paths(conn, ["billing/upgraded"]) == {
                "billing/upgraded": {"data.userId", "data.accountId"}}
    finally:
        writer.dispose()
        reader.dispose()
