"""What the ops a worker reports do to its run.

Ops from many workers arrive together; `apply_many` decides each report in memory against the
locked queue rows (`apply_report`, no I/O), then writes the whole set with a handful of
set-based statements. A report is all-or-nothing: when it does not fit (stale lease, an op after
the run ended), none of its ops are written, and the others in the batch still are. The lease
is checked here and only here; what a failed attempt leads to is attempts.py's decision.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

from stepline_server.engine import attempts, flow_concurrency, lifecycle, matching
from stepline_server.engine.context import TxContext
from stepline_server.engine.run_limits import RunLimits, StateSizes
from stepline_server.engine.starts import RunStart
from stepline_server.errors import InvalidArgument, NotFound, StaleLease, SteplineServerError
from stepline_server.ids import invoke_event_id, now_ms
from stepline_server.model import (
    NEVER_MS,
    AckAction,
    ErrorInfo,
    EventRecord,
    Invoke,
    MatchKind,
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
    StepKind,
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
from stepline_server.store.records import (
    FailedAttempt,
    NewQueueItem,
    NewStep,
    NewWait,
    QueueUpdate,
    RunFinish,
)
from stepline_server.telemetry import traceparent

Backoff = Callable[[int], int]
ContextFactory = Callable[[Tx, int], TxContext]
Key = tuple[str, str]  # (run_id, target_step_id)


@dataclass(frozen=True, slots=True)
class Timing:
    now_ms: int
    lease_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsRequest:
    """One Ops message to apply, from the worker connection `owner`."""

    owner: str
    batch: OpsBatch
    timing: Timing
    check_function: bool = True


@dataclass(slots=True, kw_only=True)
class RunState:
    """A run's queue item (or a parallel step's) as a batch of reports changes it."""

    item: QueueItem
    attempt: int
    step_count: int
    due_at_ms: int
    lease_owner: str | None
    lease_until_ms: int | None = None
    deleted: bool = False
    wait_kind: WaitKind | None = None
    wait_step: str | None = None

    @classmethod
    def of(cls, item: QueueItem, due_at_ms: int) -> RunState:
        return cls(item=item, attempt=item.attempt, step_count=item.step_count,
                   due_at_ms=due_at_ms, lease_owner=item.lease_owner,
                   wait_kind=item.wait_kind, wait_step=item.wait_step)

    def next_position(self) -> int:
        """A step got its row: the position it takes; the next step starts at attempt 0."""
        position = self.step_count
        self.step_count += 1
        self.attempt = 0
        return position

    def requeue(self, due_at_ms: int) -> None:
        """Back to the queue, due then, leased to no one."""
        self.due_at_ms = due_at_ms
        self.lease_owner = None
        self.lease_until_ms = None

    def copy(self) -> RunState:
        # By hand: dataclasses.replace costs three times as much, once per report.
        return RunState(item=self.item, attempt=self.attempt, step_count=self.step_count,
                        due_at_ms=self.due_at_ms, lease_owner=self.lease_owner,
                        lease_until_ms=self.lease_until_ms, deleted=self.deleted,
                        wait_kind=self.wait_kind, wait_step=self.wait_step)

    def update(self) -> QueueUpdate:
        return QueueUpdate(
            run_id=self.item.run_id, target_step_id=self.item.target_step_id,
            attempt=self.attempt, step_count=self.step_count, due_at_ms=self.due_at_ms,
            lease_owner=self.lease_owner, lease_until_ms=self.lease_until_ms,
            wait_kind=self.wait_kind, wait_step=self.wait_step)


@dataclass(slots=True)
class Writes:
    """Rows a batch of reports writes, in the order `_write` sends them."""

    steps: list[NewStep] = field(default_factory=list)
    failures: list[FailedAttempt] = field(default_factory=list)
    finishes: list[RunFinish] = field(default_factory=list)
    statuses: list[tuple[str, RunStatus]] = field(default_factory=list)
    waits: list[NewWait] = field(default_factory=list)
    endings: list[lifecycle.Ending] = field(default_factory=list)
    invokes: list[RunStart] = field(default_factory=list)
    sent: list[EventRecord] = field(default_factory=list)
    new_items: list[NewQueueItem] = field(default_factory=list)  # parallel steps

    def extend(self, other: Writes) -> None:
        for name in _WRITES:
            getattr(self, name).extend(getattr(other, name))


_WRITES = tuple(f.name for f in fields(Writes))


# Without settings (unit tests): Inngest's limits.
DEFAULT_LIMITS = RunLimits(max_steps=1000, max_state_bytes=32 * 1024 * 1024)


@dataclass(frozen=True, slots=True, kw_only=True)
class Lookups:
    """What some ops need from outside the run, loaded once per batch."""

    functions: dict[str, RunPolicy] = field(default_factory=dict)
    triggers: dict[str, EventRecord] = field(default_factory=dict)
    limits: RunLimits = DEFAULT_LIMITS
    # The bytes of step outputs each reported item's run stores (run_limits.py); a run
    # missing here is not checked.
    state_bytes: dict[Key, int] = field(default_factory=dict)


def _lookups(tx: Tx, requests: list[OpsRequest], limits: RunLimits,
             state_bytes: dict[Key, int]) -> Lookups:
    invoked = sorted({op.function_id for r in requests for op in r.batch.ops
                      if isinstance(op, Invoke)})
    waiting = sorted({r.batch.run_id for r in requests
                      if any(isinstance(op, WaitForEvent) for op in r.batch.ops)})
    functions = function_store.policies(tx.conn, invoked) if invoked else {}
    triggers: dict[str, EventRecord] = {}
    if waiting:
        # One statement (a join): a trigger moved aside meanwhile (store/events.py) is still
        # the run's own.
        triggers = run_store.events_of(tx.conn, waiting)
    return Lookups(functions=functions, triggers=triggers, limits=limits,
                   state_bytes=state_bytes)


# -- a batch of reports -------------------------------------------------------------------------
def apply_many(tx: Tx, requests: list[OpsRequest], backoff: Backoff, context: ContextFactory,
               limits: RunLimits = DEFAULT_LIMITS, sizes: StateSizes | None = None
               ) -> list[AckAction | SteplineServerError]:
    conn = tx.conn
    locked = queue_store.lock_many(conn, sorted({r.batch.run_id for r in requests}))
    states = {key: RunState.of(item, due) for key, (item, due) in locked.items()}
    reported = [states[r.batch.key].item for r in requests if r.batch.key in states]
    lookups = _lookups(tx, requests, limits,
                       sizes.load(conn, reported) if sizes is not None else {})
    touched: dict[Key, RunState] = {}
    writes = Writes()
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
            new_state, action, own = apply_report(request, state.copy(), backoff, lookups)
        except SteplineServerError as exc:
            results.append(exc)
            continue
        states[key] = touched[key] = new_state
        writes.extend(own)
        results.append(action)
        if sizes is not None and key in lookups.state_bytes:
            _remember_size(tx, sizes, new_state, lookups.state_bytes, own)
        if key[1] and new_state.deleted:
            _parallel_step_done(key[0], states, touched, request.timing.now_ms)
    if missing:
        _explain_missing(tx, requests, missing, results)
    with tx.pipelined():  # nothing below reads a result: one round trip on PostgreSQL
        _write(tx, touched, writes)
    # Items of keyed functions that stopped executing free their concurrency slots.
    stopped = [s.item for s in touched.values() if (s.item.ckey1 or s.item.ckey2)
               and (s.deleted or s.lease_owner is None)]
    if stopped:
        flow_concurrency.freed(tx, stopped, now_ms())
    # Wake other servers only for work back in the queue (retries, suspensions, parallel
    # steps); an ended run frees a slot only on this server, whose dispatcher already knows.
    if writes.new_items or any(not s.deleted and s.lease_owner is None
                               for s in touched.values()):
        tx.notify = True
    if writes.invokes or writes.sent or writes.endings:
        _follow_up(context(tx, now_ms()), writes)
    return results


def _remember_size(tx: Tx, sizes: StateSizes, state: RunState, known: dict[Key, int],
                   own: Writes) -> None:
    """The run's state once this report commits, for its next report under the same lease."""
    key = state.item.key
    known[key] += sum(len(step.output.encode()) for step in own.steps if step.output)
    size, item, ended = known[key], state.item, state.deleted
    tx.after_commit(lambda: sizes.applied(item, size, ended=ended))


