"""The engine's face: what ingress and dispatch call. Decisions here, persistence in the store."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import Connection

from stepline_server.controls import BulkKind, BulkOperation, FunctionPause, PauseMode, Selection
from stepline_server.engine import (
    attempts,
    bulk,
    cron,
    flow_concurrency,
    holds,
    invocations,
    lifecycle,
    listings,
    pauses,
    replays,
    resends,
    search,
)
from stepline_server.engine import ops as ops_logic
from stepline_server.engine.context import TxContext
from stepline_server.engine.observe import Observers
from stepline_server.engine.run_limits import RunLimits, StateSizes
from stepline_server.engine.starts import Placement, RunStart, Started, start_runs
from stepline_server.errors import FailedPrecondition, NotFound
from stepline_server.ids import new_id, now_ms
from stepline_server.model import (
    AckAction,
    AppEndpoint,
    AppInfo,
    AppKind,
    Dispatch,
    ErrorInfo,
    EventEntry,
    EventRecord,
    FlowSkip,
    FunctionChanges,
    FunctionInfo,
    FunctionSpec,
    OpsBatch,
    RunCompleted,
    RunFailed,
    RunRecord,
    RunStatus,
    StepCompleted,
    StepFailed,
    WorkerInfo,
)
from stepline_server.settings import Settings
from stepline_server.store import Database, Tx, flow_slots
from stepline_server.store import apps as app_store
from stepline_server.store import bulk as bulk_store
from stepline_server.store import flow_deferred as deferred_store
from stepline_server.store import flow_skips as skip_store
from stepline_server.store import functions as function_store
from stepline_server.store import pauses as pause_store
from stepline_server.store import queue as queue_store
from stepline_server.store import runs as run_store
from stepline_server.store import servers as server_store
from stepline_server.store import workers as worker_store
from stepline_server.store.database import head_revision, known_revisions, schema_revision

log = logging.getLogger(__name__)
T = TypeVar("T")
Starter = Callable[[list[RunStart]], list[str]]
# How long this server trusts its view of who listens to system events: a listener registered
# on another server starts receiving them within this delay.
LISTENERS_TTL_SECONDS = 2.0
# A server or worker row not refreshed for this many leases belongs to a process gone without a
# word (killed, crashed); it is deleted. Listings hide it sooner (engine/listings.py).
STALE_ROW_LEASES = 3
# Run and step activity, one line each: quiet under `serve`, shown by `stepline dev`.
activity = logging.getLogger("stepline.runs")


class Engine:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._on_ready: list[Callable[[], None]] = []
        self._placement: Placement | None = None
        self._on_cancel: list[Callable[[str, str, str], None]] = []
        self._on_apps: list[Callable[[str, bool], None]] = []
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._dedup_ms = int(settings.event_dedup_seconds * 1000)
        self._listeners: tuple[float, frozenset[str]] | None = None
        # Telemetry (traces, metrics) hooks; see engine/observe.py.
        self.observers = Observers()
        backoff = attempts.Backoff(settings.retry_base_seconds, settings.retry_max_seconds)
        # Runs' state sizes, remembered per dispatch (run_limits.py); writer thread.
        self._sizes = StateSizes()
        limits = RunLimits(max_steps=settings.max_steps_per_run,
                           max_state_bytes=settings.max_run_state_bytes)
        # One object, so the writer can group adjacent reports into one set-based apply.
        self._apply_ops = functools.partial(ops_logic.apply_many, backoff=backoff,
                                            context=self._context, limits=limits,
                                            sizes=self._sizes)
        db.on_notify = self._ready
        self._on_bulk: list[Callable[[], None]] = []
        self._waiters: invocations.RunWaiters | None = None

    def _context(self, tx: Tx, now: int, start: Starter | None = None) -> TxContext:
        """For engine logic inside a transaction. Without `start`, runs it starts are queued
        (not placed on local workers) and dispatch is woken after the commit."""
        if start is None:
            def start(starts: list[RunStart]) -> list[str]:
                return start_runs(tx, starts, now, new_id=new_id, placement=None,
                                  lease_ms=self._lease_ms, context=context).run_ids
        context = TxContext(tx, now, start, self._dedup_ms, self._cancelled,
                            self._system_listeners, self.observers,
                            filter_budget_ns=int(self.settings.filter_budget_ms * 1e6))
        return context

    def _system_listeners(self, conn: Connection) -> frozenset[str]:
        """Names of system events some function subscribes to. Writer thread only; cached for
        a moment (a run's end must not cost a query); this server's registrations reset it."""
        cached = self._listeners
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        names = frozenset(function_store.subscribed(conn, list(lifecycle.SYSTEM_EVENTS)))
        self._listeners = (now + LISTENERS_TTL_SECONDS, names)
        return names

    def _cancelled(self, run_id: str, owner: str, reason: str) -> None:
        for callback in self._on_cancel:
            callback(run_id, owner, reason)

    # -- hooks for dispatch ----------------------------------------------------------------
    def on_ready_work(self, callback: Callable[[], None]) -> None:
        """Called when runs may have become claimable (new runs, released leases)."""
        self._on_ready.append(callback)

    def set_placement(self, placement: Placement) -> None:
        """Let new runs go straight to local workers with free slots (see send_events)."""
        self._placement = placement

    def on_cancel(self, callback: Callable[[str, str, str], None]) -> None:
        """Called with (run_id, lease_owner, reason) when a leased run is cancelled, or ends
        otherwise while a worker holds it (a timeout)."""
        self._on_cancel.append(callback)

    def on_apps_changed(self, callback: Callable[[str, bool], None]) -> None:
        """Called with (app_id, served over HTTP) after an app registered on this server."""
        self._on_apps.append(callback)

    def _ready(self) -> None:
        for callback in self._on_ready:
            callback()

    # -- events ------------------------------------------------------------------------------
    async def send_events(self, records: list[EventRecord]) -> list[str]:
        """Commit events, the runs they start and the waits they satisfy; return the new run
        ids. A new run whose function has a local worker with a free slot is leased to it in the
        same transaction and handed over right after the commit: no claim round trip."""
        def job(tx: Tx, start: Starter) -> list[str]:
            return lifecycle.ingest(self._context(tx, now_ms(), start), records)

        return await self.write_with_starts(job)

    async def write_with_starts(self, job: Callable[[Tx, Starter], T]) -> T:
        """Run `job` in a write transaction, with a `start` callable that starts runs in it.
        Runs placed on local workers are delivered after the commit; dispatch is woken for the
        others."""
        placement = self._placement
        started = Started()

        def start(tx: Tx, starts: list[RunStart]) -> list[str]:
            now = now_ms()
            # Flow control's skips act on other runs (flow_limits): they need a context.
            context = (self._context(tx, now, functools.partial(start, tx))
                       if any(s.policy.flow for s in starts) else None)
            new = start_runs(tx, starts, now, new_id=new_id, placement=placement,
                             lease_ms=self._lease_ms, context=context)
            started.extend(new)
            return new.run_ids

        def wrapped(tx: Tx) -> T:
            return job(tx, functools.partial(start, tx))

        try:
            result = await self.db.write(wrapped)
        except BaseException:
            if placement and started.reserved:
                placement.unreserve(started.reserved)
            raise
        for owner, work in started.placed:
            assert placement is not None
            placement.deliver(owner, work)
        if started.queued:
            self._ready()
        return result

    # -- functions ---------------------------------------------------------------------------
    async def register_functions(
        self, app_id: str, specs: list[FunctionSpec], *, archive_missing: bool, sdk: str = ""
    ) -> FunctionChanges:
        """Register a stream app's functions (its workers' Hello, RegisterFunctions without a
        URL); the app's row says it is served by workers."""
        def job(tx: Tx) -> FunctionChanges:
            now = now_ms()
            app_store.upsert(tx.conn, app_id=app_id, kind=AppKind.STREAM, sdk=sdk,
                             synced_at_ms=now)
            return self._register(tx, app_id, specs, now, archive_missing=archive_missing)

        return self._registered(app_id, await self.db.write(job), http=False)

    async def register_app(self, endpoint: AppEndpoint, specs: list[FunctionSpec]
                           ) -> FunctionChanges:
        """Register an app served over HTTP: its row (URL, protocol, SDK) and its whole set of
        functions (those missing are archived), in one transaction; then the bridges of every
        server on the database serve it (this one at once, others at their next reload)."""
        def job(tx: Tx) -> FunctionChanges:
            now = now_ms()
            app_store.upsert_endpoint(tx.conn, endpoint, now)
            return self._register(tx, endpoint.app_id, specs, now, archive_missing=True)

        return self._registered(endpoint.app_id, await self.db.write(job), http=True)

    def _register(self, tx: Tx, app_id: str, specs: list[FunctionSpec], now: int, *,
                  archive_missing: bool) -> FunctionChanges:
        changes = function_store.register(
            tx.conn, app_id, specs, now, archive_missing=archive_missing)
        self._listeners = None
        cron.sync_schedules(tx.conn, specs, now)
        cron.remove_schedules(tx.conn, changes.archived)
        flow_concurrency.registered(tx, specs, changes)
        return changes

    def _registered(self, app_id: str, changes: FunctionChanges, *, http: bool
                    ) -> FunctionChanges:
        if changes.created or changes.updated or changes.archived:
            log.info("app %s: functions created %s, updated %s, archived %s",
                     app_id, changes.created, changes.updated, changes.archived)
        for callback in self._on_apps:
            callback(app_id, http)
        return changes

    async def http_apps(self) -> dict[AppEndpoint, list[str]]:
        """Every app served over HTTP, with the full names of its live functions."""
        return await self.db.read(app_store.http_apps)

    async def list_apps(self) -> list[AppInfo]:
        """Every app, stream or HTTP, with its live functions' count."""
        return await self.db.read(lambda conn: app_store.list_(conn))

    async def get_app(self, app_id: str) -> AppInfo:
        app = await self.db.read(lambda conn: app_store.get(conn, app_id))
        if app is None:
            raise NotFound(f"app_id: no app {app_id!r}")
        return app

    # -- dispatch ----------------------------------------------------------------------------
    async def claim(self, owner: str, function_ids: list[str], limit: int) -> list[Dispatch]:
        """Lease up to `limit` ready runs to a worker and load what it needs to replay them."""

        def job(tx: Tx) -> list[Dispatch]:
            now = now_ms()
            ctx = self._context(tx, now)
            items = attempts.claim(ctx, owner, function_ids, limit, self._lease_ms)
            if not items:
                return []
            lifecycle.expire_waits(ctx, items)
            # A parallel step's run is running already. Its row is left unlocked: replicas that
            # claim sibling steps of one run at once would otherwise lock it in turn, and
            # deadlock with each other's other runs (seen in `make chaos`).
            run_store.mark_started(tx.conn, sorted({
                item.run_id for item in items if not item.target_step_id}), now)
            events = run_store.events_of(tx.conn, [item.run_id for item in items])
            # Only runs held back at their start (flow control) may have batch events.
            held = sorted({item.run_id for item in items if item.held is not None})
            batches = deferred_store.events_of(tx.conn, held) if held else {}
            # step_count counts the run's step rows: a run without any needs no memo query.
            memo = run_store.memo(tx.conn, [item.run_id for item in items if item.step_count])
            for item in items:
                self._sizes.seed(item, [step.output for step in memo.get(item.run_id, ())])
            return [
                Dispatch(run_id=item.run_id, function_id=item.function_id, lease=item.lease,
                         attempt=item.attempt, max_attempts=item.max_attempts,
                         event=events[item.run_id], steps=tuple(memo.get(item.run_id, ())),
                         target_step_id=item.target_step_id, due_at_ms=item.due_at_ms,
                         events=batches.get(item.run_id, ()))
                for item in items
            ]

        works = await self.db.write(job)
        if activity.isEnabledFor(logging.INFO):
            for work in works:
                activity.info("run %s %s dispatched (attempt %d)", work.run_id, work.function_id,
                              work.attempt + 1)
        return works

    async def unready(self) -> str | None:
        """Why this server cannot do its work now (the database unreachable, or its schema not
        the one this code expects); None when it can."""
        try:
            revision = await self.db.read(schema_revision)
        except Exception as exc:  # any failure to read is the answer
            return f"the database is unreachable ({type(exc).__name__})"
        if revision is None or (revision in known_revisions() and revision != head_revision()):
            return f"the database schema is at {revision}, this server expects {head_revision()}"
        # A revision unknown here was applied by a newer replica while this one runs: it only
        # added to the schema (README, "Upgrades"), so this server keeps serving until it is
        # upgraded in turn (a restart would refuse: store.database.migrate).
        return None

    async def next_due_ms(self, function_ids: list[str]) -> int | None:
        return await self.db.read(lambda conn: queue_store.next_due(conn, function_ids))

    async def backlog(self) -> tuple[int, list[tuple[str, int, int]]]:
        """Now, and per function the runs and parallel steps ready to be dispatched on any
        server with the oldest one's due time (metrics)."""
        now = now_ms()
        return now, await self.db.read(lambda conn: queue_store.backlog(conn, now))

    def submit_ops(self, owner: str, batch: OpsBatch) -> asyncio.Future[AckAction]:
        """Queue a worker's ops for commit (in arrival order); the future gives the ack."""
        request = ops_logic.OpsRequest(owner=owner, batch=batch,
                                       timing=ops_logic.Timing(now_ms(), self._lease_ms))
        future: asyncio.Future[AckAction] = self.db.submit_batched(self._apply_ops, request)
        # A report sent again after a lost ack is acknowledged again (engine/resends.py).
        future = resends.acknowledge_resends(self.db, batch, future)
        if activity.isEnabledFor(logging.INFO):
            future.add_done_callback(lambda f: _log_ops(batch, f))
        return future

    async def fail_attempt(self, owner: str, run_id: str, lease: int, error: ErrorInfo,
                           target_step_id: str = "") -> None:
        """Count a worker's unusable report (bad ops) as a failed attempt of the run (or of the
        parallel step dispatched); see attempts.py (5)."""
        request = ops_logic.OpsRequest(
            owner=owner, batch=attempts.unusable_report(run_id, lease, target_step_id, error),
            timing=ops_logic.Timing(now_ms(), self._lease_ms), check_function=False)
        await self.db.submit_batched(self._apply_ops, request)
        self._ready()

    async def give_back(self, owner: str, key: tuple[str, str], lease: int) -> None:
        """A report refused for the server's own reasons: its lease goes back to the queue,
        nothing charged (attempts.py, 6)."""
        def job(tx: Tx) -> bool:
            tx.notify = attempts.give_back(self._context(tx, now_ms()), owner, key, lease)
            return tx.notify

        if await self.db.write(job):
            self._ready()

    async def heartbeat(self, owner: str, keys: list[tuple[str, str]]) -> None:
        """Renew the leases of the items (run_id, target_step_id) the worker `owner` holds:
        only those, so an item it dropped is not kept from others."""
        now = now_ms()

        def job(tx: Tx) -> None:
            queue_store.extend(tx.conn, owner, keys, now + self._lease_ms)
            worker_store.heartbeat(tx.conn, owner, now)

        await self.db.write(job)

    # Rows of the workers table (see list_workers): written at connect, drain and close only.
    async def worker_connected(self, worker: WorkerInfo) -> None:
        await self.db.write(lambda tx: worker_store.insert(tx.conn, worker))

    async def worker_draining(self, connection_id: str) -> None:
        await self.db.write(lambda tx: worker_store.set_draining(tx.conn, connection_id))

    async def worker_disconnected(self, connection_id: str) -> None:
        await self.db.write(lambda tx: worker_store.delete_one(tx.conn, connection_id))

    async def release(self, owner: str, keys: list[tuple[str, str]] | None = None, *,
                      lost: bool = False) -> int:
        """Give items (by (run_id, target_step_id); None: all of `owner`'s) back to the queue;
        `lost`: their worker was lost (see attempts.py, 3)."""
        def job(tx: Tx) -> int:
            # A run whose last allowed attempt was just lost ends here, not at the next claim.
            items, remaining = attempts.release(self._context(tx, now_ms()), owner, keys,
                                                lost=lost)
            tx.notify = bool(remaining)
            if lost and items and self.observers:
                dispatches = [(item.run_id, item.target_step_id, item.lease) for item in items]
                tx.after_commit(lambda: self.observers.attempts_lost(dispatches, now_ms()))
            return len(remaining)

        count = await self.db.write(job)
        if count:
            self._ready()
        return count

    # -- servers (see store/servers.py) --------------------------------------------------------
    async def server_started(self, server_id: str) -> int:
        """Register this server; what its previous process left under the same id (leases,
        worker rows) is given back: that process is dead. Returns the leases released."""
        def job(tx: Tx) -> int:
            now = now_ms()
            released = attempts.release_server(self._context(tx, now), server_id)
            worker_store.delete_of_server(tx.conn, server_id)
            server_store.register(tx.conn, server_id, now)
            tx.notify = bool(released)
            return released

        return await self.db.write(job)

    async def server_heartbeat(self, server_id: str) -> None:
        """This server is alive (ListWorkers shows the workers of live servers only); rows of
        servers and workers gone without a word for a while are deleted on the way."""
        def job(tx: Tx) -> None:
            now = now_ms()
            server_store.heartbeat(tx.conn, server_id, now)
            stale = now - STALE_ROW_LEASES * self._lease_ms
            server_store.delete_stale(tx.conn, stale)
            worker_store.delete_stale(tx.conn, stale)

        await self.db.write(job)

    async def server_stopped(self, server_id: str) -> int:
        """Release the leases of this server's connections and forget it and its workers."""
        def job(tx: Tx) -> int:
            released = attempts.release_server(self._context(tx, now_ms()), server_id)
            worker_store.delete_of_server(tx.conn, server_id)
            server_store.delete_one(tx.conn, server_id)
            tx.notify = bool(released)
            return released

        return await self.db.write(job)

    async def release_all(self) -> int:
        """Only for a server that owns its database alone (SQLite): every lease is stale, and
        every worker row is a previous process's."""
        def job(tx: Tx) -> int:
            worker_store.delete_all(tx.conn)
            return queue_store.release_all(tx.conn)

        return await self.db.write(job)

    # -- runs --------------------------------------------------------------------------------
    async def get_run(self, run_id: str) -> RunRecord:
        def query(conn: Connection) -> RunRecord | None:
            run = run_store.get(conn, run_id)
            return None if run is None else holds.attach(conn, [run], now_ms())[0]

        run = await self.db.read(query)
        if run is None:
            raise NotFound(f"run_id: no run {run_id!r}")
        return run

    async def list_runs(
        self, *, function_id: str | None, status: RunStatus | None, limit: int,
        page_token: str, created_after_ms: int | None = None,
        created_before_ms: int | None = None, event_name: str | None = None,
    ) -> tuple[list[RunRecord], str]:
        """Newest first, without their steps; with the token of the next page ('' at the
        end). created_after_ms is inclusive, created_before_ms exclusive."""
        return await listings.list_runs(
            self, function_id=function_id, status=status, limit=limit, page_token=page_token,
            created_after_ms=created_after_ms, created_before_ms=created_before_ms,
            event_name=event_name)

    async def search_runs(
        self, *, function_id: str | None, status: RunStatus | None, limit: int,
        page_token: str, created_after_ms: int | None = None,
        created_before_ms: int | None = None, event_name: str | None = None,
        expression: str | None = None, text: str | None = None,
    ) -> tuple[list[RunRecord], str, int]:
        """list_runs, also filtered by CEL over the trigger event and by text in the output or
        error; a page scans a bounded number of runs (engine/search.py), and says how many."""
        return await search.search_runs(
            self, function_id=function_id, status=status, limit=limit,
            cursor=listings.cursor_of(page_token), created_after_ms=created_after_ms,
            created_before_ms=created_before_ms, event_name=event_name,
            expression=expression, text=text)

    async def cancel_run(self, run_id: str, reason: str) -> RunRecord:
        def job(tx: Tx) -> None:
            items = queue_store.lock_many(tx.conn, [run_id])
            if (run_id, "") not in items:
                status = run_store.status_of(tx.conn, run_id)
                if status is None:
                    raise NotFound(f"run_id: no run {run_id!r}")
                raise FailedPrecondition(f"run_id: run {run_id} already ended ({status})")
            lifecycle.end_runs(self._context(tx, now_ms()), [lifecycle.Ending(
                item=items[run_id, ""][0], status=RunStatus.CANCELLED,
                error=ErrorInfo("Cancelled", reason or "cancelled by request"),
                holders=lifecycle.holders(items))])

        await self.db.write(job)
        return await self.get_run(run_id)

    # -- runs from app code (engine/invocations.py) ---------------------------------------
    @property
    def dedup_ms(self) -> int:
        return self._dedup_ms

    async def invoke_function(self, function_id: str, event: EventRecord
                              ) -> invocations.Invocation:
        """Start a run of one function (by full name) for `event`, its trigger; a repeated
        event id answers with the run it started."""
        return await invocations.invoke_function(self, function_id, event)

    async def wait_run(self, run_id: str, timeout_s: float) -> RunRecord:
        """The run once it has ended, or as it is after `timeout_s` (at most a minute)."""
        if self._waiters is None:
            self._waiters = invocations.RunWaiters()
            self.observers.add(self._waiters)
        return await self._waiters.wait(self, run_id, timeout_s)

    def stop_waits(self) -> None:
        """Shutting down: the waits in progress answer now (their callers wait elsewhere)."""
        if self._waiters is None:
            self._waiters = invocations.RunWaiters()
        self._waiters.close()

    # -- replays and listings (engine/replays.py, engine/listings.py) ------------------------
    async def replay_run(self, run_id: str) -> RunRecord:
        """A new run of the same function for the same trigger event (source_run_id set)."""
        return await replays.replay_run(self, run_id)

    async def rerun_from_step(self, run_id: str, step_id: str) -> RunRecord:
        """A new run that keeps the source's step results recorded before `step_id`."""
        return await replays.rerun_from_step(self, run_id, step_id)

    async def list_events(self, *, name: str | None, limit: int, page_token: str
                          ) -> tuple[list[EventEntry], str]:
        """Events newest first, each with the runs it triggered; and the next page's token."""
        return await listings.list_events(self, name=name, limit=limit, page_token=page_token)

    async def list_skips(self, *, function_id: str | None, limit: int, page_token: str
                         ) -> tuple[list[FlowSkip], str]:
        """Events that started no run because of flow control, newest first (of one function,
        by full name, or all); and the next page's token."""
        return await listings.list_skips(self, function_id=function_id, limit=limit,
                                         page_token=page_token)

    async def count_skips(self, function_id: str) -> int:
        """The function's skips still kept (the pruner drops them past the retention)."""
        return await self.db.read(lambda conn: skip_store.count(conn, function_id))

    async def list_functions(self, *, app_id: str | None = None, include_archived: bool = False,
                             limit: int | None = None, page_token: str = ""
                             ) -> tuple[list[FunctionInfo], str]:
        """Registered functions by full name, with their runs of the last 24 hours; at most `limit`
        (None: all), and the next page's token ('' at the end)."""
        return await listings.list_functions(self, app_id=app_id,
                                               include_archived=include_archived, limit=limit,
                                               page_token=page_token)

    async def function_name(self, name: str, field: str) -> str:
        """A function as a client names it (a filter, a URL) as its full name; a bare id is
        refused with the full names that have it (`field` names the argument)."""
        return await listings.function_name(self, name, field)

    async def get_function(self, name: str, field: str = "function_id") -> FunctionInfo:
        """One function, archived or not, by its full name, with its runs of the last 24
        hours."""
        return await listings.get_function(self, name, field)

    async def list_workers(self, *, limit: int | None = None, page_token: str = ""
                           ) -> tuple[list[WorkerInfo], str]:
        """Workers connected to any server on this database, with their slots in use; at most
        `limit` (None: all), and the next page's token ('' at the end)."""
        return await listings.list_workers(self, limit=limit, page_token=page_token)

    # -- bulk operations and pauses (engine/bulk.py, engine/pauses.py) ------------------------
    @property
    def filter_budget_ns(self) -> int:
        return int(self.settings.filter_budget_ms * 1e6)

    def on_bulk_work(self, callback: Callable[[], None]) -> None:
        """Called when a bulk operation starts or a function is resumed (wakes the runner)."""
        self._on_bulk.append(callback)

    def wake_bulk(self) -> None:
        for callback in self._on_bulk:
            callback()

    async def start_bulk(self, *, kind: BulkKind, selection: Selection, max_runs: int | None,
                         reason: str | None, dry_run: bool
                         ) -> tuple[int, BulkOperation | None]:
        """Count the runs a bulk cancel or replay would act on; unless `dry_run`, start it."""
        return await bulk.start(self, kind=kind, selection=selection, max_runs=max_runs,
                                reason=reason, dry_run=dry_run)

    async def get_bulk(self, operation_id: str) -> BulkOperation:
        return await bulk.get(self, operation_id)

    async def list_bulk(self, *, limit: int, page_token: str
                        ) -> tuple[list[BulkOperation], str]:
        """Bulk operations, newest first, and the next page's token ('' at the end)."""
        cursor = listings.cursor_of(page_token)
        return await self.db.read(lambda conn: bulk_store.list_(conn, limit=limit,
                                                                cursor=cursor))

    async def stop_bulk(self, operation_id: str) -> BulkOperation:
        return await bulk.stop(self, operation_id)

    async def bulk_batch(self, operation_id: str, owner: str) -> bool:
        """Work one batch of a bulk operation as `owner`; whether more are left."""
        def job(tx: Tx, start: Starter) -> bool:
            return bulk.batch(self._context(tx, now_ms(), start), operation_id, owner,
                              size=self.settings.bulk_batch_size, lease_ms=self._lease_ms)

        return await self.write_with_starts(job)

    async def start_held_runs(self) -> bool:
        """Start a batch of the runs held by resumed functions; whether more may be left. A
        read answers when there are none (the usual case): no write."""
        function_id = await self.db.read(pause_store.resumed_with_held)
        if function_id is None:
            return False
        return await self.write_with_starts(
            lambda tx, start: pauses.start_held(tx, start, function_id))

    async def pause_function(self, name: str, mode: PauseMode) -> FunctionPause:
        return await pauses.pause(self, name, mode)

    async def resume_function(self, name: str) -> FunctionPause:
        return await pauses.resume(self, name)

    async def function_pauses(self, function_ids: list[str]) -> dict[str, FunctionPause]:
        """The pause rows of these functions (paused ones, and resumed ones that skipped)."""
        return await pauses.pauses_of(self, function_ids)

    # -- timeouts ----------------------------------------------------------------------------
    async def expire_deadlines(self, limit: int = 500) -> int:
        """End runs past their start or finish timeout; return how many."""
        def job(tx: Tx) -> int:
            now = now_ms()
            expired = queue_store.expired(tx.conn, now, limit)
            lifecycle.end_runs(self._context(tx, now), [
                lifecycle.Ending(item=item, status=RunStatus.FAILED, error=ErrorInfo(
                    "Timeout", "the run did not start in time" if kind == "start"
                    else "the run did not finish in time"))
                for item, kind in expired])
            return len(expired)

        return await self.db.write(job)

    async def next_deadline_ms(self) -> int | None:
        return await self.db.read(queue_store.next_deadline)

    # -- concurrency slots (engine/flow_concurrency.py) ---------------------------------------
    async def sweep_parked(self, after: str, limit: int) -> tuple[str, int]:
        """Give free concurrency slots to up to `limit` keys' parked items, in key order after
        `after`; the key to go on after ("" at the end) and how many items were unparked. A
        read answers when nothing is parked (the usual case): no write."""
        if not await self.db.read(flow_slots.any_parked):
            return "", 0
        return await self.db.write(
            lambda tx: flow_concurrency.sweep(tx, now_ms(), after, limit))


def _log_ops(batch: OpsBatch, future: asyncio.Future[AckAction]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    for op in batch.ops:
        if isinstance(op, StepCompleted):
            activity.info("run %s step %s completed%s", batch.run_id, op.step_id,
                          _took(op.started_at_ms))
        elif isinstance(op, StepFailed):
            activity.info("run %s step %s failed: %s: %s", batch.run_id, op.step_id,
                          op.error.name, op.error.message)
        elif isinstance(op, RunCompleted):
            activity.info("run %s completed", batch.run_id)
        elif isinstance(op, RunFailed):
            activity.info("run %s failed: %s: %s", batch.run_id, op.error.name, op.error.message)


def _took(started_at_ms: int | None) -> str:
    return "" if started_at_ms is None else f" ({now_ms() - started_at_ms} ms)"
