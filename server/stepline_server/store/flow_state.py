"""Flow control state rows (schema.flow_keys): taken under a row lock by the transactions that
start or claim work, so that two servers deciding on one key take turns (PostgreSQL; SQLite's
writer is one process's, its transactions are serial anyway)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from stepline_server.model import RunStatus
from stepline_server.store.schema import flow_keys, runs

_ENDED = [RunStatus.COMPLETED.value, RunStatus.FAILED.value, RunStatus.CANCELLED.value]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRow:
    kind: str
    key: str
    function_id: str | None
    value: str
    run_id: str | None
    tat_ms: int | None
    count: int
    first_ms: int | None
    expires_ms: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRef:
    """A row to lock: created (empty) when absent."""

    kind: str
    key: str
    function_id: str | None
    value: str


def _row(row: Any) -> KeyRow:
    return KeyRow(kind=row.kind, key=row.key, function_id=row.function_id, value=row.value,
                  run_id=row.run_id, tat_ms=row.tat_ms, count=row.count, first_ms=row.first_ms,
                  expires_ms=row.expires_ms)


def lock(conn: Connection, refs: Iterable[KeyRef]) -> dict[tuple[str, str], KeyRow]:
    """Lock these rows (creating the missing ones) in one fixed order, so that transactions
    locking several never deadlock; return them by (kind, key)."""
    wanted = sorted({(r.kind, r.key): r for r in refs}.values(), key=lambda r: (r.kind, r.key))
    locked: dict[tuple[str, str], KeyRow] = {}
    # PostgreSQL: a row the pruner deleted between the insert and the lock (an idle
    # concurrency key, flow_slots.prune_idle) is missing from the locked ones: create it again.
    for _ in range(5):
        if not wanted:
            break
        _create(conn, wanted)
        locked.update(_select_locked(conn, wanted))
        wanted = [r for r in wanted if (r.kind, r.key) not in locked]
    if wanted:
        raise RuntimeError(f"flow control rows deleted at every attempt to lock them: {wanted}")
    return locked


def _create(conn: Connection, refs: list[KeyRef]) -> None:
    insert: Any = (sqlite if conn.dialect.name == "sqlite" else postgresql).insert(flow_keys)
    conn.execute(insert.on_conflict_do_nothing(), [
        {"kind": r.kind, "key": r.key, "function_id": r.function_id, "value": r.value,
         "count": 0} for r in refs])


def _select_locked(conn: Connection, refs: list[KeyRef]) -> dict[tuple[str, str], KeyRow]:
    query = (select(flow_keys)
             .where(tuple_(flow_keys.c.kind, flow_keys.c.key).in_([(r.kind, r.key)
                                                                  for r in refs]))
             .order_by(flow_keys.c.kind, flow_keys.c.key))
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    return {(row.kind, row.key): _row(row) for row in conn.execute(query)}


def save(conn: Connection, kind: str, key: str, **values: Any) -> None:
    """Write columns of a row this transaction locked."""
    conn.execute(update(flow_keys)
                 .where(flow_keys.c.kind == kind, flow_keys.c.key == key).values(**values))


def delete(conn: Connection, keys: list[tuple[str, str]]) -> None:
    if keys:
        conn.execute(flow_keys.delete().where(
            tuple_(flow_keys.c.kind, flow_keys.c.key).in_(keys)))


def prune(conn: Connection, now_ms: int, limit: int) -> int:
    """Delete up to `limit` rows whose state no longer matters (expires_ms passed)."""
    expired = (select(flow_keys.c.kind, flow_keys.c.key)
               .where(flow_keys.c.expires_ms < now_ms).limit(limit))
    rows = [(r.kind, r.key) for r in conn.execute(expired)]
    if rows:
        conn.execute(flow_keys.delete().where(
            and_(tuple_(flow_keys.c.kind, flow_keys.c.key).in_(rows),
                 flow_keys.c.expires_ms < now_ms)))
    return len(rows)


def prune_runs_rows(conn: Connection, kind: str, set_before_ms: int, limit: int) -> int:
    """Delete up to `limit` rows of `kind` that name a run (singleton) once that run ended, or
    once it is gone (pruned) and the row was set before `set_before_ms` (first_ms). A start
    that names a new run in the row meanwhile is safe: its run is not visible to this
    statement as ended, and its first_ms is recent."""
    ended = exists().where(runs.c.id == flow_keys.c.run_id, runs.c.status.in_(_ENDED))
    gone = and_(~exists().where(runs.c.id == flow_keys.c.run_id),
                flow_keys.c.first_ms < set_before_ms)
    done = and_(flow_keys.c.kind == kind, flow_keys.c.run_id.is_not(None), or_(ended, gone))
    rows = [(r.kind, r.key) for r in conn.execute(
        select(flow_keys.c.kind, flow_keys.c.key).where(done).limit(limit))]
    if rows:
        conn.execute(flow_keys.delete().where(
            tuple_(flow_keys.c.kind, flow_keys.c.key).in_(rows), done))
    return len(rows)