def _explain_missing(tx: Tx, requests: list[OpsRequest], missing: list[int],
                     results: list[AckAction | SteplineServerError]) -> None:
    """The precise error for reports on items that are gone."""
    ended = run_store.statuses(tx.conn, [requests[i].batch.run_id for i in missing])
    for i in missing:
        run_id, step_id = requests[i].batch.key
        status = ended.get(run_id)
        results[i] = (
            NotFound(f"ops.run_id: unknown run {run_id!r}") if status is None
            else StaleLease(f"ops.target_step_id: step {step_id!r} of run {run_id} is no "
                            "longer dispatched") if step_id and not status.ended
            else StaleLease(f"ops.run_id: run {run_id} is {status} and takes no more ops"))


def _parallel_step_done(run_id: str, states: dict[Key, RunState],
                        touched: dict[Key, RunState], now: int) -> None:
    """A parallel step has its result: once none of its siblings is left, the run resumes."""
    if any(k[0] == run_id and k[1] and not s.deleted for k, s in states.items()):
        return
    run = states.get((run_id, ""))
    if run is None or run.deleted or run.wait_kind is not WaitKind.PARALLEL:
        return
    run = replace(run, wait_kind=None, due_at_ms=now)
    states[run_id, ""] = touched[run_id, ""] = run


