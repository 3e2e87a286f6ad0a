"""Pending waits for events (step.wait_for_event, cancel_on), looked up by event name and key."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete, or_, select, tuple_
from sqlalchemy.engine import Connection

from stepline_server.store.hot import Hot
from stepline_server.store.schema import waits

_INSERT = Hot(waits.insert())
_PATHS = Hot(
    select(waits.c.event_name, waits.c.match_path).distinct()
    .where(waits.c.event_name.in_(bindparam("names", expanding=True)))
)
_DELETE_FOR_RUNS = Hot(
    delete(waits).where(waits.c.run_id.in_(bindparam("run_ids", expanding=True))))


def insert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        _INSERT.execute_many(conn, rows)


def paths(conn: Connection, names: list[str]) -> dict[str, set[str | None]]:
    """For each event name with pending waits: the key paths they use (None: not keyed)."""
    found: dict[str, set[str | None]] = {}
    for row in _PATHS.rows(conn, {"names": names}):
        found.setdefault(row.event_name, set()).add(row.match_path)
    return found


def candidates(conn: Connection, name: str, keys: list[str], unkeyed: bool, now_ms: int
               ) -> list[Any]:
    """Unexpired waits for `name` whose key is one of `keys` (and unkeyed ones if asked),
    oldest first."""
    conditions = []
    if keys:
        conditions.append(waits.c.match_key.in_(keys))
    if unkeyed:
        conditions.append(waits.c.match_key.is_(None))
    if not conditions:
        return []
    query = (
        select(waits)
        .where(waits.c.event_name == name, or_(*conditions),
               or_(waits.c.expires_at_ms.is_(None), waits.c.expires_at_ms > now_ms))
        .order_by(waits.c.created_at_ms, waits.c.run_id, waits.c.step_id)
    )
    return list(conn.execute(query))


def delete_many(conn: Connection, keys: list[tuple[str, str]]) -> None:
    """Delete waits by (run_id, step_id)."""
    if keys:
        conn.execute(delete(waits).where(tuple_(waits.c.run_id, waits.c.step_id).in_(keys)))


def delete_for_runs(conn: Connection, run_ids: list[str]) -> None:
    if run_ids:
        _DELETE_FOR_RUNS.execute(conn, {"run_ids": run_ids})
