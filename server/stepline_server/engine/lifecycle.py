"""How runs begin, resume and end inside a write transaction.

- `ingest`: new events start the runs of their subscribers (filters in CEL), satisfy pending
  step.wait_for_event waits and cancel runs through cancel_on.
- `resume`: a suspended run (sleep, wait, invoke) gets its step's result and becomes ready.
- `end_runs` / `after_end`: a run ends; its waits go, an invoking parent resumes, and the system
  events stepline/function.finished and stepline/function.failed are sent when someone listens.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from stepline_server.engine import expressions, flow_concurrency, matching, pauses
from stepline_server.engine.context import TxContext
from stepline_server.engine.observe import RunEnd
from stepline_server.engine.starts import RunStart
from stepline_server.model import (
    ErrorInfo,
    EventRecord,
    MatchKind,
    QueueItem,
    RunStatus,
    StepStatus,
    WaitKind,
)
from stepline_server.store import events as event_store
from stepline_server.store import functions as function_store
from stepline_server.store import queue as queue_store
from stepline_server.store import runs as run_store
from stepline_server.store import waits as wait_store
from stepline_server.store.records import PendingStepEnd, RunFinish

log = logging.getLogger(__name__)
activity = logging.getLogger("stepline.runs")

FUNCTION_FINISHED = "stepline/function.finished"
FUNCTION_FAILED = "stepline/function.failed"
FUNCTION_INVOKED = "stepline/function.invoked"
SYSTEM_EVENTS = (FUNCTION_FINISHED, FUNCTION_FAILED)


# -- events in ----------------------------------------------------------------------------------
def ingest(ctx: TxContext, records: list[EventRecord]) -> list[str]:
    """Store events; start the runs they trigger; resume or cancel the runs waiting for them.
    Returns the ids of the runs started. Repeats of known event ids do nothing."""
    conn = ctx.tx.conn
    fresh = event_store.insert(conn, records, ctx.now, ctx.dedup_ms)
    new = [r for r, is_new in zip(records, fresh, strict=True) if is_new]
    if not new:
        return []
    subscribers = function_store.subscribers(conn, sorted({r.name for r in new}))
    starts: list[RunStart] = []
    for record in new:
        variables = None
        for sub in subscribers[record.name]:
            if sub.expression:
                variables = variables or {"event": expressions.event_variables(record)}
                if not _passes(ctx, sub.expression, variables, sub.function_id, record):
                    continue
            starts.append(RunStart(function_id=sub.function_id, policy=sub.policy, event=record))
    starts = pauses.divert(ctx, starts) if starts else starts
    run_ids = ctx.start(starts) if starts else []
    _settle_waits(ctx, new)
    if ctx.observers:
        observers = ctx.observers
        ctx.tx.after_commit(lambda: observers.events_accepted(new, run_ids))
    return run_ids


def _passes(ctx: TxContext, source: str, variables: dict[str, Any], function_id: str,
            record: EventRecord) -> bool:
    """Whether a trigger's `if` lets `record` start a run of `function_id`, within the
    budget."""
    verdict = expressions.compiled(source).matches_within(variables, ctx.filter_budget_ns)
    if verdict is None:
        ctx.filter_skipped("trigger", f"function {function_id}", record)
    return verdict is True


def _settle_waits(ctx: TxContext, records: list[EventRecord]) -> None:
    matches = matching.match(ctx, records)
    if not matches:
        return
    waiting = [m for m in matches if m.kind is MatchKind.WAIT_FOR_EVENT]
    cancels = {m.run_id: m for m in matches if m.kind is MatchKind.CANCEL}
    resume(ctx, [
        Resumption(run_id=m.run_id, step_id=m.step_id, kind=WaitKind.WAIT_FOR_EVENT,
                   status=StepStatus.COMPLETED, output=event_json(m.event))
        for m in waiting if m.run_id not in cancels
    ])
    if cancels:
        locked = queue_store.lock_many(ctx.tx.conn, sorted(cancels))
        by_run: dict[str, dict[tuple[str, str], tuple[QueueItem, int]]] = {}
        for key, entry in locked.items():
            by_run.setdefault(key[0], {})[key] = entry
        end_runs(ctx, [
            Ending(item=items[run_id, ""][0], status=RunStatus.CANCELLED, error=ErrorInfo(
                "Cancelled", f"cancelled by event {cancels[run_id].event.name} "
                             f"({cancels[run_id].event.id})"), holders=holders(items))
            for run_id, items in by_run.items() if (run_id, "") in items
        ])


def event_json(record: EventRecord) -> str:
    """An event as a step's result (wait_for_event) and in system events."""
    return json.dumps({
        "id": record.id, "name": record.name, "data": json.loads(record.data),
        "ts": record.ts_ms, "user": json.loads(record.user) if record.user else None,
    }, separators=(",", ":"))