def _follow_up(ctx: TxContext, writes: Writes) -> None:
    """Effects on other runs, once this batch's own rows are written."""
    if writes.invokes:
        fresh = event_store.insert(ctx.tx.conn, [s.event for s in writes.invokes], ctx.now,
                                   ctx.dedup_ms)
        ctx.start([s for s, new in zip(writes.invokes, fresh, strict=True) if new])
    if writes.sent:
        lifecycle.ingest(ctx, writes.sent)
    if writes.endings:
        lifecycle.after_end(ctx, writes.endings, waits_deleted=True)


def _write(tx: Tx, touched: dict[Key, RunState], writes: Writes) -> None:
    conn = tx.conn
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
    queue_store.update_many(conn, [s.update() for s in touched.values() if not s.deleted])


# -- one report ---------------------------------------------------------------------------------
def apply_report(request: OpsRequest, state: RunState, backoff: Backoff, lookups: Lookups
                 ) -> tuple[RunState, AckAction, Writes]:
    """Decide what one report does to its run, in memory: the new state, the ack, the rows to
    write. Raises the error to answer when the report is refused."""
    batch = request.batch
    item = state.item
    # The lease first: a worker that does not hold the run (another app's, say) learns nothing
    # of it, not even its function.
    if state.lease_owner != request.owner or item.lease != batch.lease:
        raise StaleLease(
            f"ops.lease: lease {batch.lease} on run {batch.run_id} is no longer held by this "
            "worker; its ops were not applied")
    if request.check_function and item.function_id != batch.function_id:
        raise InvalidArgument(
            "ops.function_id",
            f"run {batch.run_id} belongs to function {item.function_id!r}, "
            f"not {batch.function_id!r}")
    report = _Report(run_id=batch.run_id, state=state, now=request.timing.now_ms,
                     backoff=backoff, lookups=lookups,
                     state_bytes=lookups.state_bytes.get(batch.key))
    if batch.target_step_id:
        return state, report.parallel_step(batch), report.writes
    action = AckAction.CONTINUE
    for index, op in enumerate(batch.ops):
        if report.stopped:  # a limit ended the report: the ops after it are not applied
            break
        if action is not AckAction.CONTINUE:
            raise InvalidArgument(f"ops.ops[{index}]", "no op may follow one that ends the run")
        action = report.apply(index, op)
    if action is AckAction.CONTINUE:
        state.lease_until_ms = request.timing.now_ms + request.timing.lease_ms
    return state, action, report.writes


