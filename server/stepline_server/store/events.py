"""Event rows: idempotent inserts within the dedup window."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from stepline_server.model import EventRecord
from stepline_server.store import dialect
from stepline_server.store.hot import Hot
from stepline_server.store.paging import encode_cursor, past
from stepline_server.store.schema import events

# One statement per batch: a new id is inserted; a known id is replaced only when it was
# received before the dedup window (the id may then be used again); either way its id comes
# back. An id inside the window returns nothing.
_UPSERT = {
    name: dialect.insert_or_replace(
        name, events, replace_if=events.c.received_at_ms <= bindparam("b_cutoff_ms"))
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
    if len(rows) == 1:  # the usual send: one event
        stored = {row.id for row in _UPSERT_ONE[conn.dialect.name].rows(conn, rows[0])}
    else:  # SQLAlchemy's multi-row INSERT … RETURNING
        stored = {row.id for row in conn.execute(_UPSERT[conn.dialect.name], rows)}
    fresh: list[bool] = []
    for record in records:
        fresh.append(record.id in stored)
        stored.discard(record.id)
    return fresh


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
