"""The run queue: claims with leases (SKIP LOCKED on PostgreSQL), fencing, timers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import (
    String,
    and_,
    any_,
    bindparam,
    case,
    cast,
    func,
    or_,
    select,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from stepline_server.model import QueueItem, WaitKind
from stepline_server.store.hot import Hot
from stepline_server.store.records import NewQueueItem, QueueUpdate
from stepline_server.store.schema import queue

_ITEM_COLUMNS = (
    queue.c.run_id, queue.c.function_id, queue.c.attempt, queue.c.max_attempts,
    queue.c.lease, queue.c.lease_owner, queue.c.step_count, queue.c.wait_kind,
    queue.c.wait_step, queue.c.parent_run_id, queue.c.parent_step_id, queue.c.target_step_id,
    queue.c.traceparent, queue.c.held, queue.c.ckey1, queue.c.ckey2,
)


def _item(row: Any) -> QueueItem:
    return QueueItem(
        run_id=row.run_id, function_id=row.function_id, attempt=row.attempt,
        max_attempts=row.max_attempts, lease=row.lease, lease_owner=row.lease_owner,
        step_count=row.step_count,
        wait_kind=None if row.wait_kind is None else WaitKind(row.wait_kind),
        wait_step=row.wait_step, parent_run_id=row.parent_run_id,
        parent_step_id=row.parent_step_id, target_step_id=row.target_step_id,
        traceparent=row.traceparent, held=row.held, ckey1=row.ckey1, ckey2=row.ckey2)


_INSERT = Hot(queue.insert())


def enqueue(conn: Connection, items: list[NewQueueItem]) -> None:
    if items:
        _INSERT.execute_many(conn, [
            {"run_id": i.run_id, "target_step_id": i.target_step_id,
             "function_id": i.function_id, "due_at_ms": i.due_at_ms, "attempt": i.attempt,
             "max_attempts": i.max_attempts, "lease": i.lease, "lease_owner": i.lease_owner,
             "lease_until_ms": i.lease_until_ms, "step_count": i.step_count,
             "deadline_kind": i.deadline_kind, "deadline_ms": i.deadline_ms,
             "finish_timeout_ms": i.finish_timeout_ms, "parent_run_id": i.parent_run_id,
             "parent_step_id": i.parent_step_id, "traceparent": i.traceparent,
             "ckey1": i.ckey1, "ckey2": i.ckey2, "held": i.held, "held_key": i.held_key,
             "held_order_ms": i.held_order_ms}
            for i in items])


def _claimable(now_ms: Any) -> Any:
    return and_(
        queue.c.due_at_ms <= now_ms,
        or_(queue.c.lease_owner.is_(None), queue.c.lease_until_ms < now_ms),
    )


def _claim(where: Any) -> Hot:
    """Lease the items `where` picks."""
    return Hot(
        update(queue)
        .where(where)
        .values(lease=queue.c.lease + 1, lease_owner=bindparam("owner"),
                lease_until_ms=bindparam("until"),
                # The first dispatch ends the start timeout and arms the finish timeout.
                deadline_ms=case((queue.c.deadline_kind == "start",
                                  bindparam("now") + queue.c.finish_timeout_ms),
                                 else_=queue.c.deadline_ms),
                deadline_kind=case((queue.c.deadline_kind == "start", "finish"),
                                   else_=queue.c.deadline_kind))
        .returning(*_ITEM_COLUMNS, queue.c.due_at_ms))


# One statement: pick the oldest due items and lease them. SQLite holds the write lock: one
# ordered pass over ix_queue_claim.
_CLAIM_SQLITE = _claim(tuple_(queue.c.run_id, queue.c.target_step_id).in_(
    select(queue.c.run_id, queue.c.target_step_id)
    .where(queue.c.function_id.in_(bindparam("function_ids", expanding=True)),
           _claimable(bindparam("now")))
    .order_by(queue.c.due_at_ms)
    .limit(bindparam("limit"))))
# PostgreSQL: the oldest due items of each function, read in ix_queue_claim's order and
# stopping at `limit` (skipping rows other servers hold locked), then the oldest of those. The
# plan stays a short ordered index scan whatever the statistics say; planned as one scan for
# all functions, a stale estimate of many due rows chose a bitmap scan that read every dead
# index entry of the functions' recent items (3-4 ms a claim after 10,000 runs went to wait).
_FUNCTION_IDS = (func.unnest(cast(bindparam("function_ids"), postgresql.ARRAY(String)))
                 .table_valued("id").render_derived())
_DUE = (
    select(queue.c.run_id, queue.c.target_step_id, queue.c.due_at_ms)
    .where(queue.c.function_id == _FUNCTION_IDS.c.id, _claimable(bindparam("now")))
    .order_by(queue.c.due_at_ms)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
    .lateral()
)
_PICKED = (
    select(_DUE.c.run_id, _DUE.c.target_step_id)
    .select_from(_FUNCTION_IDS.join(_DUE, true()))
    .order_by(_DUE.c.due_at_ms)
    .limit(bindparam("limit"))
    .cte("picked")
)
# The picked items are then found by primary key, the run ids given as an array: planned as a
# join, an estimate of `limit` rows made PostgreSQL scan the whole queue to hash-join one row.
_CLAIM_POSTGRESQL = _claim(and_(
    queue.c.run_id == any_(func.array(select(_PICKED.c.run_id).scalar_subquery())),
    tuple_(queue.c.run_id, queue.c.target_step_id).in_(
        select(_PICKED.c.run_id, _PICKED.c.target_step_id))))


def claim(conn: Connection, owner: str, function_ids: list[str], limit: int, now_ms: int,
          lease_ms: int) -> list[QueueItem]:
    """Lease up to `limit` due items of these functions to `owner`, oldest due first; an item
    whose lease expired is taken over, its attempt unchanged."""
    if limit <= 0 or not function_ids:
        return []
    statement = _CLAIM_SQLITE if conn.dialect.name == "sqlite" else _CLAIM_POSTGRESQL
    rows = statement.rows(conn, {"function_ids": function_ids, "now": now_ms, "limit": limit,
                                 "owner": owner, "until": now_ms + lease_ms})
    return [replace(_item(row), due_at_ms=row.due_at_ms) for row in rows]


# Every step's transaction runs these (see hot.py).
_LOCK_MANY = Hot(
    select(*_ITEM_COLUMNS, queue.c.due_at_ms)
    .where(queue.c.run_id.in_(bindparam("run_ids", expanding=True)))
    .order_by(queue.c.run_id, queue.c.target_step_id)
    .with_for_update()
)
_UPDATE_MANY = Hot(
    update(queue)
    .where(queue.c.run_id == bindparam("b_run_id"),
           queue.c.target_step_id == bindparam("b_target_step_id"))
    .values(attempt=bindparam("attempt"), step_count=bindparam("step_count"),
            due_at_ms=bindparam("due_at_ms"), lease_owner=bindparam("lease_owner"),
            lease_until_ms=bindparam("lease_until_ms"), wait_kind=bindparam("wait_kind"),
            wait_step=bindparam("wait_step"))
)
_DELETE_MANY = Hot(
    queue.delete().where(queue.c.run_id.in_(bindparam("run_ids", expanding=True))))


def lock_many(conn: Connection, run_ids: list[str]
              ) -> dict[tuple[str, str], tuple[QueueItem, int]]:
    """Lock these runs' queue rows (the runs' own and their parallel steps', in a fixed order);
    return each item, by (run_id, target_step_id), with its due time."""
    rows = _LOCK_MANY.rows(conn, {"run_ids": run_ids})
    return {(row.run_id, row.target_step_id): (_item(row), row.due_at_ms) for row in rows}


def update_many(conn: Connection, updates: list[QueueUpdate]) -> None:
    if updates:
        _UPDATE_MANY.execute_many(conn, [
            {"b_run_id": u.run_id, "b_target_step_id": u.target_step_id, "attempt": u.attempt,
             "step_count": u.step_count, "due_at_ms": u.due_at_ms,
             "lease_owner": u.lease_owner, "lease_until_ms": u.lease_until_ms,
             "wait_kind": None if u.wait_kind is None else u.wait_kind.value,
             "wait_step": u.wait_step}
            for u in updates])


def delete_many(conn: Connection, run_ids: list[str]) -> None:
    """Drop these runs' items, parallel steps included."""
    if run_ids:
        _DELETE_MANY.execute(conn, {"run_ids": run_ids})