# -- resuming -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Resumption:
    run_id: str
    step_id: str
    kind: WaitKind
    status: StepStatus
    output: str | None = None
    error: ErrorInfo | None = None


def resume(ctx: TxContext, resumptions: list[Resumption]) -> int:
    """Give suspended runs their step's result and make them ready. A run that is no longer
    suspended on that step (resumed by someone else, ended) is left alone."""
    if not resumptions:
        return 0
    conn = ctx.tx.conn
    locked = queue_store.lock_many(conn, sorted({r.run_id for r in resumptions}))
    due: list[Resumption] = []
    for r in resumptions:
        entry = locked.pop((r.run_id, ""), None)  # one resumption per run
        if entry is None:
            continue
        item = entry[0]
        if item.wait_kind is r.kind and item.wait_step == r.step_id:
            due.append(r)
    if not due:
        return 0
    run_store.end_pending_steps(conn, [
        PendingStepEnd(run_id=r.run_id, step_id=r.step_id, status=r.status, output=r.output,
                       error=r.error, ended_at_ms=ctx.now) for r in due])
    run_ids = [r.run_id for r in due]
    queue_store.resume_many(conn, run_ids, ctx.now)
    run_store.set_status_many(conn, [(r, RunStatus.QUEUED) for r in run_ids])
    wait_store.delete_many(conn, [(r.run_id, r.step_id) for r in due
                                  if r.kind is WaitKind.WAIT_FOR_EVENT])
    ctx.tx.notify = True
    for r in due:
        activity.info("run %s resumed (%s %s)", r.run_id, r.kind.value, r.step_id)
    return len(due)


def expire_waits(ctx: TxContext, items: list[QueueItem]) -> None:
    """Claimed runs whose suspension is due: a sleep is over; a wait or an invoke timed out.
    Their steps get results before the memo is read, in the claim's transaction."""
    ends = []
    for item in items:
        if item.wait_kind is None or item.wait_step is None:
            continue
        if item.wait_kind is WaitKind.INVOKE:
            ends.append(PendingStepEnd(
                run_id=item.run_id, step_id=item.wait_step, status=StepStatus.FAILED,
                ended_at_ms=ctx.now,
                error=ErrorInfo("InvokeTimeout", "the invoked run did not finish in time")))
        else:
            ends.append(PendingStepEnd(run_id=item.run_id, step_id=item.wait_step,
                                       status=StepStatus.COMPLETED, ended_at_ms=ctx.now,
                                       output="null"))
    if not ends:
        return
    conn = ctx.tx.conn
    run_store.end_pending_steps(conn, ends)
    queue_store.clear_waits(conn, [end.run_id for end in ends])
    wait_store.delete_many(conn, [(i.run_id, i.wait_step) for i in items
                                  if i.wait_kind is WaitKind.WAIT_FOR_EVENT and i.wait_step])


# -- ending -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Ending:
    item: QueueItem  # the run's own queue item
    status: RunStatus
    output: str | None = None
    error: ErrorInfo | None = None
    # Workers holding the run or one of its parallel steps, to be told (end_runs).
    holders: tuple[str, ...] | None = None


