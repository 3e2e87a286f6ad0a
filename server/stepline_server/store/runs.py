"""Run and step rows: creation, results written once, history queries."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, case, func, select, update
from sqlalchemy.engine import Connection

from stepline_server.model import (
    ErrorInfo,
    EventRecord,
    FunctionStats,
    MemoStep,
    RunRecord,
    RunStatus,
    StepFailure,
    StepKind,
    StepRecord,
    StepStatus,
)
from stepline_server.store import dialect
from stepline_server.store.events import row_to_event
from stepline_server.store.hot import Hot
from stepline_server.store.paging import encode_cursor, past
from stepline_server.store.records import (
    FailedAttempt,
    NewRun,
    NewStep,
    PendingStepEnd,
    RunFinish,
    error_json,
)
from stepline_server.store.schema import events, queue, run_events, runs, step_failures, steps

_INSERT_RUNS = Hot(runs.insert())
# The status test sits in SET, not WHERE: a WHERE on status tempts SQLite's planner to walk the
# status index (every sleeping run) instead of the primary key.
_MARK_STARTED = Hot(
    update(runs)
    .where(runs.c.id.in_(bindparam("run_ids", expanding=True)))
    .values(status=case((runs.c.status.in_([RunStatus.QUEUED.value, RunStatus.SLEEPING.value,
                                              RunStatus.WAITING.value]),
                         RunStatus.RUNNING.value), else_=runs.c.status),
            started_at_ms=func.coalesce(runs.c.started_at_ms, bindparam("now")))
)
_MEMO = Hot(
    select(steps.c.run_id, steps.c.step_id, steps.c.output, steps.c.error)
    .where(steps.c.run_id.in_(bindparam("run_ids", expanding=True)),
           steps.c.status.in_([StepStatus.COMPLETED.value, StepStatus.FAILED.value]))
    .order_by(steps.c.run_id, steps.c.position)
)
_SET_STATUS = Hot(update(runs).where(runs.c.id == bindparam("b_id"),
                                     runs.c.ended_at_ms.is_(None))
                  .values(status=bindparam("status")))
_END_PENDING_STEP = Hot(
    update(steps)
    # Plain comparisons, not IN (…): this statement runs once for many rows (executemany).
    .where(steps.c.run_id == bindparam("b_run_id"), steps.c.step_id == bindparam("b_step_id"),
           steps.c.status != StepStatus.COMPLETED.value,
           steps.c.status != StepStatus.FAILED.value)
    .values(status=bindparam("status"), output=bindparam("output"), error=bindparam("error"),
            ended_at_ms=bindparam("ended_at_ms"))
)


def set_status_many(conn: Connection, changes: list[tuple[str, RunStatus]]) -> None:
    """(run id, status) of runs that have not ended."""
    if changes:
        _SET_STATUS.execute_many(conn, [{"b_id": run_id, "status": status.value}
                                        for run_id, status in changes])


def end_pending_steps(conn: Connection, ends: list[PendingStepEnd]) -> None:
    """Complete (or fail) sleeps, waits and invokes in progress."""
    if ends:
        _END_PENDING_STEP.execute_many(conn, [
            {"b_run_id": e.run_id, "b_step_id": e.step_id, "status": e.status.value,
             "output": e.output, "error": error_json(e.error), "ended_at_ms": e.ended_at_ms}
            for e in ends])


_EVENTS_OF = Hot(
    select(runs.c.id.label("run_id"), events)
    .join(events, events.c.id == runs.c.event_id)
    .where(runs.c.id.in_(bindparam("run_ids", expanding=True)))
)


def create(conn: Connection, new: list[NewRun]) -> None:
    if new:
        _INSERT_RUNS.execute_many(conn, [
            {"id": r.id, "function_id": r.function_id, "event_id": r.event_id,
             "status": r.status.value, "max_attempts": r.max_attempts,
             "created_at_ms": r.created_at_ms, "started_at_ms": r.started_at_ms,
             "parent_run_id": r.parent_run_id, "parent_step_id": r.parent_step_id,
             "source_run_id": r.source_run_id}
            for r in new])


def mark_started(conn: Connection, run_ids: list[str], now_ms: int) -> None:
    if not run_ids:
        return
    _MARK_STARTED.execute(conn, {"run_ids": run_ids, "now": now_ms})


_FINISH_MANY = Hot(
    update(runs)
    .where(runs.c.id == bindparam("b_id"), runs.c.ended_at_ms.is_(None))
    .values(status=bindparam("status"), output=bindparam("output"), error=bindparam("error"),
            ended_at_ms=bindparam("ended_at_ms"))
)
_INSERT_STEPS = Hot(steps.insert())
_INSERT_FAILURES = Hot(step_failures.insert())
_STATUS_MANY = select(runs.c.id, runs.c.status).where(
    runs.c.id.in_(bindparam("run_ids", expanding=True)))


def finish_many(conn: Connection, finishes: list[RunFinish]) -> None:
    """End runs that have not ended yet (the others are left as they are)."""
    if finishes:
        _FINISH_MANY.execute_many(conn, [
            {"b_id": f.run_id, "status": f.status.value, "output": f.output,
             "error": error_json(f.error), "ended_at_ms": f.ended_at_ms} for f in finishes])


def insert_steps(conn: Connection, new: list[NewStep]) -> None:
    """Step rows; a step that already has one raises IntegrityError."""
    if new:
        _INSERT_STEPS.execute_many(conn, [
            {"run_id": s.run_id, "step_id": s.step_id, "position": s.position, "name": s.name,
             "kind": s.kind.value, "status": s.status.value, "output": s.output,
             "error": error_json(s.error), "attempts": s.attempts,
             "started_at_ms": s.started_at_ms, "ended_at_ms": s.ended_at_ms}
            for s in new])


def insert_failures(conn: Connection, failures: list[FailedAttempt]) -> None:
    if failures:
        _INSERT_FAILURES.execute_many(conn, [
            {"run_id": f.run_id, "step_id": f.step_id, "attempt": f.attempt,
             "error": f.error.to_json(), "started_at_ms": f.started_at_ms,
             "ended_at_ms": f.ended_at_ms} for f in failures])


def statuses(conn: Connection, run_ids: list[str]) -> dict[str, RunStatus]:
    return {row.id: RunStatus(row.status)
            for row in conn.execute(_STATUS_MANY, {"run_ids": run_ids})}


def memo(conn: Connection, run_ids: list[str]) -> dict[str, list[MemoStep]]:
    found: dict[str, list[MemoStep]] = {run_id: [] for run_id in run_ids}
    if not run_ids:
        return found
    for row in _MEMO.rows(conn, {"run_ids": run_ids}):
        found[row.run_id].append(MemoStep(row.step_id, row.output,
                                          ErrorInfo.from_json(row.error)))
    return found


def output_bytes(conn: Connection, run_ids: list[str]) -> dict[str, int]:
    """The bytes of the step outputs each run has stored (its state), 0 for none."""
    if not run_ids:
        return {}
    total = func.coalesce(func.sum(dialect.byte_length(conn.dialect.name, steps.c.output)), 0)
    rows = conn.execute(select(steps.c.run_id, total.label("total"))
                        .where(steps.c.run_id.in_(run_ids)).group_by(steps.c.run_id))
    found = dict.fromkeys(run_ids, 0)
    found.update({row.run_id: int(row.total) for row in rows})
    return found


def events_of(conn: Connection, run_ids: list[str]) -> dict[str, EventRecord]:
    """The trigger event of each run, by run id."""
    rows = _EVENTS_OF.rows(conn, {"run_ids": run_ids})
    return {row.run_id: row_to_event(row) for row in rows}


def _record(row: Any, **extra: Any) -> RunRecord:
    return RunRecord(
        id=row.id, function_id=row.function_id, event_id=row.event_id,
        status=RunStatus(row.status), attempt=row.attempt or 0, output=row.output,
        error=ErrorInfo.from_json(row.error), created_at_ms=row.created_at_ms,
        started_at_ms=row.started_at_ms, ended_at_ms=row.ended_at_ms,
        parent_run_id=row.parent_run_id, source_run_id=row.source_run_id, **extra,
    )


def _run_select() -> Any:
    return select(runs, queue.c.attempt).outerjoin(queue, queue.c.run_id == runs.c.id)


def get(conn: Connection, run_id: str) -> RunRecord | None:
    row = conn.execute(_run_select().where(runs.c.id == run_id)).first()
    if row is None:
        return None
    failures: dict[str, list[StepFailure]] = {}
    for f in conn.execute(
        select(step_failures).where(step_failures.c.run_id == run_id)
        .order_by(step_failures.c.attempt)
    ):
        failures.setdefault(f.step_id, []).append(StepFailure(
            attempt=f.attempt, error=ErrorInfo.from_json(f.error) or ErrorInfo("", ""),
            started_at_ms=f.started_at_ms, ended_at_ms=f.ended_at_ms))
    step_records = tuple(
        StepRecord(
            step_id=s.step_id, name=s.name, status=StepStatus(s.status), output=s.output,
            error=ErrorInfo.from_json(s.error), attempts=s.attempts,
            started_at_ms=s.started_at_ms, ended_at_ms=s.ended_at_ms,
            failures=tuple(failures.get(s.step_id, ())), kind=StepKind(s.kind),
        )
        for s in conn.execute(
            select(steps).where(steps.c.run_id == run_id).order_by(steps.c.position))
    )
    event_row = conn.execute(select(events).where(events.c.id == row.event_id)).first()
    return _record(
        row, steps=step_records, body_failures=tuple(failures.get("", ())),
        event=None if event_row is None else row_to_event(event_row),
    )


def list_(
    conn: Connection,
    *,
    function_id: str | None,
    status: RunStatus | None,
    limit: int,
    cursor: tuple[int, str] | None,
    created_after_ms: int | None = None,
    created_before_ms: int | None = None,
    event_name: str | None = None,
) -> tuple[list[RunRecord], str]:
    """Newest first; returns the page and the token of the next one ('' at the end). Each
    filter has its index: ix_runs_function_created, ix_runs_status_created, ix_runs_created;
    an event name goes through ix_events_name and ix_runs_event (or the events' key)."""
    query = _run_select()
    if function_id:
        query = query.where(runs.c.function_id == function_id)
    if status is not None:
        query = query.where(runs.c.status == status.value)
    if created_after_ms is not None:
        query = query.where(runs.c.created_at_ms >= created_after_ms)
    if created_before_ms is not None:
        query = query.where(runs.c.created_at_ms < created_before_ms)
    if event_name:
        query = query.join(events, events.c.id == runs.c.event_id).where(
            events.c.name == event_name)
    if cursor is not None:
        query = query.where(past(cursor, runs.c.created_at_ms, runs.c.id, newest_first=True))
    query = query.order_by(runs.c.created_at_ms.desc(), runs.c.id.desc()).limit(limit + 1)
    rows = conn.execute(query).all()
    page = [_record(row) for row in rows[:limit]]
    token = encode_cursor(page[-1].created_at_ms, page[-1].id) if len(rows) > limit else ""
    return page, token


def status_of(conn: Connection, run_id: str) -> RunStatus | None:
    value = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
    return None if value is None else RunStatus(value)


# -- replays (engine/replays.py) -------------------------------------------------------------------
_SOURCE = select(runs.c.function_id, runs.c.event_id).where(runs.c.id == bindparam("run_id"))


def source_of(conn: Connection, run_id: str) -> tuple[str, str] | None:
    """(function id, trigger event id) of a run, for a replay."""
    row = conn.execute(_SOURCE, {"run_id": run_id}).first()
    return None if row is None else (row.function_id, row.event_id)


def steps_of(conn: Connection, run_id: str) -> list[NewStep]:
    """A run's step rows in order, as insert_steps takes them (to copy them into a rerun)."""
    query = select(steps).where(steps.c.run_id == run_id).order_by(steps.c.position)
    return [NewStep(run_id=row.run_id, step_id=row.step_id, position=row.position,
                    name=row.name, kind=StepKind(row.kind), status=StepStatus(row.status),
                    attempts=row.attempts, started_at_ms=row.started_at_ms,
                    ended_at_ms=row.ended_at_ms, output=row.output,
                    error=ErrorInfo.from_json(row.error))
            for row in conn.execute(query)]


_RUNS_OF_EVENTS = (
    select(runs.c.id, runs.c.event_id)
    .where(runs.c.event_id.in_(bindparam("event_ids", expanding=True)))
    .order_by(runs.c.created_at_ms, runs.c.id)
)


def run_ids_by_event(conn: Connection, event_ids: list[str]) -> dict[str, list[str]]:
    """The runs each event triggered, oldest first (one query, on ix_runs_event)."""
    found: dict[str, list[str]] = {event_id: [] for event_id in event_ids}
    if event_ids:
        for row in conn.execute(_RUNS_OF_EVENTS, {"event_ids": event_ids}):
            found[row.event_id].append(row.id)
    return found


def _count_status(*statuses: RunStatus) -> Any:
    return func.sum(case((runs.c.status.in_([s.value for s in statuses]), 1), else_=0))


_STATS = (
    select(runs.c.function_id, func.count().label("runs"),
           _count_status(RunStatus.COMPLETED).label("completed"),
           _count_status(RunStatus.FAILED).label("failed"),
           _count_status(RunStatus.CANCELLED).label("cancelled"))
    .where(runs.c.created_at_ms >= bindparam("since"))
    .group_by(runs.c.function_id)
)


def function_stats(conn: Connection, since_ms: int, function_ids: list[str] | None = None
                   ) -> dict[str, FunctionStats]:
    """Runs created since `since_ms`, per function (all, or these), by outcome (one grouped
    query)."""
    found: dict[str, FunctionStats] = {}
    query = _STATS if function_ids is None else _STATS.where(runs.c.function_id.in_(
        function_ids))
    for row in conn.execute(query, {"since": since_ms}):
        ended = int(row.completed) + int(row.failed) + int(row.cancelled)
        found[row.function_id] = FunctionStats(
            runs=row.runs, completed=int(row.completed), failed=int(row.failed),
            cancelled=int(row.cancelled), active=row.runs - ended)
    return found


_ADD_EVENTS = Hot(run_events.insert())


def add_events(conn: Connection, rows: list[tuple[str, int, str]]) -> None:
    """Events of batched runs: (run_id, position, event_id)."""
    if rows:
        _ADD_EVENTS.execute_many(conn, [{"run_id": r, "position": p, "event_id": e}
                                        for r, p, e in rows])
