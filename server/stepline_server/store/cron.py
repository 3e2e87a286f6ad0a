"""Cron schedule rows: one per cron trigger, with its next tick. Times are computed by the engine
(engine/cron.py); here only the SQL, every lookup on an index."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, delete, func, select, true, update
from sqlalchemy.engine import Connection

from stepline_server.store import dialect
from stepline_server.store.schema import cron_schedules, functions


@dataclass(frozen=True, slots=True)
class Schedule:
    function_id: str
    position: int
    schedule: str
    timezone: str
    next_tick_ms: int


@dataclass(frozen=True, slots=True)
class DueSchedule:
    """A schedule whose next tick has come, with what starting its function needs."""

    function_id: str
    position: int
    schedule: str
    timezone: str
    next_tick_ms: int
    config: str
    archived: bool


_OF_FUNCTIONS = (
    select(cron_schedules)
    .where(cron_schedules.c.function_id.in_(bindparam("function_ids", expanding=True)))
)
# Registrations through two servers at once may both write a schedule: the last one wins.
_UPSERT = {name: dialect.insert_or_replace(name, cron_schedules, replace_if=true())
           for name in ("sqlite", "postgresql")}
_DELETE_ONE = delete(cron_schedules).where(
    cron_schedules.c.function_id == bindparam("b_function_id"),
    cron_schedules.c.position == bindparam("b_position"))
_DELETE_OF_FUNCTIONS = delete(cron_schedules).where(
    cron_schedules.c.function_id.in_(bindparam("function_ids", expanding=True)))
# The oldest due rows, locked; rows another server is firing are skipped (PostgreSQL: only the
# schedule rows are locked, not the functions; SQLite holds the write lock anyway).
_DUE = (
    select(cron_schedules.c.function_id, cron_schedules.c.position, cron_schedules.c.schedule,
           cron_schedules.c.timezone, cron_schedules.c.next_tick_ms, functions.c.config,
           functions.c.archived)
    .join(functions, functions.c.id == cron_schedules.c.function_id)
    .where(cron_schedules.c.next_tick_ms <= bindparam("now"))
    .order_by(cron_schedules.c.next_tick_ms)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True, of=cron_schedules)
)
_ADVANCE = (
    update(cron_schedules)
    .where(cron_schedules.c.function_id == bindparam("b_function_id"),
           cron_schedules.c.position == bindparam("b_position"))
    .values(next_tick_ms=bindparam("next_tick_ms"))
)
_NEXT_TICK = select(func.min(cron_schedules.c.next_tick_ms))


def of_functions(conn: Connection, function_ids: list[str]) -> list[Schedule]:
    if not function_ids:
        return []
    rows = conn.execute(_OF_FUNCTIONS, {"function_ids": function_ids})
    return [Schedule(r.function_id, r.position, r.schedule, r.timezone, r.next_tick_ms)
            for r in rows]


def upsert(conn: Connection, schedules: list[Schedule]) -> None:
    """Insert these rows, replacing those with the same (function_id, position)."""
    if schedules:
        conn.execute(_UPSERT[conn.dialect.name], [
            {"function_id": s.function_id, "position": s.position, "schedule": s.schedule,
             "timezone": s.timezone, "next_tick_ms": s.next_tick_ms} for s in schedules])


def delete_many(conn: Connection, keys: list[tuple[str, int]]) -> None:
    """Delete the rows with these (function_id, position) keys."""
    if keys:
        conn.execute(_DELETE_ONE, [{"b_function_id": f, "b_position": p} for f, p in keys])


def delete_of_functions(conn: Connection, function_ids: list[str]) -> None:
    if function_ids:
        conn.execute(_DELETE_OF_FUNCTIONS, {"function_ids": function_ids})


def due(conn: Connection, now_ms: int, limit: int) -> list[DueSchedule]:
    """Up to `limit` rows whose next tick is at or before now, earliest first, locked."""
    rows = conn.execute(_DUE, {"now": now_ms, "limit": limit})
    return [DueSchedule(r.function_id, r.position, r.schedule, r.timezone, r.next_tick_ms,
                        r.config, bool(r.archived)) for r in rows]


def advance(conn: Connection, next_ticks: dict[tuple[str, int], int]) -> None:
    """Set the next tick of these (function_id, position) rows."""
    if next_ticks:
        conn.execute(_ADVANCE, [{"b_function_id": f, "b_position": p, "next_tick_ms": t}
                                for (f, p), t in next_ticks.items()])


def next_tick(conn: Connection) -> int | None:
    """The earliest next tick of all schedules (one index lookup)."""
    value = conn.execute(_NEXT_TICK).scalar()
    return None if value is None else int(value)
