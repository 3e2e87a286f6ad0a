"""Paused functions and the starts they hold (engine/pauses.py decides)."""

from __future__ import annotations

from sqlalchemy import bindparam, delete, func, select, true, update
from sqlalchemy.engine import Connection

from stepline_server.controls import FunctionPause, PauseMode
from stepline_server.store import dialect
from stepline_server.store.hot import Hot
from stepline_server.store.schema import function_pauses, held_starts

# Every event that starts runs asks this of its subscribers: a primary-key lookup.
_PAUSED = Hot(
    select(function_pauses.c.function_id, function_pauses.c.mode)
    .where(function_pauses.c.function_id.in_(bindparam("function_ids", expanding=True)),
           function_pauses.c.mode.is_not(None)))
# A pause replaces the row: the count of skipped starts is since the latest pause.
_UPSERT = {
    name: dialect.insert_or_replace(name, function_pauses, replace_if=true())
    for name in ("sqlite", "postgresql")
}
# An event id sent again (after the dedup window) while its start is held is held once.
_HOLD = {
    name: dialect.insert_or_replace(name, held_starts, replace_if=true())
    for name in ("sqlite", "postgresql")
}


def paused(conn: Connection, function_ids: list[str]) -> dict[str, PauseMode]:
    """The paused ones among these functions, with their mode."""
    if not function_ids:
        return {}
    return {row.function_id: PauseMode(row.mode)
            for row in _PAUSED.rows(conn, {"function_ids": function_ids})}


def pause(conn: Connection, function_id: str, mode: PauseMode, now_ms: int) -> None:
    conn.execute(_UPSERT[conn.dialect.name], {"function_id": function_id, "mode": mode.value,
                                              "paused_at_ms": now_ms, "skipped": 0})


def resume(conn: Connection, function_id: str) -> bool:
    """False when the function was not paused."""
    return conn.execute(
        update(function_pauses)
        .where(function_pauses.c.function_id == function_id, function_pauses.c.mode.is_not(None))
        .values(mode=None, paused_at_ms=None)).rowcount == 1


def count_skipped(conn: Connection, counts: dict[str, int]) -> None:
    for function_id, skipped in sorted(counts.items()):
        conn.execute(update(function_pauses).where(function_pauses.c.function_id == function_id)
                     .values(skipped=function_pauses.c.skipped + skipped))


def hold(conn: Connection, pairs: list[tuple[str, str]], now_ms: int) -> None:
    """(function id, event id) starts to keep until the function is resumed."""
    if pairs:
        conn.execute(_HOLD[conn.dialect.name], [
            {"function_id": function_id, "event_id": event_id, "held_at_ms": now_ms}
            for function_id, event_id in pairs])


def get_many(conn: Connection, function_ids: list[str]) -> dict[str, FunctionPause]:
    """The pause rows of these functions (paused, or resumed with starts skipped before)."""
    if not function_ids:
        return {}
    held = {row.function_id: int(row.held) for row in conn.execute(
        select(held_starts.c.function_id, func.count().label("held"))
        .where(held_starts.c.function_id.in_(function_ids))
        .group_by(held_starts.c.function_id))}
    return {row.function_id: FunctionPause(
        function_id=row.function_id, mode=None if row.mode is None else PauseMode(row.mode),
        paused_at_ms=row.paused_at_ms, skipped=int(row.skipped),
        held=int(held.get(row.function_id, 0)))
        for row in conn.execute(select(function_pauses).where(
            function_pauses.c.function_id.in_(function_ids)))}


def resumed_with_held(conn: Connection) -> str | None:
    """A function resumed with starts still held (one lookup per row of function_pauses, a
    row per function ever paused: cheap to ask every poll)."""
    held = select(held_starts.c.event_id).where(
        held_starts.c.function_id == function_pauses.c.function_id)
    return conn.execute(
        select(function_pauses.c.function_id)
        .where(function_pauses.c.mode.is_(None), held.exists())
        .order_by(function_pauses.c.function_id).limit(1)).scalar()


def held_of(conn: Connection, function_id: str, limit: int) -> list[str]:
    """The event ids of a function's held starts, oldest first (ix_held_starts_function)."""
    return list(conn.execute(
        select(held_starts.c.event_id).where(held_starts.c.function_id == function_id)
        .order_by(held_starts.c.held_at_ms, held_starts.c.event_id).limit(limit)).scalars())


def take_held(conn: Connection, function_id: str, event_ids: list[str]) -> list[str]:
    """Delete these held starts; return the event ids this transaction deleted (on PostgreSQL a
    concurrent server's delete of the same rows waits, then deletes nothing)."""
    if not event_ids:
        return []
    rows = conn.execute(delete(held_starts).where(
        held_starts.c.function_id == function_id, held_starts.c.event_id.in_(event_ids))
        .returning(held_starts.c.event_id))
    return [row.event_id for row in rows]