def sent_output(op: SendEvents) -> str:
    """The recorded output of a send-events step: the ids of the events it sent."""
    return json.dumps({"ids": [e.id for e in op.events]})


@dataclass(slots=True, kw_only=True)
class _Report:
    """Applies the ops of one report to its run's state, collecting the rows to write."""

    run_id: str
    state: RunState
    now: int
    backoff: Backoff
    lookups: Lookups
    state_bytes: int | None  # the run's stored outputs (None: not checked)
    writes: Writes = field(default_factory=Writes)
    seen_steps: set[str] = field(default_factory=set)
    stopped: bool = False

    def parallel_step(self, batch: OpsBatch) -> AckAction:
        """The report of one parallel step: its result, and nothing else. Done (completed, or
        failed for good), its queue item goes; a failure to retry keeps it, due later."""
        ops = batch.ops
        if len(ops) != 1 or not isinstance(ops[0], StepCompleted | StepFailed) or (
                ops[0].step_id != batch.target_step_id):
            raise InvalidArgument("ops.ops", f"the dispatch of parallel step "
                                  f"{batch.target_step_id!r} takes exactly one op: that step's "
                                  "step_completed or step_failed")
        if self.apply(0, ops[0]) is AckAction.CONTINUE or self.stopped:
            self.state.deleted = True
        return AckAction.RELEASE

    def apply(self, index: int, op: Op) -> AckAction:
        if isinstance(op, Planned):
            return self._plan(index, op)
        if isinstance(op, RunCompleted | RunFailed):
            return self._end(op)
        if op.step_id in self.seen_steps:
            raise InvalidArgument(f"ops.ops[{index}]",
                                  f"step {op.step_id!r} appears twice in one report")
        if self.state.wait_kind is not None:
            raise InvalidArgument(f"ops.ops[{index}]", "the run is suspended")
        self.seen_steps.add(op.step_id)
        if self._too_many_steps(1):
            return AckAction.RELEASE
        if isinstance(op, StepCompleted):
            return self._completed(op)
        if isinstance(op, StepFailed):
            return self._step_failed(op)
        if isinstance(op, SendEvents):
            return self._send(op)
        return self._suspension(index, op)

    # -- limits (run_limits.py) --------------------------------------------------------------
    def _too_many_steps(self, new: int) -> bool:
        """Whether `new` more steps pass the run's step limit; if so, the run fails."""
        limit = self.lookups.limits.max_steps
        if self.state.item.target_step_id or self.state.step_count + new <= limit:
            return False
        self._finish(RunStatus.FAILED, error=ErrorInfo(
            "StepLimitExceeded", f"the run has {self.state.step_count} steps and reported "
                                 f"{new} more; the limit is {limit} steps per run "
                                 "(STEPLINE_MAX_STEPS_PER_RUN)"))
        self.stopped = True
        return True

    def _completed(self, op: StepCompleted) -> AckAction:
        """A step's result, stored unless it would pass the run's state limit: then the step
        fails for good, and the worker replays the run to meet that error."""
        limit, size = self.lookups.limits.max_state_bytes, len(op.output.encode())
        if self.state_bytes is not None and self.state_bytes + size > limit:
            self._fail_step_now(op.step_id, op.name, ErrorInfo(
                "RunStateTooLarge", f"the step's output ({size} bytes) would bring the run's "
                                    f"stored step outputs to {self.state_bytes + size} bytes; the "
                                    f"limit is {limit} (STEPLINE_MAX_RUN_STATE_BYTES): return "
                                    "less, or keep large data elsewhere and return a reference"),
                                StepKind.RUN)
            self.stopped = True
            return AckAction.RELEASE
        if self.state_bytes is not None:
            self.state_bytes += size
        self._step(op.step_id, op.name, StepStatus.COMPLETED, op.started_at_ms,
                   output=op.output)
        return AckAction.CONTINUE

    # -- results and failures ----------------------------------------------------------------
    def _step(self, step_id: str, name: str, status: StepStatus, started_at_ms: int | None, *,
              output: str | None = None, error: ErrorInfo | None = None,
              kind: StepKind = StepKind.RUN) -> None:
        attempts_made = self.state.attempt + 1
        self.writes.steps.append(NewStep(
            run_id=self.run_id, step_id=step_id, position=self.state.next_position(),
            name=name, kind=kind, status=status, attempts=attempts_made,
            started_at_ms=started_at_ms, ended_at_ms=self.now, output=output, error=error))

    def _failed_attempt(self, step_id: str, error: ErrorInfo, started_at_ms: int | None,
                        *, non_retriable: bool, retry_after_ms: int | None) -> bool:
        """Record a failed attempt; return whether another one is scheduled."""
        state = self.state
        self.writes.failures.append(FailedAttempt(
            run_id=self.run_id, step_id=step_id, attempt=state.attempt, error=error,
            started_at_ms=started_at_ms, ended_at_ms=self.now))
        due = attempts.retry_due(attempt=state.attempt, max_attempts=state.item.max_attempts,
                                 non_retriable=non_retriable, retry_after_ms=retry_after_ms,
                                 now_ms=self.now, backoff=self.backoff)
        if due is None:
            return False
        state.attempt += 1
        state.requeue(due)
        return True

    def _step_failed(self, op: StepFailed) -> AckAction:
        if self._failed_attempt(op.step_id, op.error, op.started_at_ms,
                                non_retriable=op.non_retriable, retry_after_ms=op.retry_after_ms):
            return AckAction.RELEASE
        self._step(op.step_id, op.name, StepStatus.FAILED, op.started_at_ms, error=op.error)
        return AckAction.CONTINUE  # the worker raises the error at the step's call site

    def _end(self, op: RunCompleted | RunFailed) -> AckAction:
        if isinstance(op, RunCompleted):
            self._finish(RunStatus.COMPLETED, output=op.output)
        elif not self._failed_attempt("", op.error, None, non_retriable=op.non_retriable,
                                      retry_after_ms=op.retry_after_ms):
            self._finish(RunStatus.FAILED, error=op.error)
        return AckAction.RELEASE

    def _finish(self, status: RunStatus, *, output: str | None = None,
                error: ErrorInfo | None = None) -> None:
        self.writes.finishes.append(RunFinish(run_id=self.run_id, status=status,
                                              ended_at_ms=self.now, output=output, error=error))
        self.writes.endings.append(lifecycle.Ending(item=self.state.item, status=status,
                                                    output=output, error=error))
        self.state.deleted = True

    # -- steps that are not run by the worker -------------------------------------------------
    def _send(self, op: SendEvents) -> AckAction:
        # The events and the step's record commit together: a replay finds the step memoized
        # and sends nothing; a retried report is refused whole (the step exists).
        self._step(op.step_id, op.name, StepStatus.COMPLETED, None,
                   output=sent_output(op),
                   kind=StepKind.SEND_EVENT)
        self.writes.sent.extend(op.events)
        return AckAction.CONTINUE

    def _suspension(self, index: int, op: Sleep | WaitForEvent | Invoke) -> AckAction:
        if isinstance(op, Sleep):
            due = op.until_ms if op.until_ms is not None else self.now + (op.duration_ms or 0)
            self._suspend(op.step_id, op.name, WaitKind.SLEEP, due)
        elif isinstance(op, WaitForEvent):
            self._wait(index, op)
        else:
            self._invoke(op)
        return AckAction.RELEASE

    def _wait(self, index: int, op: WaitForEvent) -> None:
        due = self.now + op.timeout_ms
        trigger = self.lookups.triggers.get(self.run_id)
        try:
            if trigger is None:
                raise InvalidArgument("trigger", f"run {self.run_id} has no trigger event")
            wait = matching.new_wait(self.run_id, op.step_id, MatchKind.WAIT_FOR_EVENT,
                                     op.event, op.expression,
                                     f"ops.ops[{index}].wait_for_event.expression", trigger,
                                     due, self.now)
        except InvalidArgument as exc:
            self._fail_step_now(op.step_id, op.name, ErrorInfo("InvalidExpression", str(exc)),
                                StepKind.WAIT_FOR_EVENT)
            return
        self.writes.waits.append(wait)
        self._suspend(op.step_id, op.name, WaitKind.WAIT_FOR_EVENT, due)

    def _invoke(self, op: Invoke) -> None:
        policy = self.lookups.functions.get(op.function_id)
        if policy is None:
            self._fail_step_now(op.step_id, op.name, ErrorInfo(
                "FunctionNotFound", f"cannot invoke {op.function_id!r}: no such function is "
                                    "registered"), StepKind.INVOKE)
            return
        item = self.state.item
        # The invoked run's trace continues from this step's attempt span (telemetry/tracing.py).
        trace = traceparent.step_traceparent(self.run_id, item.traceparent, op.step_id,
                                             item.lease)
        event = EventRecord(id=invoke_event_id(self.run_id, op.step_id),
                            name=lifecycle.FUNCTION_INVOKED, data=op.data, ts_ms=self.now,
                            traceparent=trace.header())
        self.writes.invokes.append(RunStart(function_id=op.function_id, policy=policy,
                                            event=event, parent_run_id=self.run_id,
                                            parent_step_id=op.step_id))
        due = NEVER_MS if op.timeout_ms is None else self.now + op.timeout_ms
        self._suspend(op.step_id, op.name, WaitKind.INVOKE, due)

    def _suspend(self, step_id: str, name: str, kind: WaitKind, due_ms: int) -> None:
        """The run waits, holding no worker: its step is written as pending until it resumes."""
        step_status, run_status = _PENDING[kind]
        state = self.state
        self.writes.steps.append(NewStep(
            run_id=self.run_id, step_id=step_id, position=state.next_position(), name=name,
            kind=kind.step_kind, status=step_status, attempts=1, started_at_ms=self.now,
            ended_at_ms=min(due_ms, NEVER_MS)))
        self.writes.statuses.append((self.run_id, run_status))
        state.requeue(due_ms)
        state.wait_kind = kind
        state.wait_step = step_id

    def _fail_step_now(self, step_id: str, name: str, error: ErrorInfo, kind: StepKind) -> None:
        """A step that cannot begin (bad expression, unknown function) fails for good; the run
        is dispatched again at once and the step raises its error where it was called."""
        self._step(step_id, name, StepStatus.FAILED, self.now, error=error, kind=kind)
        self.state.requeue(self.now)

    def _plan(self, index: int, op: Planned) -> AckAction:
        """Parallel steps: one queue item each, with its position reserved; the run waits."""
        ids = [step_id for step_id, _ in op.steps]
        if not ids:
            raise InvalidArgument(f"ops.ops[{index}].planned.steps",
                                  "at least one step is required")
        if len(set(ids)) != len(ids) or self.seen_steps & set(ids):
            raise InvalidArgument(f"ops.ops[{index}].planned.steps", "step ids must be distinct")
        if self._too_many_steps(len(ids)):
            return AckAction.RELEASE
        state = self.state
        item = state.item
        for step_id in ids:
            self.writes.new_items.append(NewQueueItem(
                run_id=self.run_id, target_step_id=step_id, function_id=item.function_id,
                due_at_ms=self.now, max_attempts=item.max_attempts,
                step_count=state.next_position(), parent_run_id=item.parent_run_id,
                parent_step_id=item.parent_step_id, traceparent=item.traceparent,
                ckey1=item.ckey1, ckey2=item.ckey2,
                # A batched run's steps replay with its events (see Engine.claim).
                held=item.held))
        self.seen_steps.update(ids)
        state.requeue(NEVER_MS)
        state.wait_kind = WaitKind.PARALLEL
        state.wait_step = None
        return AckAction.RELEASE


_PENDING = {WaitKind.SLEEP: (StepStatus.SLEEPING, RunStatus.SLEEPING),
            WaitKind.WAIT_FOR_EVENT: (StepStatus.WAITING, RunStatus.WAITING),
            WaitKind.INVOKE: (StepStatus.INVOKING, RunStatus.WAITING)}
