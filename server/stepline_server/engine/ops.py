"""What each op a worker reports does to its run, inside one write transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stepline_server.errors import InvalidArgument, NotFound, StaleLease
from stepline_server.model import (
    AckAction,
    OpsBatch,
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


@dataclass(frozen=True, slots=True)
class Timing:
    now_ms: int
    lease_ms: int


class _RunState:
    """The queue row of a run being changed, written back once at the end."""

    def __init__(self, attempt: int, max_attempts: int, step_count: int) -> None:
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.step_count = step_count
        self.changes: dict[str, Any] = {}
        self.deleted = False

    def final_attempt(self, non_retriable: bool) -> bool:
        return non_retriable or self.attempt + 1 >= self.max_attempts


def apply(
    tx: Tx, owner: str, batch: OpsBatch, timing: Timing, backoff: Any, *,
    check_function: bool = True,
) -> AckAction:
    """Apply a worker's ops to its run atomically; raise (rolling back) when they do not fit."""
    conn = tx.conn
    item = queue_store.lock(conn, batch.run_id)
    if item is None:
        status = run_store.status_of(conn, batch.run_id)
        if status is None:
            raise NotFound(f"ops.run_id: unknown run {batch.run_id!r}")
        raise StaleLease(f"ops.run_id: run {batch.run_id} is {status} and takes no more ops")
    if check_function and item.function_id != batch.function_id:
        raise InvalidArgument(
            "ops.function_id",
            f"run {batch.run_id} belongs to function {item.function_id!r}, "
            f"not {batch.function_id!r}",
        )
    if item.lease_owner != owner or item.lease != batch.lease:
        raise StaleLease(
            f"ops.lease: lease {batch.lease} on run {batch.run_id} is no longer held by this "
            "worker; its ops were not applied"
        )
    state = _RunState(item.attempt, item.max_attempts, item.step_count)
    action = AckAction.CONTINUE
    for index, op in enumerate(batch.ops):
        if action is not AckAction.CONTINUE:
            raise InvalidArgument(f"ops.ops[{index}]", "no op may follow one that ends the run")
        action = _apply_one(conn, batch.run_id, index, op, state, timing, backoff)
    if state.deleted:
        queue_store.delete(conn, batch.run_id)
    else:
        if action is AckAction.CONTINUE:
            state.changes["lease_until_ms"] = timing.now_ms + timing.lease_ms
        state.changes.update(attempt=state.attempt, step_count=state.step_count)
        queue_store.set_values(conn, batch.run_id, **state.changes)
        if action is AckAction.RELEASE:
            tx.notify = True
    return action


def _apply_one(
    conn: Any, run_id: str, index: int, op: Any, state: _RunState, timing: Timing, backoff: Any
) -> AckAction:
    now = timing.now_ms
    if isinstance(op, StepCompleted):
        if not run_store.record_step(
            conn, run_id, state.step_count, op.step_id, op.name, status=StepStatus.COMPLETED,
            attempts=state.attempt + 1, now_ms=now, started_at_ms=op.started_at_ms,
            output=op.output,
        ):
            raise InvalidArgument(
                f"ops.ops[{index}].step_completed.step_id",
                f"step {op.step_id!r} of run {run_id} already has a result",
            )
        state.step_count += 1
        state.attempt = 0
        return AckAction.CONTINUE
    if isinstance(op, StepFailed):
        run_store.record_failure(conn, run_id, op.step_id, state.attempt, op.error, now,
                                 op.started_at_ms)
        if state.final_attempt(op.non_retriable):
            if not run_store.record_step(
                conn, run_id, state.step_count, op.step_id, op.name, status=StepStatus.FAILED,
                attempts=state.attempt + 1, now_ms=now, started_at_ms=op.started_at_ms,
                error=op.error,
            ):
                raise InvalidArgument(
                    f"ops.ops[{index}].step_failed.step_id",
                    f"step {op.step_id!r} of run {run_id} already has a result",
                )
            state.step_count += 1
            state.attempt = 0
            return AckAction.CONTINUE  # the worker raises the error at the step's call site
        _schedule_retry(state, now, op.retry_after_ms, backoff)
        return AckAction.RELEASE
    if isinstance(op, RunCompleted):
        run_store.finish(conn, run_id, RunStatus.COMPLETED, now, output=op.output)
        state.deleted = True
        return AckAction.RELEASE
    if isinstance(op, RunFailed):
        run_store.record_failure(conn, run_id, "", state.attempt, op.error, now, None)
        if state.final_attempt(op.non_retriable):
            run_store.finish(conn, run_id, RunStatus.FAILED, now, error=op.error)
            state.deleted = True
        else:
            _schedule_retry(state, now, op.retry_after_ms, backoff)
        return AckAction.RELEASE
    raise InvalidArgument(f"ops.ops[{index}]", f"unsupported op {type(op).__name__}")


def _schedule_retry(
    state: _RunState, now_ms: int, retry_after_ms: int | None, backoff: Any
) -> None:
    state.attempt += 1
    delay = retry_after_ms if retry_after_ms is not None else backoff(state.attempt)
    state.changes.update(due_at_ms=now_ms + max(0, delay), lease_owner=None, lease_until_ms=None)
