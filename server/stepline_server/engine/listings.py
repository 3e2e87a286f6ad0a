"""Listings behind RunService, the CLI and the dashboard: runs, events, functions and workers,
a page at a time. Engine delegates here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Connection

from stepline_server import names
from stepline_server.engine import holds
from stepline_server.engine.retention import retention_in_force
from stepline_server.errors import InvalidArgument, NotFound
from stepline_server.ids import now_ms
from stepline_server.model import (
    EventEntry,
    FlowSkip,
    FunctionInfo,
    FunctionStats,
    RunRecord,
    RunStatus,
    WorkerInfo,
    function_spec_from_config,
)
from stepline_server.settings import Settings
from stepline_server.store import events as event_store
from stepline_server.store import flow_skips as skip_store
from stepline_server.store import functions as function_store
from stepline_server.store import runs as run_store
from stepline_server.store import workers as worker_store
from stepline_server.store.paging import decode_cursor, encode_cursor

T = TypeVar("T")

if TYPE_CHECKING:
    from stepline_server.engine.core import Engine

STATS_WINDOW_MS = 24 * 3600 * 1000
_NO_STATS = FunctionStats(runs=0, completed=0, failed=0, cancelled=0, active=0)


def _cut(rows: list[T], limit: int | None) -> tuple[list[T], bool]:
    """A page of rows read `limit` + 1 at a time, and whether more follow."""
    if limit is None or len(rows) <= limit:
        return rows, False
    return rows[:limit], True


def cursor_of(page_token: str) -> tuple[int, str] | None:
    """A page token as a cursor; INVALID_ARGUMENT naming page_token for one we did not issue."""
    return _cursor(page_token)


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

    def query(conn: Connection) -> tuple[list[RunRecord], str]:
        page, token = run_store.list_(
            conn, function_id=function_id, status=status, limit=limit, cursor=cursor,
            created_after_ms=created_after_ms, created_before_ms=created_before_ms,
            event_name=event_name)
        return holds.attach(conn, page, now_ms()), token

    return await engine.db.read(query)


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


async def list_skips(engine: Engine, *, function_id: str | None, limit: int, page_token: str
                     ) -> tuple[list[FlowSkip], str]:
    cursor = _cursor(page_token)
    return await engine.db.read(lambda conn: skip_store.list_(
        conn, function_id=function_id, limit=limit, cursor=cursor))


def _function_info(row: Any, stats: FunctionStats, settings: Settings) -> FunctionInfo:
    spec = function_spec_from_config(row.id, row.config)
    return FunctionInfo(spec=spec, app_id=row.app_id, version=row.version,
                        archived=bool(row.archived), created_at_ms=row.created_at_ms,
                        updated_at_ms=row.updated_at_ms, stats=stats,
                        retention_ms=retention_in_force(spec.retention_ms, settings))


async def list_functions(engine: Engine, *, app_id: str | None, include_archived: bool,
                         limit: int | None = None, page_token: str = "",
                         function_id: str | None = None) -> tuple[list[FunctionInfo], str]:
    """By full name, at most `limit` (None: all); and the next page's token ('' at the end).
    Only the function named `function_id` when given."""
    since = now_ms() - STATS_WINDOW_MS
    cursor = _cursor(page_token)
    after_id = None if cursor is None else cursor[1]

    def query(conn: Connection) -> tuple[list[FunctionInfo], bool]:
        rows, more = _cut(function_store.list_(
            conn, app_id=app_id, include_archived=include_archived, after_id=after_id,
            limit=None if limit is None else limit + 1, function_id=function_id), limit)
        every = limit is None and function_id is None  # one grouped query, no list of ids
        stats = run_store.function_stats(
            conn, since, None if every else [row.id for row in rows]) if rows else {}
        return [_function_info(row, stats.get(row.id, _NO_STATS), engine.settings)
                for row in rows], more

    infos, more = await engine.db.read(query)
    return infos, encode_cursor(0, infos[-1].spec.id) if more else ""


async def function_name(engine: Engine, name: str, field: str) -> str:
    """A function as a client names it (a filter, a URL): its full name, checked. A bare id is
    refused, naming the functions that have it: several apps may, now or later."""
    if names.is_full(name):
        names.check_full_name(name, field)
        return name
    matches = await engine.db.read(lambda conn: function_store.with_local_id(conn, name))
    raise names.bare_id_error(name, field, matches)


async def get_function(engine: Engine, name: str, field: str) -> FunctionInfo:
    """One function, archived or not, by its full name (see function_name)."""
    full = await function_name(engine, name, field)
    infos, _ = await list_functions(engine, app_id=None, include_archived=True,
                                    function_id=full)
    if not infos:
        raise NotFound(f"{field}: no function {full!r}")
    return infos[0]


async def list_workers(engine: Engine, *, limit: int | None = None, page_token: str = ""
                       ) -> tuple[list[WorkerInfo], str]:
    """Workers of live servers, oldest connection first, at most `limit` (None: all); and the
    next page's token ('' at the end). A server is known dead once its heartbeat is a lease
    old (by then its workers' leases have run out too), or at once when it starts again; stale
    rows are deleted by the servers' heartbeats (Engine.server_heartbeat)."""
    live_since = now_ms() - int(engine.settings.lease_seconds * 1000)
    after = _cursor(page_token)
    rows, more = _cut(await engine.db.read(lambda conn: worker_store.list_(
        conn, live_since=live_since, after=after,
        limit=None if limit is None else limit + 1)), limit)
    token = encode_cursor(rows[-1].connected_at_ms, rows[-1].connection_id) if more else ""
    return rows, token
