"""What the ops a worker reports do to its run.

Ops from many workers arrive together; `apply_many` decides each report in memory against the
locked queue rows, then writes the whole set with a handful of set-based statements. A report is
all-or-nothing: when it does not fit (stale lease, an op after the run ended), none of its ops
are written, and the others in the batch still are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stepline_server.engine import lifecycle, matching
from stepline_server.engine.context import TxContext
from stepline_server.engine.starts import RunStart
from stepline_server.errors import InvalidArgument, NotFound, StaleLease, SteplineServerError
from stepline_server.ids import now_ms
from stepline_server.model import (
    NEVER_MS,
    AckAction,
    ErrorInfo,
    EventRecord,
    Invoke,
    Op,
    OpsBatch,
    Planned,
    QueueItem,
    RunCompleted,
    RunFailed,
    RunPolicy,
    RunStatus,
    SendEvents,
    Sleep,
    StepCompleted,
    StepFailed,
    StepStatus,
    WaitForEvent,
    WaitKind,
)
from stepline_server.store import Tx
from stepline_server.store import events as event_store
from stepline_server.store import functions as function_store
from stepline_server.store import queue as queue_store
from stepline_server.store import runs as run_store
from stepline_server.store import waits as wait_store
from stepline_server.telemetry import traceparent

Backoff = Callable[[int], int]
ContextFactory = Callable[[Tx, int], TxContext]


@dataclass(frozen=True, slots=True)
class Timing:
    now_ms: int
    lease_ms: int


@dataclass(frozen=True, slots=True)
class OpsRequest:
    """One Ops message to apply, from the worker connection `owner`."""

    owner: str
    batch: OpsBatch
    timing: Timing
    check_function: bool = True


@dataclass(slots=True)
class _RunState:
    """A run's queue row as the batch changes it."""

    item: QueueItem
    attempt: int
    step_count: int
    due_at_ms: int
    lease_owner: str | None
    lease_until_ms: int | None = None
    deleted: bool = False
    wait_kind: WaitKind | None = None
    wait_step: str | None = None

    def final_attempt(self, non_retriable: bool) -> bool:
        return non_retriable or self.attempt + 1 >= self.item.max_attempts

    def copy(self) -> _RunState:
        return _RunState(self.item, self.attempt, self.step_count, self.due_at_ms,
                         self.lease_owner, self.lease_until_ms, self.deleted, self.wait_kind,
                         self.wait_step)


@dataclass(slots=True)
class _Writes:
    steps: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    finishes: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    waits: list[dict[str, Any]] = field(default_factory=list)
    endings: list[lifecycle.Ending] = field(default_factory=list)
    invokes: list[RunStart] = field(default_factory=list)
    sent: list[EventRecord] = field(default_factory=list)
    new_items: list[dict[str, Any]] = field(default_factory=list)  # parallel steps

    def extend(self, other: _Writes) -> None:
        for name in self.__slots__:
            getattr(self, name).extend(getattr(other, name))


@dataclass(frozen=True, slots=True)
class _Lookups:
    """What some ops need from outside the run, loaded once per batch."""

    functions: dict[str, RunPolicy]
    triggers: dict[str, EventRecord]


def _lookups(tx: Tx, requests: list[OpsRequest]) -> _Lookups:
    invoked = sorted({op.function_id for r in requests for op in r.batch.ops
                      if isinstance(op, Invoke)})
    waiting = sorted({r.batch.run_id for r in requests
                      if any(isinstance(op, WaitForEvent) for op in r.batch.ops)})
    functions = function_store.policies(tx.conn, invoked) if invoked else {}
    triggers: dict[str, EventRecord] = {}
    if waiting:
        event_ids = run_store.event_ids(tx.conn, waiting)
        records = {r.id: r for r in event_store.get_many(tx.conn, sorted(set(
            event_ids.values())))}
        triggers = {run_id: records[event_id] for run_id, event_id in event_ids.items()
                    if event_id in records}
    return _Lookups(functions, triggers)