def holders(items: dict[tuple[str, str], tuple[QueueItem, int]]) -> tuple[str, ...]:
    """Lease owners among a run's locked queue items."""
    return tuple(sorted({item.lease_owner for item, _ in items.values() if item.lease_owner}))


def end_runs(ctx: TxContext, endings: list[Ending]) -> None:
    """End runs that have not ended (cancel, timeout, lost workers): write the end, drop the
    queue items, tell the workers holding them, then `after_end`."""
    if not endings:
        return
    conn = ctx.tx.conn
    run_store.finish_many(conn, [
        RunFinish(run_id=e.item.run_id, status=e.status, ended_at_ms=ctx.now, output=e.output,
                  error=e.error) for e in endings])
    queue_store.delete_many(conn, [e.item.run_id for e in endings])
    flow_concurrency.freed(ctx.tx, [e.item for e in endings], ctx.now)
    for e in endings:
        reason = e.error.message if e.error is not None else f"the run {e.status.value}"
        for owner in e.holders if e.holders is not None else (e.item.lease_owner,):
            ctx.cancel_after_commit(e.item.run_id, owner, reason)
        activity.info("run %s %s%s", e.item.run_id, e.status.value,
                      f": {e.error.message}" if e.error else "")
    after_end(ctx, endings)


def after_end(ctx: TxContext, endings: list[Ending], *, waits_deleted: bool = False) -> None:
    """What follows runs' ends, once their rows are written (with their waits, if
    `waits_deleted`)."""
    conn = ctx.tx.conn
    if not waits_deleted:
        wait_store.delete_for_runs(conn, [e.item.run_id for e in endings])
    if ctx.observers:
        observers = ctx.observers
        ends = [RunEnd(run_id=e.item.run_id, function_id=e.item.function_id, status=e.status,
                       error=e.error, ended_at_ms=ctx.now, traceparent=e.item.traceparent)
                for e in endings]
        ctx.tx.after_commit(lambda: observers.runs_ended(ends))
    resume(ctx, [
        Resumption(run_id=e.item.parent_run_id, step_id=e.item.parent_step_id,
                   kind=WaitKind.INVOKE,
                   status=StepStatus.COMPLETED if e.status is RunStatus.COMPLETED
                   else StepStatus.FAILED,
                   output=e.output if e.status is RunStatus.COMPLETED else None,
                   error=None if e.status is RunStatus.COMPLETED else (
                       e.error or ErrorInfo("Error", f"invoked run {e.status.value}")))
        for e in endings if e.item.parent_run_id and e.item.parent_step_id
    ])
    listened = ctx.system_listeners(conn)
    if listened:
        _system_events(ctx, endings, listened)


def _system_events(ctx: TxContext, endings: list[Ending], listened: frozenset[str]) -> None:
    conn = ctx.tx.conn
    triggers = run_store.events_of(conn, [e.item.run_id for e in endings])
    records: list[EventRecord] = []
    for e in endings:
        trigger = triggers.get(e.item.run_id)
        if trigger is not None and trigger.name in SYSTEM_EVENTS:
            continue  # a listener's own end announces nothing: no feedback loops
        data = {
            "function_id": e.item.function_id, "run_id": e.item.run_id,
            "status": e.status.value,
            "output": json.loads(e.output) if e.output is not None else None,
            "error": None if e.error is None else {
                "name": e.error.name, "message": e.error.message, "stack": e.error.stack},
            "event": None if trigger is None else json.loads(event_json(trigger)),
        }
        text = json.dumps(data, separators=(",", ":"))
        if FUNCTION_FINISHED in listened:
            records.append(EventRecord(id=f"{e.item.run_id}:finished", name=FUNCTION_FINISHED,
                                       data=text, ts_ms=ctx.now))
        if FUNCTION_FAILED in listened and e.status is RunStatus.FAILED:
            records.append(EventRecord(id=f"{e.item.run_id}:failed", name=FUNCTION_FAILED,
                                       data=text, ts_ms=ctx.now))
    if records:
        ingest(ctx, records)
