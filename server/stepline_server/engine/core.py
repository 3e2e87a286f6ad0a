"""The engine's face: what ingress and dispatch call. Decisions here, persistence in the store."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Protocol

from stepline_server.engine import ops as ops_logic
from stepline_server.engine.retry import backoff_ms
from stepline_server.errors import FailedPrecondition, InvalidArgument, NotFound
from stepline_server.ids import new_id, now_ms
from stepline_server.model import (
    AckAction,
    Dispatch,
    ErrorInfo,
    EventRecord,
    FunctionChanges,
    FunctionSpec,
    OpsBatch,
    QueueItem,
    RunCompleted,
    RunFailed,
    RunRecord,
    RunStatus,
    StepCompleted,
    StepFailed,
)
from stepline_server.settings import Settings
from stepline_server.store import Database, Tx
from stepline_server.store import events as event_store
from stepline_server.store import functions as function_store
from stepline_server.store import queue as queue_store
from stepline_server.store import runs as run_store

log = logging.getLogger(__name__)
# Run and step activity, one line each: quiet under `serve`, shown by `stepline dev`.
activity = logging.getLogger("stepline.runs")


class Placement(Protocol):
    """Hands new runs to local workers directly (implemented by dispatch)."""

    def reserve(self, function_id: str) -> str | None:
        """Take a free slot of a local worker serving the function; return its owner id.
        Called from the writer thread."""

    def deliver(self, owner: str, work: Dispatch) -> None:
        """After the commit: send the leased run to the worker that reserved the slot."""

    def unreserve(self, owners: list[str]) -> None:
        """The commit failed: give the slots back."""


class Engine:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._on_ready: list[Callable[[], None]] = []
        self._placement: Placement | None = None
        self._on_cancel: list[Callable[[str, str], None]] = []
        self._lease_ms = int(settings.lease_seconds * 1000)
        backoff = functools.partial(
            backoff_ms, base_seconds=settings.retry_base_seconds,
            max_seconds=settings.retry_max_seconds,
        )
        # One object, so the writer can group adjacent reports into one set-based apply.
        self._apply_ops = functools.partial(ops_logic.apply_many, backoff=backoff)

    # -- hooks for dispatch ----------------------------------------------------------------
    def on_ready_work(self, callback: Callable[[], None]) -> None:
        """Called when runs may have become claimable (new runs, released leases)."""
        self._on_ready.append(callback)

    def set_placement(self, placement: Placement) -> None:
        """Let new runs go straight to local workers with free slots (see send_events)."""
        self._placement = placement

    def on_cancel(self, callback: Callable[[str, str], None]) -> None:
        """Called with (run_id, lease_owner) when a leased run is cancelled."""
        self._on_cancel.append(callback)

    def _ready(self) -> None:
        for callback in self._on_ready:
            callback()

    # -- events ------------------------------------------------------------------------------
    async def send_events(self, records: list[EventRecord]) -> list[str]:
        """Commit events and the runs they start; return the new run ids.

        A new run whose function has a local worker with a free slot is leased to it in the same
        transaction and handed over right after the commit: no claim round trip.
        """
        dedup_ms = int(self.settings.event_dedup_seconds * 1000)
        placement = self._placement
        reserved: list[str] = []

        def job(tx: Tx) -> tuple[list[str], list[tuple[str, Dispatch]]]:
            now = now_ms()
            fresh = event_store.insert(tx.conn, records, now, dedup_ms)
            new = [r for r, is_new in zip(records, fresh, strict=True) if is_new]
            if not new:
                return [], []
            subscribers = function_store.subscribers(tx.conn, sorted({r.name for r in new}))
            run_ids: list[str] = []
            placed: list[tuple[str, Dispatch]] = []
            run_rows: list[dict[str, object]] = []
            queue_rows: list[dict[str, object]] = []
            for record in new:
                for sub in subscribers[record.name]:
                    run_id = new_id()
                    run_ids.append(run_id)
                    owner = placement.reserve(sub.function_id) if placement else None
                    run = {"id": run_id, "function_id": sub.function_id, "event_id": record.id,
                           "status": RunStatus.QUEUED.value, "max_attempts": sub.max_attempts,
                           "created_at_ms": now, "started_at_ms": None}
                    item = {"run_id": run_id, "function_id": sub.function_id, "due_at_ms": now,
                            "max_attempts": sub.max_attempts}
                    if owner is not None:
                        reserved.append(owner)
                        run |= {"status": RunStatus.RUNNING.value, "started_at_ms": now}
                        item |= {"lease": 1, "lease_owner": owner,
                                 "lease_until_ms": now + self._lease_ms}
                        placed.append((owner, Dispatch(run_id, sub.function_id, 1, 0,
                                                       sub.max_attempts, record, ())))
                    else:
                        tx.notify = True
                    run_rows.append(run)
                    queue_rows.append(item)
            with tx.pipelined():
                run_store.create(tx.conn, run_rows)
                queue_store.enqueue(tx.conn, queue_rows)
            return run_ids, placed

        try:
            run_ids, placed = await self.db.write(job)
        except BaseException:
            if placement and reserved:
                placement.unreserve(reserved)
            raise
        for owner, work in placed:
            assert placement is not None
            placement.deliver(owner, work)
        if len(placed) < len(run_ids):
            self._ready()
        return run_ids

    # -- functions ---------------------------------------------------------------------------
    async def register_functions(
        self, app_id: str, specs: list[FunctionSpec], *, archive_missing: bool
    ) -> FunctionChanges:
        def job(tx: Tx) -> FunctionChanges:
            return function_store.register(
                tx.conn, app_id, specs, now_ms(), archive_missing=archive_missing)

        changes = await self.db.write(job)
        if changes.created or changes.updated:
            log.info("app %s: functions created %s, updated %s, archived %s",
                     app_id, changes.created, changes.updated, changes.archived)
        return changes

    # -- dispatch ----------------------------------------------------------------------------
    async def claim(self, owner: str, function_ids: list[str], limit: int) -> list[Dispatch]:
        """Lease up to `limit` ready runs to a worker and load what it needs to replay them."""

        def job(tx: Tx) -> list[Dispatch]:
            now = now_ms()
            items = queue_store.claim(tx.conn, owner, function_ids, limit, now, self._lease_ms)
            items = _give_up_lost(tx, items, now)
            if not items:
                return []
            run_ids = [item.run_id for item in items]
            run_store.mark_started(tx.conn, run_ids, now)
            events = run_store.events_of(tx.conn, run_ids)
            # step_count counts the run's step rows: a run without any needs no memo query.
            memo = run_store.memo(tx.conn, [item.run_id for item in items if item.step_count])
            return [
                Dispatch(item.run_id, item.function_id, item.lease, item.attempt,
                         item.max_attempts, events[item.run_id],
                         tuple(memo.get(item.run_id, ())))
                for item in items
            ]

        works = await self.db.write(job)
        if activity.isEnabledFor(logging.INFO):
            for work in works:
                activity.info("run %s %s dispatched (attempt %d)", work.run_id, work.function_id,
                              work.attempt + 1)
        return works

    async def next_due_ms(self, function_ids: list[str]) -> int | None:
        return await self.db.read(lambda conn: queue_store.next_due(conn, function_ids))

    def submit_ops(self, owner: str, batch: OpsBatch) -> asyncio.Future[AckAction]:
        """Queue a worker's ops for commit (in arrival order); the future gives the ack."""
        request = ops_logic.OpsRequest(owner, batch, ops_logic.Timing(now_ms(), self._lease_ms))
        future: asyncio.Future[AckAction] = self.db.submit_batched(self._apply_ops, request)
        if activity.isEnabledFor(logging.INFO):
            future.add_done_callback(lambda f: _log_ops(batch, f))
        return future

    async def fail_attempt(self, owner: str, run_id: str, lease: int, error: ErrorInfo) -> None:
        """Count a worker's unusable report (bad ops) as a failed attempt of the run, so a run
        whose worker keeps sending bad ops retries with backoff and then fails, readably."""
        request = ops_logic.OpsRequest(
            owner, OpsBatch(run_id, lease, "", (RunFailed(error),)),
            ops_logic.Timing(now_ms(), self._lease_ms), check_function=False)
        await self.db.submit_batched(self._apply_ops, request)
        self._ready()

    async def heartbeat(self, owner: str) -> None:
        until = now_ms() + self._lease_ms
        await self.db.write(lambda tx: queue_store.extend(tx.conn, owner, until))

    async def release(self, owner: str, run_ids: list[str] | None = None, *,
                      lost: bool = False) -> int:
        """Give runs back to the queue; `lost`: their worker died, using up the attempt."""
        def job(tx: Tx) -> int:
            items = queue_store.release(tx.conn, owner, run_ids, lost=lost)
            # A run whose last allowed attempt was just lost ends here, not at the next claim.
            remaining = _give_up_lost(tx, items, now_ms())
            tx.notify = bool(remaining)
            return len(remaining)

        count = await self.db.write(job)
        if count:
            self._ready()
        return count

    async def release_owners_like(self, prefix: str) -> int:
        count = await self.db.write(lambda tx: queue_store.release_owners_like(tx.conn, prefix))
        if count:
            self._ready()
        return count

    async def release_all(self) -> int:
        """Only for a server that owns its database alone (SQLite): every lease is stale."""
        return await self.db.write(lambda tx: queue_store.release_all(tx.conn))

    # -- runs --------------------------------------------------------------------------------
    async def get_run(self, run_id: str) -> RunRecord:
        run = await self.db.read(lambda conn: run_store.get(conn, run_id))
        if run is None:
            raise NotFound(f"run_id: no run {run_id!r}")
        return run

    async def list_runs(
        self, *, function_id: str | None, status: RunStatus | None, limit: int,
        page_token: str,
    ) -> tuple[list[RunRecord], str]:
        cursor = None
        if page_token:
            try:
                cursor = run_store.decode_cursor(page_token)
            except ValueError as exc:
                raise InvalidArgument("page_token", str(exc)) from None
        return await self.db.read(lambda conn: run_store.list_(
            conn, function_id=function_id, status=status, limit=limit, cursor=cursor))

    async def cancel_run(self, run_id: str, reason: str) -> RunRecord:
        def job(tx: Tx) -> str | None:
            item = queue_store.lock(tx.conn, run_id)
            if item is None:
                status = run_store.status_of(tx.conn, run_id)
                if status is None:
                    raise NotFound(f"run_id: no run {run_id!r}")
                raise FailedPrecondition(f"run_id: run {run_id} already ended ({status})")
            run_store.finish(tx.conn, run_id, RunStatus.CANCELLED, now_ms(),
                             error=ErrorInfo("Cancelled", reason or "cancelled by request"))
            queue_store.delete(tx.conn, run_id)
            return item.lease_owner

        owner = await self.db.write(job)
        if owner:
            for callback in self._on_cancel:
                callback(run_id, owner)
        return await self.get_run(run_id)



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


def _give_up_lost(tx: Tx, items: list[QueueItem], now: int) -> list[QueueItem]:
    """Fail the runs whose workers were lost on every allowed attempt (a step that crashes its
    process must not be dispatched forever); return the others."""
    lost = [item for item in items if item.attempt >= item.max_attempts]
    if not lost:
        return items
    error = ErrorInfo("WorkerLost", "the worker executing this run was lost (crash, kill or "
                      "broken connection) on every allowed attempt")
    run_store.insert_failures(tx.conn, [
        {"run_id": item.run_id, "step_id": "", "attempt": item.attempt, "error": error.to_json(),
         "started_at_ms": None, "ended_at_ms": now} for item in lost])
    run_store.finish_many(tx.conn, [
        {"b_id": item.run_id, "status": RunStatus.FAILED.value, "output": None,
         "error": error.to_json(), "ended_at_ms": now} for item in lost])
    queue_store.delete_many(tx.conn, [item.run_id for item in lost])
    for item in lost:
        log.warning("run %s failed: its worker was lost on all %d attempts", item.run_id,
                    item.max_attempts)
    return [item for item in items if item.attempt < item.max_attempts]