_DELETE_ITEM = Hot(queue.delete().where(
    queue.c.run_id == bindparam("b_run_id"),
    queue.c.target_step_id == bindparam("b_target_step_id")))


def delete_items(conn: Connection, keys: list[tuple[str, str]]) -> None:
    """Drop items by (run_id, target_step_id)."""
    if keys:
        _DELETE_ITEM.execute_many(conn, [{"b_run_id": r, "b_target_step_id": s}
                                         for r, s in keys])


_RESUME = Hot(
    update(queue)
    .where(queue.c.run_id == bindparam("b_run_id"), queue.c.target_step_id == "")
    .values(due_at_ms=bindparam("due_at_ms"), wait_kind=None, wait_step=None)
)


def resume_many(conn: Connection, run_ids: list[str], now_ms: int) -> None:
    """Suspended runs become ready now."""
    if run_ids:
        _RESUME.execute_many(conn, [{"b_run_id": r, "due_at_ms": now_ms} for r in run_ids])


_CLEAR_WAIT = Hot(update(queue).where(queue.c.run_id.in_(bindparam("run_ids", expanding=True)),
                                      queue.c.target_step_id == "")
                  .values(wait_kind=None, wait_step=None))


def clear_waits(conn: Connection, run_ids: list[str]) -> None:
    if run_ids:
        _CLEAR_WAIT.execute(conn, {"run_ids": run_ids})


