"""Bulk operation rows: created, leased to one server at a time, advanced batch by batch (cursor
and counts with the batch's own writes), stopped; and the runs a selection scans."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from stepline_server.controls import BulkKind, BulkOperation, BulkState, Selection
from stepline_server.model import RunStatus
from stepline_server.store.paging import encode_cursor, past
from stepline_server.store.schema import bulk_operation_runs, bulk_operations, runs


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A run a selection scans, before its CEL filter."""

    run_id: str
    created_at_ms: int
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """What one batch did: its last run examined, and the counts to add."""

    cursor: tuple[int, str] | None
    done: int
    applied: int
    finished: bool


def create(conn: Connection, operation: BulkOperation) -> None:
    s = operation.selection
    conn.execute(insert(bulk_operations).values(
        id=operation.id, kind=operation.kind.value, function_id=s.function_id,
        statuses=json.dumps([status.value for status in s.statuses]),
        created_after_ms=s.created_after_ms, created_before_ms=s.created_before_ms,
        expression=s.expression, max_runs=operation.max_runs, reason=operation.reason,
        state=operation.state.value, total=operation.total, done=0, applied=0,
        created_at_ms=operation.created_at_ms, updated_at_ms=operation.updated_at_ms))


def _record(row: Any) -> BulkOperation:
    cursor = (None if row.cursor_run_id is None
              else (int(row.cursor_created_ms), str(row.cursor_run_id)))
    return BulkOperation(
        id=row.id, kind=BulkKind(row.kind), selection=Selection(
            function_id=row.function_id,
            statuses=tuple(RunStatus(s) for s in json.loads(row.statuses)),
            created_after_ms=row.created_after_ms, created_before_ms=row.created_before_ms,
            expression=row.expression),
        max_runs=row.max_runs, reason=row.reason, state=BulkState(row.state),
        total=row.total, done=row.done, applied=row.applied, created_at_ms=row.created_at_ms,
        updated_at_ms=row.updated_at_ms, ended_at_ms=row.ended_at_ms, cursor=cursor)


def get(conn: Connection, operation_id: str) -> BulkOperation | None:
    row = conn.execute(select(bulk_operations).where(
        bulk_operations.c.id == operation_id)).first()
    return None if row is None else _record(row)


def list_(conn: Connection, *, limit: int, cursor: tuple[int, str] | None
          ) -> tuple[list[BulkOperation], str]:
    """Newest first; and the next page's token ('' at the end)."""
    query = select(bulk_operations)
    if cursor is not None:
        query = query.where(past(cursor, bulk_operations.c.created_at_ms, bulk_operations.c.id,
                                 newest_first=True))
    rows = conn.execute(query.order_by(bulk_operations.c.created_at_ms.desc(),
                                       bulk_operations.c.id.desc()).limit(limit + 1)).all()
    page = [_record(row) for row in rows[:limit]]
    token = encode_cursor(page[-1].created_at_ms, page[-1].id) if len(rows) > limit else ""
    return page, token


def workable(conn: Connection, owner: str, now_ms: int) -> str | None:
    """The oldest running operation `owner` may take: unleased, its own, or its lease run out."""
    op = bulk_operations.c
    return conn.execute(
        select(op.id).where(op.state == BulkState.RUNNING.value, or_(
            op.lease_owner.is_(None), op.lease_owner == owner, op.lease_until_ms < now_ms))
        .order_by(op.created_at_ms, op.id).limit(1)).scalar()


def take(conn: Connection, operation_id: str, owner: str, now_ms: int, lease_until_ms: int
         ) -> BulkOperation | None:
    """Lease the operation to `owner` for this batch (and beyond, until `lease_until_ms`) if it
    is still running and free or already `owner`'s; None otherwise. On PostgreSQL the row stays
    locked until the batch commits: another server's batch waits, then finds it taken."""
    op = bulk_operations.c
    taken = conn.execute(
        update(bulk_operations)
        .where(op.id == operation_id, op.state == BulkState.RUNNING.value, or_(
            op.lease_owner.is_(None), op.lease_owner == owner, op.lease_until_ms < now_ms))
        .values(lease_owner=owner, lease_until_ms=lease_until_ms)).rowcount
    return get(conn, operation_id) if taken == 1 else None


