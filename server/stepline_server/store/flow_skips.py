"""Events that started no run of a function because of its flow control (schema.flow_skips):
recorded by the start that skipped them, listed newest first, pruned past the retention."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, literal, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from stepline_server.model import FlowSkip
from stepline_server.store.paging import encode_cursor, past
from stepline_server.store.schema import flow_skips

# Ties in time are ordered by event then function: one text column for the page cursor.
_SEPARATOR = "\x1f"
_ROW_ID = flow_skips.c.event_id + literal(_SEPARATOR) + flow_skips.c.function_id


def record(conn: Connection, *, function_id: str, event_id: str, reason: str, key: str,
           skipped_at_ms: int) -> None:
    """One skip (an event id repeated for the same function is kept once)."""
    insert: Any = (sqlite if conn.dialect.name == "sqlite" else postgresql).insert(flow_skips)
    conn.execute(insert.on_conflict_do_nothing(), {
        "function_id": function_id, "event_id": event_id, "reason": reason, "key": key,
        "skipped_at_ms": skipped_at_ms})


def reason_of(conn: Connection, event_id: str, function_id: str) -> tuple[str, str]:
    """(reason, key value) of the event's skip by the function."""
    row = conn.execute(select(flow_skips.c.reason, flow_skips.c.key).where(
        flow_skips.c.event_id == event_id, flow_skips.c.function_id == function_id)).one()
    return row.reason, row.key


def list_(conn: Connection, *, function_id: str | None, limit: int,
          cursor: tuple[int, str] | None) -> tuple[list[FlowSkip], str]:
    """Skips newest first (of one function on ix_flow_skips_function, else on
    ix_flow_skips_time); the page and the next page's token ('' at the end)."""
    query = select(flow_skips)
    if function_id is not None:
        query = query.where(flow_skips.c.function_id == function_id)
    if cursor is not None:
        query = query.where(past(cursor, flow_skips.c.skipped_at_ms, _ROW_ID,
                                 newest_first=True))
    query = query.order_by(flow_skips.c.skipped_at_ms.desc(), _ROW_ID.desc()).limit(limit + 1)
    rows = conn.execute(query).all()
    page = [FlowSkip(function_id=r.function_id, event_id=r.event_id, reason=r.reason,
                     key=r.key, skipped_at_ms=r.skipped_at_ms) for r in rows[:limit]]
    token = ""
    if len(rows) > limit:
        last = page[-1]
        token = encode_cursor(last.skipped_at_ms,
                              last.event_id + _SEPARATOR + last.function_id)
    return page, token


def count(conn: Connection, function_id: str) -> int:
    """The function's skips still stored (within the retention)."""
    query = select(func.count()).select_from(flow_skips).where(
        flow_skips.c.function_id == function_id)
    return int(conn.execute(query).scalar_one())


def prune(conn: Connection, cutoff_ms: int, limit: int) -> int:
    """Delete up to `limit` skips older than `cutoff_ms` (on ix_flow_skips_time)."""
    old = (select(flow_skips.c.function_id, flow_skips.c.event_id)
           .where(flow_skips.c.skipped_at_ms < cutoff_ms).limit(limit))
    keys = [(r.function_id, r.event_id) for r in conn.execute(old)]
    if keys:
        conn.execute(flow_skips.delete().where(and_(
            tuple_(flow_skips.c.function_id, flow_skips.c.event_id).in_(keys),
            flow_skips.c.skipped_at_ms < cutoff_ms)))
    return len(keys)
