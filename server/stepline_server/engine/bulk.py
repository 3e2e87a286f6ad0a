"""Bulk operations: cancel or replay every run of a function that matches a selection (a time
range, run statuses, a CEL filter over the trigger event), as durable work of its own.

An operation is a row (store/bulk.py). `BulkRunner`, one per server, takes the oldest running
operation it may lease and works through its runs oldest first in batches of `batch_size`, each
one writer transaction that leases the row, cancels or replays the batch's matching runs, and
moves the cursor past them. A restart resumes at the cursor; nothing is acted on twice: the
cursor commits with the batch, a cancelled run has no queue item left to cancel, and a replay's
source is recorded (bulk_operation_runs) in the transaction that starts it. On PostgreSQL the
lease (and the row lock each batch takes) keeps the other replicas off an operation in progress.
The same runner starts the runs held by functions that were paused and are resumed
(engine/pauses.py).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from stepline_server.controls import BulkKind, BulkOperation, BulkState, Selection
from stepline_server.engine import expressions, lifecycle
from stepline_server.engine.context import TxContext
from stepline_server.engine.starts import RunStart
from stepline_server.engine.timed import TimedLoop
from stepline_server.errors import FailedPrecondition, NotFound
from stepline_server.ids import new_id, now_ms
from stepline_server.model import ErrorInfo, EventRecord, QueueItem, RunStatus
from stepline_server.store import bulk as bulk_store
from stepline_server.store import events as event_store
from stepline_server.store import functions as function_store
from stepline_server.store import queue as queue_store
from stepline_server.store.bulk import Candidate, Progress

if TYPE_CHECKING:
    from stepline_server.engine.core import Engine

log = logging.getLogger(__name__)
# Runs read per query when counting a selection with a CEL filter (each read is one page).
COUNT_PAGE = 1000


# -- matching -----------------------------------------------------------------------------------
def matching(conn: Connection, expression: str | None, found: list[Candidate], budget_ns: int
             ) -> list[Candidate]:
    """The candidates whose trigger event passes `expression` (all without one). An evaluation
    over the CEL budget (cel_cost.py) counts as no match, as it does for trigger filters."""
    if not expression or not found:
        return found
    events = {e.id: e for e in event_store.get_many(conn, sorted({c.event_id for c in found}))}
    return [c for c in found if c.event_id in events
            and passes(expression, events[c.event_id], budget_ns)]


def passes(expression: str, event: EventRecord, budget_ns: int) -> bool:
    variables = {"event": expressions.event_variables(event)}
    return expressions.compiled(expression).matches_within(variables, budget_ns) is True


async def count(engine: Engine, selection: Selection, max_runs: int | None) -> int:
    """How many runs the selection matches now (at most `max_runs`): one indexed count without
    a CEL filter; with one, the runs are read a page at a time (COUNT_PAGE) and filtered."""
    if not selection.expression:
        total = await engine.db.read(lambda conn: bulk_store.count(conn, selection))
        return total if max_runs is None else min(total, max_runs)
    budget = engine.filter_budget_ns
    total, cursor = 0, None
    while max_runs is None or total < max_runs:
        def page(conn: Connection, after: tuple[int, str] | None = cursor
                 ) -> tuple[int, list[Candidate]]:
            found = bulk_store.candidates(conn, selection, after, COUNT_PAGE)
            return len(matching(conn, selection.expression, found, budget)), found

        matched, found = await engine.db.read(page)
        total += matched
        if len(found) < COUNT_PAGE:
            break
        cursor = (found[-1].created_at_ms, found[-1].run_id)
    return total if max_runs is None else min(total, max_runs)


# -- starting, listing, stopping ----------------------------------------------------------------
async def start(engine: Engine, *, kind: BulkKind, selection: Selection, max_runs: int | None,
                reason: str | None, dry_run: bool) -> tuple[int, BulkOperation | None]:
    """Count the matching runs; unless `dry_run`, store the operation for the runners. Returns
    the count and the operation (None for a dry run)."""
    info = await engine.get_function(selection.function_id, "selection.function_id")
    if kind is BulkKind.REPLAY and info.archived:
        raise FailedPrecondition(f"selection.function_id: function {info.spec.id} is archived; "
                                 "register it to replay its runs")
    selection = with_until(selection, now_ms())
    total = await count(engine, selection, max_runs)
    if dry_run:
        return total, None
    now = max(now_ms(), selection.created_before_ms)
    operation = BulkOperation(
        id=new_id(), kind=kind, selection=selection, max_runs=max_runs, reason=reason,
        state=BulkState.RUNNING, total=total, done=0, applied=0, created_at_ms=now,
        updated_at_ms=now, ended_at_ms=None, cursor=None)
    await engine.db.write(lambda tx: bulk_store.create(tx.conn, operation))
    engine.wake_bulk()
    return total, operation


async def get(engine: Engine, operation_id: str) -> BulkOperation:
    found = await engine.db.read(lambda conn: bulk_store.get(conn, operation_id))
    if found is None:
        raise NotFound(f"operation_id: no bulk operation {operation_id!r}")
    return found


async def stop(engine: Engine, operation_id: str) -> BulkOperation:
    """Stop a running operation: the batch in progress (if any) is its last."""
    stopped = await engine.db.write(lambda tx: bulk_store.stop(tx.conn, operation_id, now_ms()))
    operation = await get(engine, operation_id)
    if not stopped:
        raise FailedPrecondition(f"operation_id: bulk operation {operation_id} is "
                                 f"{operation.state.value}, not running")
    return operation


# -- one batch (writer thread) ------------------------------------------------------------------
def batch(ctx: TxContext, operation_id: str, owner: str, *, size: int, lease_ms: int) -> bool:
    """Work one batch of the operation if `owner` may; return whether more batches are left."""
    conn = ctx.tx.conn
    operation = bulk_store.take(conn, operation_id, owner, ctx.now, ctx.now + lease_ms)
    if operation is None:
        return False
    found = bulk_store.candidates(conn, operation.selection, operation.cursor, size)
    chosen = matching(conn, operation.selection.expression, found, ctx.filter_budget_ns)
    if operation.kind is BulkKind.CANCEL:
        applied = _cancel(ctx, operation, chosen)
    else:
        if operation.max_runs is not None:
            chosen = chosen[:max(0, operation.max_runs - operation.applied)]
        applied = _replay(ctx, operation, chosen)
    full = (operation.max_runs is not None
            and operation.applied + applied >= operation.max_runs)
    last = chosen[-1] if full and chosen else (found[-1] if found else None)
    bulk_store.advance(conn, operation, Progress(
        cursor=None if last is None else (last.created_at_ms, last.run_id), done=len(chosen),
        applied=applied, finished=full or len(found) < size), ctx.now)
    return not full and len(found) == size


def _cancel(ctx: TxContext, operation: BulkOperation, chosen: list[Candidate]) -> int:
    """Cancel the chosen runs that have not ended meanwhile; return how many."""
    if not chosen:
        return 0
    locked = queue_store.lock_many(ctx.tx.conn, [c.run_id for c in chosen])
    by_run: dict[str, dict[tuple[str, str], tuple[QueueItem, int]]] = {}
    for key, entry in locked.items():
        by_run.setdefault(key[0], {})[key] = entry
    error = ErrorInfo("Cancelled", operation.reason or f"cancelled by bulk operation "
                                                       f"{operation.id}")
    endings = [lifecycle.Ending(item=items[run_id, ""][0], status=RunStatus.CANCELLED,
                                error=error, holders=lifecycle.holders(items))
               for run_id, items in by_run.items() if (run_id, "") in items]
    lifecycle.end_runs(ctx, endings)
    return len(endings)


def _replay(ctx: TxContext, operation: BulkOperation, chosen: list[Candidate]) -> int:
    """Replay the chosen runs this operation has not replayed yet; return how many. A function
    no longer registered (or archived) replays nothing: its runs count as done, not applied."""
    conn = ctx.tx.conn
    done = bulk_store.replayed(conn, operation.id, [c.run_id for c in chosen])
    todo = [c for c in chosen if c.run_id not in done]
    state = function_store.state_of(conn, operation.selection.function_id)
    if not todo or state is None or state[1]:
        return 0
    events = {e.id: e for e in event_store.get_many(conn, sorted({c.event_id for c in todo}))}
    todo = [c for c in todo if c.event_id in events]  # an event no longer stored: skipped
    new = ctx.start([RunStart(function_id=operation.selection.function_id, policy=state[0],
                              event=events[c.event_id], source_run_id=c.run_id) for c in todo])
    bulk_store.record_replays(conn, operation.id, [
        (c.run_id, run_id) for c, run_id in zip(todo, new, strict=True)])
    return len(new)


# -- the loop -----------------------------------------------------------------------------------
class BulkRunner(TimedLoop):
    """One per server: works on one bulk operation at a time, batch after batch, and starts the
    runs held by resumed functions. Stops between two batches (each batch is one transaction:
    whatever happens, the operation resumes at its committed cursor)."""

    what = "bulk operations round"

    def __init__(self, engine: Engine, owner: str, poll_seconds: float) -> None:
        super().__init__(poll_seconds)
        self.engine = engine
        self.owner = owner

    async def _round(self) -> float:
        more_held = await self.engine.start_held_runs()
        operation_id = await self.engine.db.read(
            lambda conn: bulk_store.workable(conn, self.owner, now_ms()))
        more = False
        if operation_id is not None:
            more = await self.engine.bulk_batch(operation_id, self.owner)
        return 0.0 if more or more_held else self.poll_seconds

    async def release(self) -> None:
        """Give up this server's leases (at shutdown): another server may go on at once."""
        await self.engine.db.write(lambda tx: bulk_store.release(tx.conn, self.owner))


def with_until(selection: Selection, now: int) -> Selection:
    """A selection's range ends now at the latest: the runs an operation makes are outside."""
    return replace(selection, created_before_ms=min(selection.created_before_ms, now))
