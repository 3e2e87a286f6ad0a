"""What the engine hands the store to write: one small record per kind of row change.

The store turns them into its statements' parameters, so column names stay inside `store/` and
mypy checks every field the engine sets.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepline_server.model import ErrorInfo, MatchKind, RunStatus, StepKind, StepStatus, WaitKind


def error_json(error: ErrorInfo | None) -> str | None:
    return None if error is None else error.to_json()


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRun:
    id: str
    function_id: str
    event_id: str
    max_attempts: int
    created_at_ms: int
    status: RunStatus = RunStatus.QUEUED
    started_at_ms: int | None = None
    # step.invoke: the step of the parent run that resumes when this run ends.
    parent_run_id: str | None = None
    parent_step_id: str | None = None
    # A replay or a rerun from a step: the run it was made from.
    source_run_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewQueueItem:
    """A run's own item (target_step_id ""), or one of its parallel steps."""

    run_id: str
    function_id: str
    due_at_ms: int
    max_attempts: int
    target_step_id: str = ""
    attempt: int = 0
    step_count: int = 0
    # Set when the run is leased in the transaction that starts it (placed on a local worker).
    lease: int = 0
    lease_owner: str | None = None
    lease_until_ms: int | None = None
    # Timeouts: "start" until the first dispatch, then "finish" (see queue.claim).
    deadline_kind: str | None = None
    deadline_ms: int | None = None
    finish_timeout_ms: int | None = None
    parent_run_id: str | None = None
    parent_step_id: str | None = None
    traceparent: str | None = None
    # Flow control (schema.queue): concurrency keys, hold reason, parking.
    ckey1: str | None = None
    ckey2: str | None = None
    held: str | None = None
    held_key: str | None = None
    held_order_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueUpdate:
    """A queue item's state after a worker's report."""

    run_id: str
    target_step_id: str
    attempt: int
    step_count: int
    due_at_ms: int
    lease_owner: str | None
    lease_until_ms: int | None
    wait_kind: WaitKind | None
    wait_step: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewStep:
    """A step's row: its final result, or a suspension in progress (status sleeping, waiting or
    invoking; ended_at_ms its due time) that `PendingStepEnd` completes."""

    run_id: str
    step_id: str
    position: int
    name: str
    kind: StepKind
    status: StepStatus
    attempts: int
    started_at_ms: int | None
    ended_at_ms: int
    output: str | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingStepEnd:
    """The result of a sleep, wait or invoke in progress."""

    run_id: str
    step_id: str
    status: StepStatus
    ended_at_ms: int
    output: str | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedAttempt:
    """A failed attempt of a step (or of the function body: step_id "")."""

    run_id: str
    step_id: str
    attempt: int
    error: ErrorInfo
    started_at_ms: int | None
    ended_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinish:
    run_id: str
    status: RunStatus
    ended_at_ms: int
    output: str | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewWait:
    """A pending match of incoming events (see engine/matching.py)."""

    run_id: str
    step_id: str
    kind: MatchKind
    event_name: str
    expression: str | None
    # Dotted path into the candidate event and "path=json value" to match, when keyed.
    match_path: str | None
    match_key: str | None
    trigger_event_id: str
    expires_at_ms: int | None
    created_at_ms: int
