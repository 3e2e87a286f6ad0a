"""Run operations behind RunService and the dashboard: replaying a run, rerunning it from a step,
and listing runs, events, functions and workers. Engine delegates here."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.engine import Connection

from stepline_server.engine.starts import RunStart, start_runs
from stepline_server.errors import FailedPrecondition, InvalidArgument, NotFound
from stepline_server.ids import new_id, now_ms
from stepline_server.model import (
    EventEntry,
    EventRecord,
    FunctionInfo,
    FunctionStats,
    RunRecord,
    RunStatus,
    StepStatus,
    WorkerInfo,
    function_spec_from_config,
)
from stepline_server.store import Tx
from stepline_server.store import events as event_store
from stepline_server.store import functions as function_store
from stepline_server.store import queue as queue_store
from stepline_server.store import runs as run_store
from stepline_server.store import workers as worker_store
from stepline_server.store.paging import decode_cursor, encode_cursor

T = TypeVar("T")

if TYPE_CHECKING:
    from stepline_server.engine.core import Engine, Starter

STATS_WINDOW_MS = 24 * 3600 * 1000
# A worker row not refreshed by a heartbeat for this many leases belongs to a worker (or a
# server) that went away without closing its stream.
STALE_WORKER_LEASES = 3
_NO_STATS = FunctionStats(0, 0, 0, 0, 0)


def _cut(rows: list[T], limit: int | None) -> tuple[list[T], bool]:
    """A page of rows read `limit` + 1 at a time, and whether more follow."""
    if limit is None or len(rows) <= limit:
        return rows, False
    return rows[:limit], True


def _cursor(page_token: str) -> tuple[int, str] | None:
    if not page_token:
        return None
    try:
        return decode_cursor(page_token)
    except ValueError as exc:
        raise InvalidArgument("page_token", str(exc)) from None


# -- runs ---------------------------------------------------------------------------------------
async def list_runs(
    engine: Engine, *, function_id: str | None, status: RunStatus | None, limit: int,
    page_token: str, created_after_ms: int | None, created_before_ms: int | None,
    event_name: str | None,
) -> tuple[list[RunRecord], str]:
    if (created_after_ms is not None and created_before_ms is not None
            and created_before_ms <= created_after_ms):
        raise InvalidArgument("created_before", f"must be later than created_after "
                                                f"({created_after_ms} ms), got "
                                                f"{created_before_ms} ms")
    cursor = _cursor(page_token)
    return await engine.db.read(lambda conn: run_store.list_(
        conn, function_id=function_id, status=status, limit=limit, cursor=cursor,
        created_after_ms=created_after_ms, created_before_ms=created_before_ms,
        event_name=event_name))


def _source(conn: Connection, run_id: str) -> RunStart:
    """What starts a copy of the run: its function (still registered) and its trigger."""
    source = run_store.source_of(conn, run_id)
    if source is None:
        raise NotFound(f"run_id: no run {run_id!r}")
    function_id, event_id = source
    state = function_store.state_of(conn, function_id)
    if state is None or state[1]:
        raise FailedPrecondition(
            f"function_id: function {function_id!r} of run {run_id} is "
            f"{'not registered' if state is None else 'archived'}; register it to run it again")
    events: list[EventRecord] = event_store.get_many(conn, [event_id])
    if not events:
        raise FailedPrecondition(f"run_id: the trigger event {event_id!r} of run {run_id} is no "
                                 "longer stored")
    return RunStart(function_id, state[0], events[0], source_run_id=run_id)


async def replay_run(engine: Engine, run_id: str) -> RunRecord:
    """A new run of the same function for the same trigger event, from scratch (whatever the
    source's status). It may go straight to a local worker, like any new run."""
    def job(tx: Tx, start: Starter) -> str:
        (new,) = start([_source(tx.conn, run_id)])
        return new

    return await engine.get_run(await engine.write_with_starts(job))


async def rerun_from_step(engine: Engine, run_id: str, step_id: str) -> RunRecord:
    """A new run whose memo holds copies of the source's recorded results (completed or failed
    for good) positioned before `step_id`: that step and the ones after it execute again."""
    lease_ms = int(engine.settings.lease_seconds * 1000)

    def job(tx: Tx) -> str:
        conn = tx.conn
        start = _source(conn, run_id)
        rows = run_store.step_rows(conn, run_id)
        position = next((i for i, row in enumerate(rows) if row["step_id"] == step_id), None)
        if position is None:
            known = ", ".join(repr(row["step_id"]) for row in rows[:10]) or "none"
            raise InvalidArgument("step_id", f"run {run_id} has no step {step_id!r} "
                                             f"(its steps: {known})")
        ended = (StepStatus.COMPLETED.value, StepStatus.FAILED.value)
        kept = [row for row in rows[:position] if row["status"] in ended]
        now = now_ms()
        # Queued, not placed on a local worker: its first dispatch must carry the memo.
        (new,) = start_runs(tx, [start], now, new_id=new_id, placement=None,
                            lease_ms=lease_ms).run_ids
        run_store.insert_steps(conn, [row | {"run_id": new, "position": i}
                                      for i, row in enumerate(kept)])
        if kept:
            queue_store.set_step_count(conn, new, len(kept))
        return new

    return await engine.get_run(await engine.db.write(job))


# -- events, functions, workers -----------------------------------------------------------------
async def list_events(engine: Engine, *, name: str | None, limit: int, page_token: str
                      ) -> tuple[list[EventEntry], str]:
    cursor = _cursor(page_token)

    def query(conn: Connection) -> tuple[list[EventEntry], str]:
        page, token = event_store.list_(conn, name=name, limit=limit, cursor=cursor)
        runs = run_store.run_ids_by_event(conn, [record.id for record, _ in page])
        return [EventEntry(record, received, tuple(runs[record.id]))
                for record, received in page], token

    return await engine.db.read(query)


async def list_functions(engine: Engine, *, app_id: str | None, include_archived: bool,
                         limit: int | None = None, page_token: str = ""
                         ) -> tuple[list[FunctionInfo], str]:
    """By id, at most `limit` (None: all); and the next page's token ('' at the end)."""
    since = now_ms() - STATS_WINDOW_MS
    cursor = _cursor(page_token)
    after_id = None if cursor is None else cursor[1]

    def query(conn: Connection) -> tuple[list[FunctionInfo], bool]:
        rows, more = _cut(function_store.list_(
            conn, app_id=app_id, include_archived=include_archived, after_id=after_id,
            limit=None if limit is None else limit + 1), limit)
        stats = run_store.function_stats(
            conn, since, None if limit is None else [row.id for row in rows]) if rows else {}
        return [FunctionInfo(function_spec_from_config(row.id, row.config), row.app_id,
                             row.version, bool(row.archived), row.created_at_ms,
                             row.updated_at_ms, stats.get(row.id, _NO_STATS))
                for row in rows], more

    infos, more = await engine.db.read(query)
    return infos, encode_cursor(0, infos[-1].spec.id) if more else ""


async def list_workers(engine: Engine, *, limit: int | None = None, page_token: str = ""
                       ) -> tuple[list[WorkerInfo], str]:
    """Rows refreshed recently, oldest connection first, at most `limit` (None: all); and the
    next page's token ('' at the end). Stale rows are left out here and deleted."""
    cutoff = now_ms() - int(STALE_WORKER_LEASES * engine.settings.lease_seconds * 1000)
    after = _cursor(page_token)
    rows, more = _cut(await engine.db.read(lambda conn: worker_store.list_(
        conn, after=after, limit=None if limit is None else limit + 1)), limit)
    live = [w for w in rows if w.last_heartbeat_ms >= cutoff]
    if len(live) < len(rows):
        await engine.db.write(lambda tx: worker_store.delete_stale(tx.conn, cutoff))
    token = encode_cursor(rows[-1].connected_at_ms, rows[-1].connection_id) if more else ""
    return live, token
