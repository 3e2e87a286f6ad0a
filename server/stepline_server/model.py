"""The server's own records, shared by engine and store (never protobuf, never SQL).

Records with more than three fields are keyword-only: a call site names what it sets.
"""

from __future__ import annotations

import enum
import functools
import json
from dataclasses import dataclass, field
from typing import Any

from stepline_server.flow import NO_FLOW, FlowControl

# Due time of a suspension without a timeout (an invoke): far beyond any real date.
NEVER_MS = 2**62  # also in formatting.py


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SLEEPING = "sleeping"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class StepStatus(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    # A suspension in progress: written when it begins, completed when the run resumes.
    SLEEPING = "sleeping"
    WAITING = "waiting"
    INVOKING = "invoking"

    @property
    def ended(self) -> bool:
        return self in (StepStatus.COMPLETED, StepStatus.FAILED)


class StepKind(enum.StrEnum):
    """What a step is, as the SDKs' step tools name it (steps.kind, the API, traces)."""

    RUN = "run"
    SLEEP = "sleep"
    WAIT_FOR_EVENT = "wait_for_event"
    INVOKE = "invoke"
    SEND_EVENT = "send_event"


class WaitKind(enum.StrEnum):
    """What a suspended run waits for (queue.wait_kind): one of its steps, or its parallel
    steps."""

    SLEEP = "sleep"
    WAIT_FOR_EVENT = "wait_for_event"
    INVOKE = "invoke"
    PARALLEL = "parallel"  # the run's parallel steps execute as queue items of their own

    @property
    def step_kind(self) -> StepKind:
        """The kind of the pending step (not for PARALLEL, which has none of its own)."""
        return StepKind(self.value)


class MatchKind(enum.StrEnum):
    """What a pending match of incoming events does when it matches (waits.kind)."""

    WAIT_FOR_EVENT = "wait_for_event"  # resumes the run's step.wait_for_event
    CANCEL = "cancel"  # cancels the run (the function's cancel_on)


class FlowKind(enum.StrEnum):
    """A flow control stage's name: the kind of its flow_keys rows, and what queue.held says
    of a run it holds back."""

    CONCURRENCY = "concurrency"
    THROTTLE = "throttle"
    RATE_LIMIT = "rate_limit"
    IDEMPOTENCY = "idempotency"
    SINGLETON = "singleton"
    DEBOUNCE = "debounce"
    BATCH = "batch"
    PRIORITY = "priority"  # held only: a run moved later (a negative priority)


class AckAction(enum.Enum):
    CONTINUE = "continue"  # committed; the worker keeps executing the run
    RELEASE = "release"  # committed; the worker drops the run
    REJECTED = "rejected"  # not committed


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    name: str
    message: str
    stack: str = ""

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "message": self.message, "stack": self.stack})

    @classmethod
    def from_json(cls, text: str | None) -> ErrorInfo | None:
        if not text:
            return None
        raw: dict[str, Any] = json.loads(text)
        return cls(raw.get("name", ""), raw.get("message", ""), raw.get("stack", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRecord:
    id: str
    name: str
    data: str  # JSON text
    ts_ms: int
    user: str | None = None
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class EventTrigger:
    name: str
    expression: str = ""


@dataclass(frozen=True, slots=True)
class CronTrigger:
    schedule: str
    timezone: str = ""


Trigger = EventTrigger | CronTrigger


@dataclass(frozen=True, slots=True)
class CancelOn:
    event: str
    expression: str = ""
    timeout_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPolicy:
    """What starting a run of a function needs to know beyond its id."""

    max_attempts: int
    cancel_on: tuple[CancelOn, ...] = ()
    start_timeout_ms: int | None = None
    finish_timeout_ms: int | None = None
    # Flow control (flow.py); falsy when the function declares none.
    flow: FlowControl = NO_FLOW


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionSpec:
    id: str
    name: str
    triggers: tuple[Trigger, ...]
    retries: int
    cancel_on: tuple[CancelOn, ...] = ()
    start_timeout_ms: int | None = None
    finish_timeout_ms: int | None = None
    # How long its ended runs are kept: None the server's retention, 0 forever.
    retention_ms: int | None = None
    flow: FlowControl = NO_FLOW

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    @property
    def policy(self) -> RunPolicy:
        return RunPolicy(max_attempts=self.max_attempts, cancel_on=self.cancel_on,
                         start_timeout_ms=self.start_timeout_ms,
                         finish_timeout_ms=self.finish_timeout_ms, flow=self.flow)

    def config_json(self) -> str:
        triggers = [
            {"event": t.name, "expression": t.expression}
            if isinstance(t, EventTrigger)
            else {"cron": t.schedule, "timezone": t.timezone}
            for t in self.triggers
        ]
        config: dict[str, Any] = {"name": self.name, "retries": self.retries,
                                  "triggers": triggers}
        if self.cancel_on:
            config["cancel_on"] = [{"event": c.event, "expression": c.expression,
                                    "timeout_ms": c.timeout_ms} for c in self.cancel_on]
        if self.start_timeout_ms is not None or self.finish_timeout_ms is not None:
            config["timeouts"] = {"start_ms": self.start_timeout_ms,
                                  "finish_ms": self.finish_timeout_ms}
        if self.retention_ms is not None:  # absent otherwise: older configs stay unchanged
            config["retention_ms"] = self.retention_ms
        if self.flow:  # absent otherwise, likewise
            config["flow"] = self.flow.to_json()
        return json.dumps(config, sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=4096)
def policy_from_config(config_json: str) -> RunPolicy:
    """The run policy stored in a function's config (cached: configs rarely change)."""
    config: dict[str, Any] = json.loads(config_json)
    timeouts = config.get("timeouts") or {}
    return RunPolicy(
        max_attempts=int(config["retries"]) + 1,
        cancel_on=tuple(CancelOn(c["event"], c.get("expression") or "", c.get("timeout_ms"))
                        for c in config.get("cancel_on") or ()),
        start_timeout_ms=timeouts.get("start_ms"),
        finish_timeout_ms=timeouts.get("finish_ms"),
        flow=FlowControl.from_json(config.get("flow")),
    )


@functools.lru_cache(maxsize=4096)
def retention_from_config(config_json: str) -> int | None:
    """A function's own retention in ms (None: the server's; 0: forever)."""
    value = json.loads(config_json).get("retention_ms")
    return None if value is None else int(value)


def function_spec_from_config(function_id: str, config_json: str) -> FunctionSpec:
    """The inverse of FunctionSpec.config_json: a stored function as it was declared."""
    config: dict[str, Any] = json.loads(config_json)
    triggers: list[Trigger] = [
        EventTrigger(t["event"], t.get("expression") or "") if "event" in t
        else CronTrigger(t["cron"], t.get("timezone") or "")
        for t in config.get("triggers") or ()
    ]
    policy = policy_from_config(config_json)
    return FunctionSpec(id=function_id, name=config.get("name") or function_id,
                        triggers=tuple(triggers), retries=int(config["retries"]),
                        cancel_on=policy.cancel_on, start_timeout_ms=policy.start_timeout_ms,
                        finish_timeout_ms=policy.finish_timeout_ms,
                        retention_ms=retention_from_config(config_json), flow=policy.flow)


@dataclass(frozen=True, slots=True)
class FunctionChanges:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailure:
    attempt: int
    error: ErrorInfo
    started_at_ms: int | None
    ended_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    step_id: str
    name: str
    status: StepStatus
    output: str | None
    error: ErrorInfo | None
    attempts: int
    started_at_ms: int | None
    ended_at_ms: int
    failures: tuple[StepFailure, ...] = ()
    kind: StepKind = StepKind.RUN


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    id: str
    function_id: str
    event_id: str
    status: RunStatus
    attempt: int
    output: str | None
    error: ErrorInfo | None
    created_at_ms: int
    started_at_ms: int | None
    ended_at_ms: int | None
    event: EventRecord | None = None
    steps: tuple[StepRecord, ...] = ()
    # Failed attempts of the function body itself (outside any step).
    body_failures: tuple[StepFailure, ...] = ()
    parent_run_id: str | None = None
    # A replay or a rerun from a step: the run it was made from.
    source_run_id: str | None = None
    # A queued run held back by flow control: why, and until when if known (engine/holds.py).
    held: str = ""
    held_until_ms: int | None = None


# -- run operations: what the server knows, as listed by RunService ----------------------------
@dataclass(frozen=True, slots=True)
class EventEntry:
    record: EventRecord
    received_at_ms: int
    run_ids: tuple[str, ...]  # runs it triggered (replays included), oldest first


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowSkip:
    """An event that started no run of a function because of its flow control."""

    function_id: str
    event_id: str
    reason: str  # flow.SkipReason
    key: str  # the key's value ("" without a key)
    skipped_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionStats:
    """Runs created in the last 24 hours, by outcome so far (active: not ended yet)."""

    runs: int
    completed: int
    failed: int
    cancelled: int
    active: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionInfo:
    spec: FunctionSpec
    app_id: str
    version: int
    archived: bool
    created_at_ms: int
    updated_at_ms: int
    stats: FunctionStats
    # The retention in force (its own or the server's), in ms; 0: forever.
    retention_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A connected worker stream (one row of the workers table, with its leases counted)."""

    connection_id: str
    server_id: str
    worker_id: str
    app_id: str
    function_ids: tuple[str, ...]
    slots: int
    slots_in_use: int
    sdk: str
    connected_at_ms: int
    last_heartbeat_ms: int
    draining: bool


@dataclass(frozen=True, slots=True)
class MemoStep:
    step_id: str
    output: str | None
    error: ErrorInfo | None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueItem:
    run_id: str
    function_id: str
    attempt: int
    max_attempts: int
    lease: int
    lease_owner: str | None
    step_count: int
    wait_kind: WaitKind | None = None
    wait_step: str | None = None
    parent_run_id: str | None = None
    parent_step_id: str | None = None
    # "" for the run itself; a step id for one of its parallel steps.
    target_step_id: str = ""
    traceparent: str | None = None
    # When it became due (set by a claim; 0 otherwise).
    due_at_ms: int = 0
    # Its concurrency keys (flow control), one per limit of its function.
    ckey1: str | None = None
    ckey2: str | None = None
    # Why the run was held back at its start (flow control: schema.queue.held), or None.
    held: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.run_id, self.target_step_id


class AppKind(enum.StrEnum):
    STREAM = "stream"  # workers connect over WorkerService.Connect
    HTTP = "http"  # the bridge calls the app's URL for each step boundary


@dataclass(frozen=True, slots=True, kw_only=True)
class AppEndpoint:
    """An app that registered an HTTP URL (the apps table)."""

    app_id: str
    url: str
    protocol: str  # "stepline" | "inngest"
    sdk: str = ""  # e.g. "py/0.1.0", "inngest-py:v0.5.19", "js:v4.24.0"
    framework: str = ""
    synced_at_ms: int = 0
    # Protocol-specific settings from the registration (JSON text), e.g. Inngest's function
    # slugs; the bridge stores and returns them untouched.
    extra: str = "{}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AppInfo:
    """One row of the apps table as listings show it, with its live functions' count."""

    app_id: str
    kind: AppKind
    url: str
    protocol: str
    sdk: str
    framework: str
    synced_at_ms: int
    extra: str
    functions: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Dispatch:
    """Work handed to one worker: a leased run with everything needed to replay it."""

    run_id: str
    function_id: str
    lease: int
    attempt: int
    max_attempts: int
    event: EventRecord
    steps: tuple[MemoStep, ...]
    # Set for a parallel step: the worker replays the run and executes only this step.
    target_step_id: str = ""
    # When it was due: the scheduling lag metric counts from here to the hand-over.
    due_at_ms: int = 0
    # A batched run: every event of its batch, oldest first (`event` is the first); () else.
    events: tuple[EventRecord, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return self.run_id, self.target_step_id


# -- ops a worker reports ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class StepCompleted:
    step_id: str
    name: str
    output: str
    started_at_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailed:
    step_id: str
    name: str
    error: ErrorInfo
    non_retriable: bool = False
    retry_after_ms: int | None = None
    started_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RunCompleted:
    output: str


@dataclass(frozen=True, slots=True)
class RunFailed:
    error: ErrorInfo
    non_retriable: bool = False
    retry_after_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Sleep:
    step_id: str
    name: str
    until_ms: int | None = None  # wall-clock time (sleep_until)
    duration_ms: int | None = None  # measured by the server's clock


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitForEvent:
    step_id: str
    name: str
    event: str
    expression: str
    timeout_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Invoke:
    step_id: str
    name: str
    function_id: str
    data: str  # JSON object text
    timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SendEvents:
    step_id: str
    name: str
    events: tuple[EventRecord, ...]


@dataclass(frozen=True, slots=True)
class Planned:
    """Steps found together (awaited in parallel): each is dispatched on its own."""

    steps: tuple[tuple[str, str], ...]  # (step_id, name)


Op = (StepCompleted | StepFailed | RunCompleted | RunFailed | Sleep | WaitForEvent | Invoke
      | SendEvents | Planned)


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsBatch:
    run_id: str
    lease: int
    function_id: str
    ops: tuple[Op, ...]
    target_step_id: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.run_id, self.target_step_id
