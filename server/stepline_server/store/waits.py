"""Pending waits for events (step.wait_for_event, cancel_on), looked up by event name and key."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete, or_, select, text
from sqlalchemy.engine import Connection

from stepline_server.store.hot import Hot
from stepline_server.store.records import NewWait
from stepline_server.store.schema import waits

_INSERT = Hot(waits.insert())
# The distinct key paths of one event name's waits, found by hopping along ix_waits_paths from
# one path to the next (a loose index scan): a probe per distinct path, however many waits
# share them. SELECT DISTINCT would read every wait of the name for every event.
_PATHS = Hot(text("""
WITH RECURSIVE found(path) AS (
    SELECT min(match_path) FROM waits WHERE event_name = :name
    UNION ALL
    SELECT (SELECT min(w.match_path) FROM waits AS w
            WHERE w.event_name = :name AND w.match_path > found.path)
    FROM found WHERE found.path IS NOT NULL
)
SELECT path FROM found WHERE path IS NOT NULL
UNION ALL
SELECT NULL WHERE EXISTS (SELECT 1 FROM waits WHERE event_name = :name AND match_path IS NULL)
"""))
_DELETE_FOR_RUNS = Hot(
    delete(waits).where(waits.c.run_id.in_(bindparam("run_ids", expanding=True))))


def insert(conn: Connection, new: list[NewWait]) -> None:
    if new:
        _INSERT.execute_many(conn, [
            {"run_id": w.run_id, "step_id": w.step_id, "kind": w.kind.value,
             "event_name": w.event_name, "expression": w.expression,
             "match_path": w.match_path, "match_key": w.match_key,
             "trigger_event_id": w.trigger_event_id, "expires_at_ms": w.expires_at_ms,
             "created_at_ms": w.created_at_ms}
            for w in new])


def paths(conn: Connection, names: list[str]) -> dict[str, set[str | None]]:
    """For each event name with pending waits: the key paths they use (None: not keyed)."""
    found: dict[str, set[str | None]] = {}
    for name in names:
        paths = {row[0] for row in _PATHS.rows(conn, {"name": name})}
        if paths:
            found[name] = paths
    return found


def _candidates(match: Any) -> Hot:
    return Hot(
        select(waits)
        .where(waits.c.event_name == bindparam("name"), match,
               or_(waits.c.expires_at_ms.is_(None), waits.c.expires_at_ms > bindparam("now")))
        .order_by(waits.c.created_at_ms, waits.c.run_id, waits.c.step_id))


# By (keyed, unkeyed): each an index lookup on ix_waits_keys.
_CANDIDATES = {
    (True, False): _candidates(waits.c.match_key.in_(bindparam("keys", expanding=True))),
    (False, True): _candidates(waits.c.match_key.is_(None)),
    (True, True): _candidates(or_(waits.c.match_key.in_(bindparam("keys", expanding=True)),
                                  waits.c.match_key.is_(None))),
}


def candidates(conn: Connection, name: str, keys: list[str], unkeyed: bool, now_ms: int
               ) -> list[Any]:
    """Unexpired waits for `name` whose key is one of `keys` (and unkeyed ones if asked),
    oldest first."""
    if not keys and not unkeyed:
        return []
    return _CANDIDATES[bool(keys), unkeyed].rows(
        conn, {"name": name, "keys": keys, "now": now_ms})


_DELETE = Hot(delete(waits).where(waits.c.run_id == bindparam("b_run_id"),
                                  waits.c.step_id == bindparam("b_step_id")))


def delete_many(conn: Connection, keys: list[tuple[str, str]]) -> None:
    """Delete waits by (run_id, step_id)."""
    if keys:
        _DELETE.execute_many(conn, [{"b_run_id": run_id, "b_step_id": step_id}
                                    for run_id, step_id in keys])


def delete_for_runs(conn: Connection, run_ids: list[str]) -> None:
    if run_ids:
        _DELETE_FOR_RUNS.execute(conn, {"run_ids": run_ids})