def advance(conn: Connection, operation: BulkOperation, progress: Progress, now_ms: int) -> None:
    """Commit a batch's cursor and counts (in the batch's transaction)."""
    values: dict[str, Any] = {
        "done": operation.done + progress.done, "applied": operation.applied + progress.applied,
        "updated_at_ms": now_ms}
    if progress.cursor is not None:
        values["cursor_created_ms"], values["cursor_run_id"] = progress.cursor
    if progress.finished:
        values.update(state=BulkState.DONE.value, ended_at_ms=now_ms, lease_owner=None,
                      lease_until_ms=None)
    conn.execute(update(bulk_operations).where(bulk_operations.c.id == operation.id)
                 .values(**values))


def stop(conn: Connection, operation_id: str, now_ms: int) -> bool:
    """Stop a running operation; False when it is not running (or unknown)."""
    op = bulk_operations.c
    return conn.execute(
        update(bulk_operations)
        .where(op.id == operation_id, op.state == BulkState.RUNNING.value)
        .values(state=BulkState.STOPPED.value, ended_at_ms=now_ms, updated_at_ms=now_ms,
                lease_owner=None, lease_until_ms=None)).rowcount == 1


def release(conn: Connection, owner: str) -> None:
    """Give up `owner`'s leases (a server shutting down): another server may go on at once."""
    conn.execute(update(bulk_operations).where(bulk_operations.c.lease_owner == owner)
                 .values(lease_owner=None, lease_until_ms=None))


# -- the runs a selection scans -----------------------------------------------------------------
def candidates(conn: Connection, selection: Selection, after: tuple[int, str] | None,
               limit: int) -> list[Candidate]:
    """The next `limit` runs of the selection (its CEL filter aside) after `after`, oldest
    first, through ix_runs_function_created."""
    query = select(runs.c.id, runs.c.created_at_ms, runs.c.event_id).where(
        runs.c.function_id == selection.function_id,
        runs.c.created_at_ms < selection.created_before_ms,
        runs.c.status.in_([status.value for status in selection.statuses]))
    if selection.created_after_ms is not None:
        query = query.where(runs.c.created_at_ms >= selection.created_after_ms)
    if after is not None:
        query = query.where(past(after, runs.c.created_at_ms, runs.c.id, newest_first=False))
    query = query.order_by(runs.c.created_at_ms, runs.c.id).limit(limit)
    return [Candidate(run_id=row.id, created_at_ms=row.created_at_ms, event_id=row.event_id)
            for row in conn.execute(query)]


def count(conn: Connection, selection: Selection) -> int:
    """Runs of the selection, its CEL filter aside (one indexed count)."""
    query = select(func.count()).select_from(runs).where(
        runs.c.function_id == selection.function_id,
        runs.c.created_at_ms < selection.created_before_ms,
        runs.c.status.in_([status.value for status in selection.statuses]))
    if selection.created_after_ms is not None:
        query = query.where(runs.c.created_at_ms >= selection.created_after_ms)
    return int(conn.execute(query).scalar() or 0)


# -- replays made by an operation ---------------------------------------------------------------
_REPLAYED = select(bulk_operation_runs.c.run_id).where(
    bulk_operation_runs.c.operation_id == bindparam("operation_id"),
    bulk_operation_runs.c.run_id.in_(bindparam("run_ids", expanding=True)))


def replayed(conn: Connection, operation_id: str, run_ids: list[str]) -> set[str]:
    """Which of these sources the operation has replayed already."""
    if not run_ids:
        return set()
    return {row.run_id for row in conn.execute(
        _REPLAYED, {"operation_id": operation_id, "run_ids": run_ids})}


def record_replays(conn: Connection, operation_id: str, pairs: list[tuple[str, str]]) -> None:
    """(source run, new run) pairs; a source recorded twice raises IntegrityError."""
    if pairs:
        conn.execute(insert(bulk_operation_runs), [
            {"operation_id": operation_id, "run_id": source, "new_run_id": new}
            for source, new in pairs])