def apply_many(tx: Tx, requests: list[OpsRequest], backoff: Backoff, context: ContextFactory
               ) -> list[AckAction | SteplineServerError]:
    conn = tx.conn
    locked = queue_store.lock_many(conn, sorted({r.batch.run_id for r in requests}))
    states = {key: _RunState(item, item.attempt, item.step_count, due, item.lease_owner,
                             wait_kind=item.wait_kind, wait_step=item.wait_step)
              for key, (item, due) in locked.items()}
    lookups = _lookups(tx, requests)
    touched: dict[tuple[str, str], _RunState] = {}
    writes = _Writes()
    results: list[AckAction | SteplineServerError] = []
    missing: list[int] = []
    for index, request in enumerate(requests):
        key = request.batch.key
        state = states.get(key)
        if state is None or state.deleted:
            missing.append(index)
            results.append(AckAction.REJECTED)  # replaced below with the precise error
            continue
        try:
            new_state, action, own = _apply_request(request, state.copy(), backoff, lookups)
        except SteplineServerError as exc:
            results.append(exc)
            continue
        states[key] = touched[key] = new_state
        writes.extend(own)
        results.append(action)
        if key[1] and new_state.deleted:
            _parallel_step_done(key[0], states, touched, writes, request.timing.now_ms)
    if missing:
        ended = run_store.statuses(conn, [requests[i].batch.run_id for i in missing])
        for i in missing:
            run_id, step_id = requests[i].batch.key
            status = ended.get(run_id)
            results[i] = (
                NotFound(f"ops.run_id: unknown run {run_id!r}") if status is None
                else StaleLease(f"ops.target_step_id: step {step_id!r} of run {run_id} is no "
                                "longer dispatched") if step_id and not status.ended
                else StaleLease(f"ops.run_id: run {run_id} is {status} and takes no more ops"))
    _flush(tx, touched, writes)
    # Wake other servers only for work back in the queue (retries, suspensions, parallel
    # steps); an ended run frees a slot only on this server, whose dispatcher already knows.
    if writes.new_items or any(not s.deleted and s.lease_owner is None
                               for s in touched.values()):
        tx.notify = True
    if writes.invokes or writes.sent or writes.endings:
        _follow_up(context(tx, now_ms()), writes)
    return results


def _parallel_step_done(run_id: str, states: dict[tuple[str, str], _RunState],
                        touched: dict[tuple[str, str], _RunState], writes: _Writes,
                        now: int) -> None:
    """A parallel step has its result: once none of its siblings is left, the run resumes."""
    if any(k[0] == run_id and k[1] and not s.deleted for k, s in states.items()):
        return
    run = states.get((run_id, ""))
    if run is None or run.deleted or run.wait_kind is not WaitKind.PARALLEL:
        return
    run = run.copy()
    run.wait_kind = None
    run.due_at_ms = now
    states[run_id, ""] = touched[run_id, ""] = run
def _follow_up(ctx: TxContext, writes: _Writes) -> None:
    """Effects on other runs, once this batch's own rows are written."""
    if writes.invokes:
        fresh = event_store.insert(ctx.tx.conn, [s.event for s in writes.invokes], ctx.now,
                                   ctx.dedup_ms)
        ctx.start([s for s, new in zip(writes.invokes, fresh, strict=True) if new])
    if writes.sent:
        lifecycle.ingest(ctx, writes.sent)
    if writes.endings:
        lifecycle.after_end(ctx, writes.endings, waits_deleted=True)


def _flush(tx: Tx, touched: dict[tuple[str, str], _RunState], writes: _Writes) -> None:
    with tx.pipelined():  # nothing below reads a result: one round trip on PostgreSQL
        _write(tx.conn, touched, writes)


def _write(conn: Any, touched: dict[tuple[str, str], _RunState], writes: _Writes) -> None:
    run_store.insert_failures(conn, writes.failures)
    run_store.insert_steps(conn, writes.steps)
    run_store.finish_many(conn, writes.finishes)
    run_store.set_status_many(conn, writes.statuses)
    wait_store.insert(conn, writes.waits)
    wait_store.delete_for_runs(conn, [e.item.run_id for e in writes.endings])
    queue_store.enqueue(conn, writes.new_items)
    queue_store.delete_many(conn, [run_id for (run_id, step_id), s in touched.items()
                                   if s.deleted and not step_id])
    queue_store.delete_items(conn, [key for key, s in touched.items() if s.deleted and key[1]])
    queue_store.update_many(conn, [
        {"b_run_id": run_id, "b_step_id": step_id, "attempt": s.attempt,
         "step_count": s.step_count,
         "due_at_ms": s.due_at_ms, "lease_owner": s.lease_owner,
         "lease_until_ms": s.lease_until_ms,
         "wait_kind": None if s.wait_kind is None else s.wait_kind.value,
         "wait_step": s.wait_step}
        for (run_id, step_id), s in touched.items() if not s.deleted
    ])


