"""Event rows: idempotent inserts within the dedup window."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, exists, select, update
from sqlalchemy.engine import Connection

from stepline_server.ids import new_id
from stepline_server.limits import MAX_ID_LENGTH
from stepline_server.model import EventRecord
from stepline_server.store import dialect
from stepline_server.store.hot import Hot
from stepline_server.store.paging import encode_cursor, past
from stepline_server.store.schema import events, runs, waits

# One statement per batch: a new id is inserted; a known id is replaced only when it was
# received before the dedup window (the id may then be used again) and no run refers to it;
# either way its id comes back. An id inside the window returns nothing; so does an id past it
# that runs refer to: that row is moved aside (_move_aside) and the event inserted again.
_UPSERT = {
    name: dialect.insert_or_replace(
        name, events, replace_if=(events.c.received_at_ms <= bindparam("b_cutoff_ms"))
        & ~exists().where(runs.c.event_id == events.c.id))
    for name in ("sqlite", "postgresql")
}
_UPSERT_ONE = {name: Hot(stmt) for name, stmt in _UPSERT.items()}


def insert(
    conn: Connection, records: list[EventRecord], now_ms: int, dedup_ms: int
) -> list[bool]:
    """Store events; return, per event, whether it is new (False: a repeat inside the window)."""
    first: dict[str, dict[str, Any]] = {}  # a repeat within the batch counts as seen
    cutoff = now_ms - dedup_ms
    for record in records:
        if record.id not in first:
            first[record.id] = {
                "id": record.id, "name": record.name, "data": record.data,
                "user": record.user, "ts_ms": record.ts_ms, "received_at_ms": now_ms,
                "traceparent": record.traceparent, "b_cutoff_ms": cutoff,
            }
    rows = list(first.values())
    stored = _upsert(conn, rows)
    moved = _move_aside(conn, [row["id"] for row in rows if row["id"] not in stored], cutoff)
    if moved:
        stored |= _upsert(conn, [first[event_id] for event_id in moved])
    fresh: list[bool] = []
    for record in records:
        fresh.append(record.id in stored)
        stored.discard(record.id)
    return fresh


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
    if len(rows) == 1:  # the usual send: one event
        return {row.id for row in _UPSERT_ONE[conn.dialect.name].rows(conn, rows[0])}
    # SQLAlchemy's multi-row INSERT … RETURNING
    return {row.id for row in conn.execute(_UPSERT[conn.dialect.name], rows)}


def _move_aside(conn: Connection, ids: list[str], cutoff_ms: int) -> list[str]:
    """Of events not stored, those received before the window (so runs refer to them): give
    each old row an id of its own, `<id>~<received_at_ms>`, and point its runs and waits at it,
    so a run always reads its own trigger. Returns the ids freed. The rows move rather than the
    new event, so the id keeps deduplicating against its latest use with one key lookup."""
    if not ids:
        return []
    old = conn.execute(select(events.c.id, events.c.received_at_ms).where(
        events.c.id.in_(ids), events.c.received_at_ms <= cutoff_ms)).all()
    freed = []
    for row in old:
        new_id = _aside_id(conn, row.id, row.received_at_ms)
        # PostgreSQL: a replica moving the same row first leaves nothing to move here, and the
        # event is then a repeat of the one it stored.
        if conn.execute(update(events).where(events.c.id == row.id,
                                             events.c.received_at_ms == row.received_at_ms)
                        .values(id=new_id)).rowcount:
            referring = select(runs.c.id).where(runs.c.event_id == row.id)
            conn.execute(update(waits).where(waits.c.run_id.in_(referring))
                         .values(trigger_event_id=new_id))
            conn.execute(update(runs).where(runs.c.event_id == row.id).values(event_id=new_id))
            freed.append(row.id)
    return freed


def _aside_id(conn: Connection, event_id: str, received_at_ms: int) -> str:
    suffix = f"~{received_at_ms}"
    candidate = event_id[:MAX_ID_LENGTH - len(suffix)] + suffix
    taken = conn.execute(select(events.c.id).where(events.c.id == candidate)).first()
    if taken is None:
        return candidate
    # An id clipped to fit, or a client's own id of that form: a random one instead.
    suffix = f"~{new_id()}"
    return event_id[:MAX_ID_LENGTH - len(suffix)] + suffix


def row_to_event(row: Any) -> EventRecord:
    return EventRecord(id=row.id, name=row.name, data=row.data, ts_ms=row.ts_ms, user=row.user,
                       traceparent=row.traceparent)


_GET_MANY = Hot(select(events).where(events.c.id.in_(bindparam("ids", expanding=True))))


def get_many(conn: Connection, ids: list[str]) -> list[EventRecord]:
    return [row_to_event(row) for row in _GET_MANY.rows(conn, {"ids": ids})]


def list_(conn: Connection, *, name: str | None, limit: int, cursor: tuple[int, str] | None
          ) -> tuple[list[tuple[EventRecord, int]], str]:
    """Events with their time received, newest first (on ix_events_name or
    ix_events_received_at); returns the page and the token of the next one ('' at the end)."""
    query = select(events)
    if name:
        query = query.where(events.c.name == name)
    if cursor is not None:
        query = query.where(past(cursor, events.c.received_at_ms, events.c.id,
                                 newest_first=True))
    query = query.order_by(events.c.received_at_ms.desc(), events.c.id.desc()).limit(limit + 1)
    rows = conn.execute(query).all()
    page = [(row_to_event(row), int(row.received_at_ms)) for row in rows[:limit]]
    token = encode_cursor(page[-1][1], page[-1][0].id) if len(rows) > limit else ""
    return page, token
