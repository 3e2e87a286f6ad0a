"""Event rows: idempotent inserts within the dedup window."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from stepline_server.model import EventRecord
from stepline_server.store.schema import events

_SEEN = select(events.c.id, events.c.received_at_ms).where(
    events.c.id.in_(bindparam("ids", expanding=True)))
_INSERT = events.insert()


def insert(
    conn: Connection, records: list[EventRecord], now_ms: int, dedup_ms: int
) -> list[bool]:
    """Store events; return, per event, whether it is new (False: a repeat inside the window)."""
    ids = list({r.id for r in records})
    seen = {
        row.id: row.received_at_ms
        for row in conn.execute(_SEEN, {"ids": ids})
    }
    fresh: list[bool] = []
    inserts: list[dict[str, Any]] = []
    for record in records:
        values: dict[str, Any] = {
            "id": record.id,
            "name": record.name,
            "data": record.data,
            "user": record.user,
            "ts_ms": record.ts_ms,
            "received_at_ms": now_ms,
            "traceparent": record.traceparent,
        }
        received = seen.get(record.id)
        if received is not None and received > now_ms - dedup_ms:
            fresh.append(False)
            continue
        if received is not None:  # outside the window: the id may be used again
            conn.execute(update(events).where(events.c.id == record.id).values(values))
        else:
            inserts.append(values)
        seen[record.id] = now_ms
        fresh.append(True)
    if inserts:
        conn.execute(_INSERT, inserts)
    return fresh


def row_to_event(row: object) -> EventRecord:
    r = row._mapping  # type: ignore[attr-defined]
    return EventRecord(
        id=r["id"],
        name=r["name"],
        data=r["data"],
        ts_ms=r["ts_ms"],
        user=r["user"],
        traceparent=r["traceparent"],
    )