def _apply_request(request: OpsRequest, state: _RunState, backoff: Backoff, lookups: _Lookups
                   ) -> tuple[_RunState, AckAction, _Writes]:
    batch = request.batch
    item = state.item
    if request.check_function and item.function_id != batch.function_id:
        raise InvalidArgument(
            "ops.function_id",
            f"run {batch.run_id} belongs to function {item.function_id!r}, "
            f"not {batch.function_id!r}")
    if state.lease_owner != request.owner or item.lease != batch.lease:
        raise StaleLease(
            f"ops.lease: lease {batch.lease} on run {batch.run_id} is no longer held by this "
            "worker; its ops were not applied")
    writes = _Writes()
    if batch.target_step_id:
        return _apply_parallel_step(request, state, backoff, lookups, writes)
    action = AckAction.CONTINUE
    seen_steps: set[str] = set()
    for index, op in enumerate(batch.ops):
        if action is not AckAction.CONTINUE:
            raise InvalidArgument(f"ops.ops[{index}]", "no op may follow one that ends the run")
        action = _apply_op(batch.run_id, index, op, state, request.timing, backoff, writes,
                           seen_steps, lookups)
    if action is AckAction.CONTINUE:
        state.lease_until_ms = request.timing.now_ms + request.timing.lease_ms
    return state, action, writes


def _apply_parallel_step(request: OpsRequest, state: _RunState, backoff: Backoff,
                         lookups: _Lookups, writes: _Writes
                         ) -> tuple[_RunState, AckAction, _Writes]:
    """The report of one parallel step: its result, and nothing else. Done (completed, or
    failed for good), its queue item goes; a failure to retry keeps it, due later."""
    batch = request.batch
    ops = batch.ops
    if len(ops) != 1 or not isinstance(ops[0], StepCompleted | StepFailed) or (
            ops[0].step_id != batch.target_step_id):
        raise InvalidArgument("ops.ops", f"the dispatch of parallel step "
                              f"{batch.target_step_id!r} takes exactly one op: that step's "
                              "step_completed or step_failed")
    action = _apply_op(batch.run_id, 0, ops[0], state, request.timing, backoff, writes, set(),
                       lookups)
    if action is AckAction.CONTINUE:
        state.deleted = True
    return state, AckAction.RELEASE, writes


def _apply_op(run_id: str, index: int, op: Op, state: _RunState, timing: Timing,
              backoff: Backoff, writes: _Writes, seen_steps: set[str], lookups: _Lookups
              ) -> AckAction:
    now = timing.now_ms
    if isinstance(op, Planned):
        return _plan(run_id, index, op, state, now, writes, seen_steps)
    if not isinstance(op, RunCompleted | RunFailed):
        if op.step_id in seen_steps:
            raise InvalidArgument(f"ops.ops[{index}]",
                                  f"step {op.step_id!r} appears twice in one report")
        if state.wait_kind is not None:
            raise InvalidArgument(f"ops.ops[{index}]", "the run is suspended")
    if isinstance(op, Sleep | WaitForEvent | Invoke | SendEvents):
        seen_steps.add(op.step_id)
        return _apply_step_kind(run_id, index, op, state, now, writes, lookups)
    if isinstance(op, StepCompleted):
        seen_steps.add(op.step_id)
        _record_step(writes, run_id, state, op.step_id, op.name, StepStatus.COMPLETED, now,
                     op.started_at_ms, output=op.output)
        return AckAction.CONTINUE
    if isinstance(op, StepFailed):
        seen_steps.add(op.step_id)
        _record_failure(writes, run_id, op.step_id, state.attempt, op.error, now,
                        op.started_at_ms)
        if state.final_attempt(op.non_retriable):
            _record_step(writes, run_id, state, op.step_id, op.name, StepStatus.FAILED, now,
                         op.started_at_ms, error=op.error)
            return AckAction.CONTINUE  # the worker raises the error at the step's call site
        _schedule_retry(state, now, op.retry_after_ms, backoff)
        return AckAction.RELEASE
    if isinstance(op, RunCompleted):
        _finish(writes, run_id, state, RunStatus.COMPLETED, now, output=op.output)
        return AckAction.RELEASE
    if isinstance(op, RunFailed):
        _record_failure(writes, run_id, "", state.attempt, op.error, now, None)
        if state.final_attempt(op.non_retriable):
            _finish(writes, run_id, state, RunStatus.FAILED, now, error=op.error)
        else:
            _schedule_retry(state, now, op.retry_after_ms, backoff)
        return AckAction.RELEASE
    raise InvalidArgument(f"ops.ops[{index}]", f"unsupported op {type(op).__name__}")


