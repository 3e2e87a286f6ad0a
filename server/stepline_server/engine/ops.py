"""What the ops a worker reports do to its run.

Ops from many workers arrive together; `apply_many` decides each report in memory against the
locked queue rows, then writes the whole set with a handful of set-based statements. A report is
all-or-nothing: when it does not fit (stale lease, an op after the run ended), none of its ops
are written, and the others in the batch still are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stepline_server.errors import InvalidArgument, NotFound, StaleLease, SteplineServerError
from stepline_server.model import (
    AckAction,
    ErrorInfo,
    Op,
    OpsBatch,
    QueueItem,
    RunCompleted,
    RunFailed,
    RunStatus,
    StepCompleted,
    StepFailed,
    StepStatus,
)
from stepline_server.store import Tx
from stepline_server.store import queue as queue_store
from stepline_server.store import runs as run_store

Backoff = Callable[[int], int]


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

    def final_attempt(self, non_retriable: bool) -> bool:
        return non_retriable or self.attempt + 1 >= self.item.max_attempts

    def copy(self) -> _RunState:
        return _RunState(self.item, self.attempt, self.step_count, self.due_at_ms,
                         self.lease_owner, self.lease_until_ms, self.deleted)


@dataclass(slots=True)
class _Writes:
    steps: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    finishes: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: _Writes) -> None:
        self.steps += other.steps
        self.failures += other.failures
        self.finishes += other.finishes


def apply_many(tx: Tx, requests: list[OpsRequest], backoff: Backoff
               ) -> list[AckAction | SteplineServerError]:
    conn = tx.conn
    locked = queue_store.lock_many(conn, sorted({r.batch.run_id for r in requests}))
    states = {run_id: _RunState(item, item.attempt, item.step_count, due, item.lease_owner)
              for run_id, (item, due) in locked.items()}
    touched: dict[str, _RunState] = {}
    writes = _Writes()
    results: list[AckAction | SteplineServerError] = []
    missing: list[int] = []
    for index, request in enumerate(requests):
        state = states.get(request.batch.run_id)
        if state is None or state.deleted:
            missing.append(index)
            results.append(AckAction.REJECTED)  # replaced below with the precise error
            continue
        try:
            new_state, action, own = _apply_request(request, state.copy(), backoff)
        except SteplineServerError as exc:
            results.append(exc)
            continue
        states[request.batch.run_id] = touched[request.batch.run_id] = new_state
        writes.extend(own)
        results.append(action)
    if missing:
        ended = run_store.statuses(conn, [requests[i].batch.run_id for i in missing])
        for i in missing:
            run_id = requests[i].batch.run_id
            status = ended.get(run_id)
            results[i] = (NotFound(f"ops.run_id: unknown run {run_id!r}") if status is None
                          else StaleLease(f"ops.run_id: run {run_id} is {status} and takes no "
                                          "more ops"))
    _flush(tx, touched, writes)
    # Wake other servers only for runs back in the queue (retries); an ended run frees a slot
    # only on this server, whose dispatcher already knows.
    if any(not s.deleted and s.lease_owner is None for s in touched.values()):
        tx.notify = True
    return results


def _flush(tx: Tx, touched: dict[str, _RunState], writes: _Writes) -> None:
    with tx.pipelined():  # nothing below reads a result: one round trip on PostgreSQL
        _write(tx.conn, touched, writes)


def _write(conn: Any, touched: dict[str, _RunState], writes: _Writes) -> None:
    run_store.insert_failures(conn, writes.failures)
    run_store.insert_steps(conn, writes.steps)
    run_store.finish_many(conn, writes.finishes)
    queue_store.delete_many(conn, [run_id for run_id, s in touched.items() if s.deleted])
    queue_store.update_many(conn, [
        {"b_run_id": run_id, "attempt": s.attempt, "step_count": s.step_count,
         "due_at_ms": s.due_at_ms, "lease_owner": s.lease_owner,
         "lease_until_ms": s.lease_until_ms}
        for run_id, s in touched.items() if not s.deleted
    ])


def _apply_request(request: OpsRequest, state: _RunState, backoff: Backoff
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
    action = AckAction.CONTINUE
    seen_steps: set[str] = set()
    for index, op in enumerate(batch.ops):
        if action is not AckAction.CONTINUE:
            raise InvalidArgument(f"ops.ops[{index}]", "no op may follow one that ends the run")
        action = _apply_op(batch.run_id, index, op, state, request.timing, backoff, writes,
                           seen_steps)
    if action is AckAction.CONTINUE:
        state.lease_until_ms = request.timing.now_ms + request.timing.lease_ms
    return state, action, writes


def _apply_op(run_id: str, index: int, op: Op, state: _RunState, timing: Timing,
              backoff: Backoff, writes: _Writes, seen_steps: set[str]) -> AckAction:
    now = timing.now_ms
    if isinstance(op, StepCompleted | StepFailed) and op.step_id in seen_steps:
        raise InvalidArgument(f"ops.ops[{index}]",
                              f"step {op.step_id!r} appears twice in one report")
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
                 output: str | None = None, error: ErrorInfo | None = None) -> None:
    writes.steps.append({
        "run_id": run_id, "step_id": step_id, "position": state.step_count, "name": name,
        "status": status.value, "output": output,
        "error": None if error is None else error.to_json(), "attempts": state.attempt + 1,
        "started_at_ms": started_at_ms, "ended_at_ms": now_ms,
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
    state.deleted = True


def _schedule_retry(state: _RunState, now_ms: int, retry_after_ms: int | None,
                    backoff: Backoff) -> None:
    state.attempt += 1
    delay = retry_after_ms if retry_after_ms is not None else backoff(state.attempt)
    state.due_at_ms = now_ms + max(0, delay)
    state.lease_owner = None
    state.lease_until_ms = None
