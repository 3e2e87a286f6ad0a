"""The run queue: claims with leases (SKIP LOCKED on PostgreSQL), fencing, timers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Connection

from stepline_server.model import QueueItem
from stepline_server.store.schema import queue

_ITEM_COLUMNS = (
    queue.c.run_id, queue.c.function_id, queue.c.attempt, queue.c.max_attempts,
    queue.c.lease, queue.c.lease_owner, queue.c.step_count,
)


def _item(row: Any) -> QueueItem:
    return QueueItem(row.run_id, row.function_id, row.attempt, row.max_attempts, row.lease,
                     row.lease_owner, row.step_count)


def enqueue(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        defaults = {"attempt": 0, "lease": 0, "lease_owner": None, "lease_until_ms": None,
                    "step_count": 0}
        conn.execute(queue.insert(), [defaults | row for row in rows])


def _claimable(now_ms: int) -> Any:
    return and_(
        queue.c.due_at_ms <= now_ms,
        or_(queue.c.lease_owner.is_(None), queue.c.lease_until_ms < now_ms),
    )


def claim(
    conn: Connection, owner: str, function_ids: list[str], limit: int, now_ms: int, lease_ms: int
) -> list[QueueItem]:
    """Lease up to `limit` due items of these functions to `owner`, oldest due first."""
    if limit <= 0 or not function_ids:
        return []
    candidates = (
        select(queue.c.run_id)
        .where(queue.c.function_id.in_(function_ids), _claimable(now_ms))
        .order_by(queue.c.due_at_ms)
        .limit(limit)
        .with_for_update(skip_locked=True)  # rendered on PostgreSQL; SQLite holds the write lock
    )
    run_ids = [row.run_id for row in conn.execute(candidates)]
    if not run_ids:
        return []
    rows = conn.execute(
        update(queue)
        .where(queue.c.run_id.in_(run_ids))
        .values(lease=queue.c.lease + 1, lease_owner=owner, lease_until_ms=now_ms + lease_ms)
        .returning(*_ITEM_COLUMNS)
    )
    return [_item(row) for row in rows]


def lease_directly(
    conn: Connection, owner: str, run_ids: list[str], now_ms: int, lease_ms: int
) -> None:
    """Lease freshly enqueued items to a worker at once (they are new: nobody else sees them)."""
    conn.execute(
        update(queue)
        .where(queue.c.run_id.in_(run_ids))
        .values(lease=1, lease_owner=owner, lease_until_ms=now_ms + lease_ms)
    )


def lock(conn: Connection, run_id: str) -> QueueItem | None:
    row = conn.execute(
        select(*_ITEM_COLUMNS).where(queue.c.run_id == run_id).with_for_update()
    ).first()
    return None if row is None else _item(row)


def set_values(conn: Connection, run_id: str, **values: Any) -> None:
    conn.execute(update(queue).where(queue.c.run_id == run_id).values(**values))


def delete(conn: Connection, run_id: str) -> None:
    conn.execute(queue.delete().where(queue.c.run_id == run_id))


def extend(conn: Connection, owner: str, until_ms: int) -> int:
    result = conn.execute(
        update(queue).where(queue.c.lease_owner == owner).values(lease_until_ms=until_ms)
    )
    return int(result.rowcount)


def release(conn: Connection, owner: str, run_ids: list[str] | None = None) -> int:
    """Give up leases so other workers can take the items at once."""
    condition = queue.c.lease_owner == owner
    if run_ids is not None:
        condition = and_(condition, queue.c.run_id.in_(run_ids))
    result = conn.execute(
        update(queue).where(condition).values(lease_owner=None, lease_until_ms=None)
    )
    return int(result.rowcount)


def release_owners_like(conn: Connection, prefix: str) -> int:
    result = conn.execute(
        update(queue).where(queue.c.lease_owner.like(f"{prefix}%"))
        .values(lease_owner=None, lease_until_ms=None)
    )
    return int(result.rowcount)


def release_all(conn: Connection) -> int:
    result = conn.execute(
        update(queue).where(queue.c.lease_owner.is_not(None))
        .values(lease_owner=None, lease_until_ms=None)
    )
    return int(result.rowcount)


def next_due(conn: Connection, function_ids: list[str]) -> int | None:
    """Earliest due time of an unleased item of these functions (lease expiry is polled)."""
    if not function_ids:
        return None
    due = conn.execute(
        select(func.min(queue.c.due_at_ms)).where(
            queue.c.function_id.in_(function_ids), queue.c.lease_owner.is_(None))
    ).scalar()
    return None if due is None else int(due)