def _record_step(writes: _Writes, run_id: str, state: _RunState, step_id: str, name: str,
                 status: StepStatus, now_ms: int, started_at_ms: int | None, *,
                 output: str | None = None, error: ErrorInfo | None = None,
                 kind: str | None = None) -> None:
    writes.steps.append({
        "run_id": run_id, "step_id": step_id, "position": state.step_count, "name": name,
        "status": status.value, "output": output,
        "error": None if error is None else error.to_json(), "attempts": state.attempt + 1,
        "started_at_ms": started_at_ms, "ended_at_ms": now_ms, "kind": kind,
    })
    state.step_count += 1
    state.attempt = 0


def _record_failure(writes: _Writes, run_id: str, step_id: str, attempt: int, error: ErrorInfo,
                    now_ms: int, started_at_ms: int | None) -> None:
    writes.failures.append({
        "run_id": run_id, "step_id": step_id, "attempt": attempt, "error": error.to_json(),
        "started_at_ms": started_at_ms, "ended_at_ms": now_ms,
    })


def _finish(writes: _Writes, run_id: str, state: _RunState, status: RunStatus, now_ms: int, *,
            output: str | None = None, error: ErrorInfo | None = None) -> None:
    writes.finishes.append({
        "b_id": run_id, "status": status.value, "output": output,
        "error": None if error is None else error.to_json(), "ended_at_ms": now_ms,
    })
    writes.endings.append(lifecycle.Ending(state.item, status, output, error))
    state.deleted = True


SEND_KIND = "send"


def _apply_step_kind(run_id: str, index: int, op: Sleep | WaitForEvent | Invoke | SendEvents,
                     state: _RunState, now: int, writes: _Writes, lookups: _Lookups
                     ) -> AckAction:
    if isinstance(op, SendEvents):
        # The events and the step's record commit together: a replay finds the step memoized
        # and sends nothing; a retried report is refused whole (the step exists).
        _record_step(writes, run_id, state, op.step_id, op.name, StepStatus.COMPLETED, now,
                     None, output=json.dumps({"ids": [e.id for e in op.events]}),
                     kind=SEND_KIND)
        writes.sent.extend(op.events)
        return AckAction.CONTINUE
    if isinstance(op, Sleep):
        due = op.until_ms if op.until_ms is not None else now + (op.duration_ms or 0)
        _suspend(writes, run_id, state, op.step_id, op.name, WaitKind.SLEEP, due, now)
        return AckAction.RELEASE
    if isinstance(op, WaitForEvent):
        due = now + op.timeout_ms
        trigger = lookups.triggers.get(run_id)
        try:
            if trigger is None:
                raise InvalidArgument("trigger", f"run {run_id} has no trigger event")
            row = matching.wait_row(run_id, op.step_id, matching.EVENT, op.event, op.expression,
                                    f"ops.ops[{index}].wait_for_event.expression", trigger,
                                    due, now)
        except InvalidArgument as exc:
            _fail_step_now(writes, run_id, state, op.step_id, op.name, now,
                           ErrorInfo("InvalidExpression", str(exc)), WaitKind.EVENT)
            return AckAction.RELEASE
        writes.waits.append(row)
        _suspend(writes, run_id, state, op.step_id, op.name, WaitKind.EVENT, due, now)
        return AckAction.RELEASE
    policy = lookups.functions.get(op.function_id)
    if policy is None:
        _fail_step_now(writes, run_id, state, op.step_id, op.name, now, ErrorInfo(
            "FunctionNotFound", f"cannot invoke {op.function_id!r}: no such function is "
                                "registered"), WaitKind.INVOKE)
        return AckAction.RELEASE
    # The invoked run's trace continues from this step's attempt span (telemetry/tracing.py).
    trace = traceparent.step_traceparent(run_id, state.item.traceparent, op.step_id,
                                         state.item.lease)
    event = EventRecord(invoke_event_id(run_id, op.step_id), lifecycle.FUNCTION_INVOKED,
                        op.data, now, traceparent=trace.header())
    writes.invokes.append(RunStart(op.function_id, policy, event, run_id, op.step_id))
    due = NEVER_MS if op.timeout_ms is None else now + op.timeout_ms
    _suspend(writes, run_id, state, op.step_id, op.name, WaitKind.INVOKE, due, now)
    return AckAction.RELEASE