_EXPIRED = (
    select(*_ITEM_COLUMNS, queue.c.deadline_kind)
    .where(queue.c.deadline_ms <= bindparam("now"))
    .order_by(queue.c.deadline_ms)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)


def expired(conn: Connection, now_ms: int, limit: int) -> list[tuple[QueueItem, str]]:
    """Items past their start or finish deadline, locked, with the deadline's kind."""
    rows = conn.execute(_EXPIRED, {"now": now_ms, "limit": limit})
    return [(_item(row), row.deadline_kind) for row in rows]


def next_deadline(conn: Connection) -> int | None:
    value = conn.execute(select(func.min(queue.c.deadline_ms))).scalar()
    return None if value is None else int(value)


def _held(owner: str, keys: list[tuple[str, str]]) -> Any:
    return and_(queue.c.lease_owner == owner,
                tuple_(queue.c.run_id, queue.c.target_step_id).in_(keys))


def extend(conn: Connection, owner: str, keys: list[tuple[str, str]], until_ms: int) -> None:
    """Renew `owner`'s leases of these items (by (run_id, target_step_id)); an item it no
    longer holds is left alone."""
    if keys:
        conn.execute(update(queue).where(_held(owner, keys)).values(lease_until_ms=until_ms))


def release(conn: Connection, owner: str, keys: list[tuple[str, str]] | None, *,
            attempts_used: int, lease: int | None = None) -> list[QueueItem]:
    """Give up `owner`'s leases of these items (None: of all its items) so other workers can
    take them at once, advancing their attempt by `attempts_used`; with `lease`, only an item
    still under that lease."""
    if keys is not None and not keys:
        return []
    condition = queue.c.lease_owner == owner if keys is None else _held(owner, keys)
    if lease is not None:
        condition = and_(condition, queue.c.lease == lease)
    values: dict[str, Any] = {"lease_owner": None, "lease_until_ms": None}
    if attempts_used:
        values["attempt"] = queue.c.attempt + attempts_used
    rows = conn.execute(update(queue).where(condition).values(**values)
                        .returning(*_ITEM_COLUMNS))
    return [_item(row) for row in rows]


def release_owners(conn: Connection, prefix: str) -> int:
    """Give up the leases of every owner whose id starts with `prefix` (one server's worker
    connections), their attempts unchanged."""
    result = conn.execute(
        update(queue).where(queue.c.lease_owner.startswith(prefix, autoescape=True))
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
    """Earliest due time of an unleased item of these functions (lease expiry is polled).
    One index probe per function: cheap however many runs sleep."""
    if not function_ids:
        return None
    probes = [
        select(queue.c.due_at_ms)
        .where(queue.c.function_id == function_id, queue.c.lease_owner.is_(None))
        .order_by(queue.c.due_at_ms).limit(1).subquery().select()
        for function_id in function_ids
    ]
    due = conn.execute(select(func.min(union_all(*probes).subquery().c.due_at_ms))).scalar()
    return None if due is None else int(due)


_BACKLOG = (
    select(queue.c.function_id, func.count().label("ready"),
           func.min(queue.c.due_at_ms).label("oldest_due_ms"))
    .where(_claimable(bindparam("now")))
    .group_by(queue.c.function_id)
)


def backlog(conn: Connection, now_ms: int) -> list[tuple[str, int, int]]:
    """(function, items ready to be claimed now, the oldest one's due time), per function with
    any (the queue depth metrics). One statement over the queue, which holds unfinished runs
    only; scrapes are cached by the caller."""
    return [(row.function_id, int(row.ready), int(row.oldest_due_ms))
            for row in conn.execute(_BACKLOG, {"now": now_ms})]


def set_step_count(conn: Connection, run_id: str, step_count: int) -> None:
    """A new run that starts with recorded steps (a rerun from a step): the next position."""
    conn.execute(update(queue).where(queue.c.run_id == run_id, queue.c.target_step_id == "")
                 .values(step_count=step_count))