def _plan(run_id: str, index: int, op: Planned, state: _RunState, now: int, writes: _Writes,
          seen_steps: set[str]) -> AckAction:
    """Parallel steps: one queue item each, with its position reserved; the run waits."""
    ids = [step_id for step_id, _ in op.steps]
    if not ids:
        raise InvalidArgument(f"ops.ops[{index}].planned.steps", "at least one step is required")
    if len(set(ids)) != len(ids) or seen_steps & set(ids):
        raise InvalidArgument(f"ops.ops[{index}].planned.steps", "step ids must be distinct")
    item = state.item
    for offset, (step_id, _) in enumerate(op.steps):
        writes.new_items.append({
            "run_id": run_id, "step_id": step_id, "function_id": item.function_id,
            "due_at_ms": now, "max_attempts": item.max_attempts,
            "step_count": state.step_count + offset, "parent_run_id": item.parent_run_id,
            "parent_step_id": item.parent_step_id, "traceparent": item.traceparent})
    seen_steps.update(ids)
    state.step_count += len(ids)
    state.attempt = 0
    state.due_at_ms = NEVER_MS
    state.lease_owner = None
    state.lease_until_ms = None
    state.wait_kind = WaitKind.PARALLEL
    state.wait_step = None
    return AckAction.RELEASE


def invoke_event_id(run_id: str, step_id: str) -> str:
    digest = hashlib.sha256(f"{run_id}\0{step_id}".encode()).hexdigest()[:32]
    return f"invoke-{digest}"


_PENDING = {WaitKind.SLEEP: (StepStatus.SLEEPING, RunStatus.SLEEPING),
            WaitKind.EVENT: (StepStatus.WAITING, RunStatus.WAITING),
            WaitKind.INVOKE: (StepStatus.INVOKING, RunStatus.WAITING)}


def _suspend(writes: _Writes, run_id: str, state: _RunState, step_id: str, name: str,
             kind: WaitKind, due_ms: int, now_ms: int) -> None:
    """The run waits, holding no worker: its step is written as pending until it resumes."""
    step_status, run_status = _PENDING[kind]
    writes.steps.append({
        "run_id": run_id, "step_id": step_id, "position": state.step_count, "name": name,
        "status": step_status.value, "output": None, "error": None, "attempts": 1,
        "started_at_ms": now_ms, "ended_at_ms": min(due_ms, NEVER_MS), "kind": kind.value,
    })
    writes.statuses.append({"b_id": run_id, "status": run_status.value})
    state.step_count += 1
    state.attempt = 0
    state.due_at_ms = due_ms
    state.lease_owner = None
    state.lease_until_ms = None
    state.wait_kind = kind
    state.wait_step = step_id


def _fail_step_now(writes: _Writes, run_id: str, state: _RunState, step_id: str, name: str,
                   now_ms: int, error: ErrorInfo, kind: WaitKind) -> None:
    """A step that cannot begin (bad expression, unknown function) fails for good; the run is
    dispatched again at once and the step raises its error where it was called."""
    _record_step(writes, run_id, state, step_id, name, StepStatus.FAILED, now_ms, now_ms,
                 error=error, kind=kind.value)
    state.due_at_ms = now_ms
    state.lease_owner = None
    state.lease_until_ms = None


def _schedule_retry(state: _RunState, now_ms: int, retry_after_ms: int | None,
                    backoff: Backoff) -> None:
    state.attempt += 1
    delay = retry_after_ms if retry_after_ms is not None else backoff(state.attempt)
    state.due_at_ms = now_ms + max(0, delay)
    state.lease_owner = None
    state.lease_until_ms = None
