"""What a worker's report does to its run, decided in memory (engine/ops.py `apply_report`, with
attempts.py deciding retries): one table row per kind of report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from stepline_server.engine import attempts
from stepline_server.engine.ops import Lookups, OpsRequest, RunState, Timing, apply_report
from stepline_server.errors import Conflict, InvalidArgument, NotFound, StaleLease, Unavailable
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
    StepKind,
    StepStatus,
    WaitForEvent,
    WaitKind,
)

NOW = 1_000
LEASE_MS = 30_000
STEPS_BEFORE = 2  # steps the run recorded before this report
OOPS = ErrorInfo("ConnectionError", "reset")
TRIGGER = EventRecord(id="e1", name="user/signup", data='{"userId": "u1"}', ts_ms=0)
LOOKUPS = Lookups(functions={"child": RunPolicy(max_attempts=1)}, triggers={"r": TRIGGER})


def backoff(retry: int) -> int:
    return 100 * retry


def done(step_id: str) -> StepCompleted:
    return StepCompleted(step_id=step_id, name=step_id, output="1")


def failed(step_id: str, **options: Any) -> StepFailed:
    return StepFailed(step_id=step_id, name=step_id, error=OOPS, **options)


def send(step_id: str) -> SendEvents:
    return SendEvents(step_id, step_id, (
        EventRecord(id="s0", name="email/sent", data="{}", ts_ms=NOW),
        EventRecord(id="s1", name="email/sent", data="{}", ts_ms=NOW)))


@dataclass(frozen=True)
class Case:
    ops: tuple[Op, ...]
    action: AckAction
    # The run's queue item afterwards.
    attempt: int = 0
    step_count: int = STEPS_BEFORE
    due_at_ms: int = 0  # unchanged
    leased: bool = True
    wait_kind: WaitKind | None = None
    deleted: bool = False
    # Rows written: steps as (id, status, kind, attempts), failed attempts as (step, attempt).
    steps: list[tuple[str, StepStatus, StepKind, int]] = field(default_factory=list)
    failures: list[tuple[str, int]] = field(default_factory=list)
    finished: RunStatus | None = None
    attempt_before: int = 0
    max_attempts: int = 3


CASES = {
    "a step completes": Case(
        (done("a"),), AckAction.CONTINUE, step_count=3,
        steps=[("a", StepStatus.COMPLETED, StepKind.RUN, 1)]),
    "two steps complete in one report": Case(
        (done("a"), done("b")), AckAction.CONTINUE, step_count=4,
        steps=[("a", StepStatus.COMPLETED, StepKind.RUN, 1),
               ("b", StepStatus.COMPLETED, StepKind.RUN, 1)]),
    "a step fails: retried after the backoff": Case(
        (failed("a"),), AckAction.RELEASE, attempt=1, due_at_ms=NOW + 100, leased=False,
        failures=[("a", 0)]),
    "the second retry waits longer": Case(
        (failed("a"),), AckAction.RELEASE, attempt=2, due_at_ms=NOW + 200, leased=False,
        failures=[("a", 1)], attempt_before=1),
    "a step asks to be retried later": Case(
        (failed("a", retry_after_ms=5_000),), AckAction.RELEASE, attempt=1,
        due_at_ms=NOW + 5_000, leased=False, failures=[("a", 0)]),
    "a step fails its last attempt: recorded failed, the code goes on": Case(
        (failed("a"),), AckAction.CONTINUE, step_count=3, failures=[("a", 2)],
        steps=[("a", StepStatus.FAILED, StepKind.RUN, 3)], attempt_before=2),
    "a non-retriable failure is final at once": Case(
        (failed("a", non_retriable=True),), AckAction.CONTINUE, step_count=3,
        failures=[("a", 0)], steps=[("a", StepStatus.FAILED, StepKind.RUN, 1)]),
    "no retries at all": Case(
        (failed("a"),), AckAction.CONTINUE, step_count=3, failures=[("a", 0)],
        steps=[("a", StepStatus.FAILED, StepKind.RUN, 1)], max_attempts=1),
    "the run completes": Case(
        (done("a"), RunCompleted("42")), AckAction.RELEASE, step_count=3, deleted=True,
        steps=[("a", StepStatus.COMPLETED, StepKind.RUN, 1)], finished=RunStatus.COMPLETED),
    "the body fails: the run is retried": Case(
        (RunFailed(OOPS),), AckAction.RELEASE, attempt=1, due_at_ms=NOW + 100, leased=False,
        failures=[("", 0)]),
    "the body fails its last attempt: the run fails": Case(
        (RunFailed(OOPS),), AckAction.RELEASE, attempt=2, deleted=True, failures=[("", 2)],
        finished=RunStatus.FAILED, attempt_before=2),
    "a non-retriable body failure fails the run": Case(
        (RunFailed(OOPS, non_retriable=True),), AckAction.RELEASE, deleted=True,
        failures=[("", 0)], finished=RunStatus.FAILED),
    "a sleep for a duration": Case(
        (Sleep(step_id="nap", name="nap", duration_ms=500),), AckAction.RELEASE,
        step_count=3, due_at_ms=NOW + 500, leased=False, wait_kind=WaitKind.SLEEP,
        steps=[("nap", StepStatus.SLEEPING, StepKind.SLEEP, 1)]),
    "a sleep until a time": Case(
        (Sleep(step_id="nap", name="nap", until_ms=99_999),), AckAction.RELEASE, step_count=3,
        due_at_ms=99_999, leased=False, wait_kind=WaitKind.SLEEP,
        steps=[("nap", StepStatus.SLEEPING, StepKind.SLEEP, 1)]),
    "a wait for an event, due at its timeout": Case(
        (WaitForEvent(step_id="w", name="w", event="billing/upgraded",
                      expression="async.data.userId == event.data.userId",
                      timeout_ms=60_000),),
        AckAction.RELEASE, step_count=3, due_at_ms=NOW + 60_000, leased=False,
        wait_kind=WaitKind.WAIT_FOR_EVENT,
        steps=[("w", StepStatus.WAITING, StepKind.WAIT_FOR_EVENT, 1)]),
    "a wait with bad CEL fails its step for good, the run due at once": Case(
        (WaitForEvent(step_id="w", name="w", event="x", expression="async.data ==",
                      timeout_ms=60_000),),
        AckAction.RELEASE, step_count=3, due_at_ms=NOW, leased=False,
        steps=[("w", StepStatus.FAILED, StepKind.WAIT_FOR_EVENT, 1)]),
    "an invoke without a timeout waits forever": Case(
        (Invoke(step_id="i", name="i", function_id="child", data="{}"),), AckAction.RELEASE,
        step_count=3, due_at_ms=NEVER_MS, leased=False, wait_kind=WaitKind.INVOKE,
        steps=[("i", StepStatus.INVOKING, StepKind.INVOKE, 1)]),
    "an invoke of an unknown function fails its step": Case(
        (Invoke(step_id="i", name="i", function_id="nobody", data="{}"),), AckAction.RELEASE,
        step_count=3, due_at_ms=NOW, leased=False,
        steps=[("i", StepStatus.FAILED, StepKind.INVOKE, 1)]),
    "sending events is a step that completes with them": Case(
        (send("s"),), AckAction.CONTINUE, step_count=3,
        steps=[("s", StepStatus.COMPLETED, StepKind.SEND_EVENT, 1)]),
    "parallel steps: each its own item, the run waits for them": Case(
        (Planned((("p", "p"), ("q", "q"))),), AckAction.RELEASE, step_count=4,
        due_at_ms=NEVER_MS, leased=False, wait_kind=WaitKind.PARALLEL),
    "a completed step resets the attempt of the next one": Case(
        (done("a"),), AckAction.CONTINUE, step_count=3, attempt_before=2,
        steps=[("a", StepStatus.COMPLETED, StepKind.RUN, 3)]),
}


def _state(*, attempt: int = 0, max_attempts: int = 3, target: str = "",
           wait_kind: WaitKind | None = None) -> RunState:
    item = QueueItem(run_id="r", function_id="f", attempt=attempt, max_attempts=max_attempts,
                     lease=7, lease_owner="w", step_count=STEPS_BEFORE, wait_kind=wait_kind,
                     target_step_id=target)
    return RunState.of(item, due_at_ms=0)


def _request(*ops: Op, owner: str = "w", lease: int = 7, function_id: str = "f",
             target: str = "") -> OpsRequest:
    return OpsRequest(owner=owner, batch=OpsBatch(run_id="r", lease=lease,
                                                  function_id=function_id, ops=ops,
                                                  target_step_id=target),
                      timing=Timing(NOW, LEASE_MS))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_report(case: Case) -> None:
    state = _state(attempt=case.attempt_before, max_attempts=case.max_attempts)
    state, action, writes = apply_report(_request(*case.ops), state, backoff, LOOKUPS)

    assert action is case.action
    assert (state.attempt, state.step_count, state.wait_kind, state.deleted) == (
        case.attempt, case.step_count, case.wait_kind, case.deleted)
    if not case.deleted:
        assert state.due_at_ms == case.due_at_ms
        # Going on (CONTINUE) renews the lease; anything else hands the run back.
        assert (state.lease_owner, state.lease_until_ms) == (
            ("w", NOW + LEASE_MS) if case.leased else (None, None))
    assert [(s.step_id, s.status, s.kind, s.attempts) for s in writes.steps] == case.steps
    assert [s.position for s in writes.steps] == list(
        range(STEPS_BEFORE, STEPS_BEFORE + len(case.steps)))
    assert [(f.step_id, f.attempt) for f in writes.failures] == case.failures
    assert [f.status for f in writes.finishes] == ([case.finished] if case.finished else [])
    assert [e.status for e in writes.endings] == ([case.finished] if case.finished else [])


def test_suspensions_write_their_wait_and_status() -> None:
    ops = (WaitForEvent(step_id="w", name="w", event="billing/upgraded",
                        expression="async.data.userId == event.data.userId", timeout_ms=10),)
    _, _, writes = apply_report(_request(*ops), _state(), backoff, LOOKUPS)
    (wait,) = writes.waits
    assert (wait.event_name, wait.match_path, wait.match_key, wait.expires_at_ms) == (
        "billing/upgraded", "data.userId", 'data.userId="u1"', NOW + 10)
    assert writes.statuses == [("r", RunStatus.WAITING)]


def test_an_invoke_starts_the_child_run_once_per_step() -> None:
    ops = (Invoke(step_id="i", name="i", function_id="child", data='{"n": 1}', timeout_ms=50),)
    state, _, writes = apply_report(_request(*ops), _state(), backoff, LOOKUPS)
    (start,) = writes.invokes
    assert (start.function_id, start.parent_run_id, start.parent_step_id) == ("child", "r", "i")
    assert start.event.data == '{"n": 1}' and start.event.id.startswith("invoke-")
    assert state.due_at_ms == NOW + 50


def test_planned_steps_get_items_with_their_positions() -> None:
    ops = (Planned((("p", "p"), ("q", "q"))),)
    _, _, writes = apply_report(_request(*ops), _state(), backoff, LOOKUPS)
    assert [(i.target_step_id, i.step_count, i.due_at_ms) for i in writes.new_items] == [
        ("p", STEPS_BEFORE, NOW), ("q", STEPS_BEFORE + 1, NOW)]


PARALLEL_CASES = {
    "completed: the item goes": ((done("p"),), True, 0),
    "failed with retries left: the item stays, due later": ((failed("p"),), False, 1),
    "failed for good: the item goes": ((failed("p", non_retriable=True),), True, 0),
}


@pytest.mark.parametrize(("ops", "deleted", "attempt"), PARALLEL_CASES.values(),
                         ids=PARALLEL_CASES.keys())
def test_a_parallel_step_report(ops: tuple[Op, ...], deleted: bool, attempt: int) -> None:
    state, action, _ = apply_report(_request(*ops, target="p"), _state(target="p"), backoff,
                                    LOOKUPS)
    assert action is AckAction.RELEASE
    assert (state.deleted, state.attempt) == (deleted, attempt)


REFUSED = {
    "another worker's report": (_request(done("a"), owner="other"), StaleLease, "ops.lease"),
    "an old lease": (_request(done("a"), lease=6), StaleLease, "ops.lease"),
    "another function's run": (_request(done("a"), function_id="g"), InvalidArgument,
                               "ops.function_id"),
    "an op after the run ended": (_request(RunCompleted("1"), done("a")), InvalidArgument,
                                  r"ops.ops\[1\]: no op may follow"),
    "a step twice": (_request(done("a"), done("a")), InvalidArgument,
                     r"ops.ops\[1\]: step 'a' appears twice"),
    "no planned steps": (_request(Planned(())), InvalidArgument, "at least one step"),
    "planned twice": (_request(done("a"), Planned((("a", "a"),))), InvalidArgument,
                      "distinct"),
    "a parallel step's report with more": (
        _request(done("p"), done("x"), target="p"), InvalidArgument, "takes exactly one op"),
}


@pytest.mark.parametrize(("request_", "error", "message"), REFUSED.values(),
                         ids=REFUSED.keys())
def test_a_refused_report(request_: OpsRequest, error: type[Exception], message: str) -> None:
    state = _state(target=request_.batch.target_step_id)
    with pytest.raises(error, match=message):
        apply_report(request_, state, backoff, LOOKUPS)


def test_a_suspended_run_takes_no_step() -> None:
    with pytest.raises(InvalidArgument, match="the run is suspended"):
        apply_report(_request(done("a")), _state(wait_kind=WaitKind.SLEEP), backoff, LOOKUPS)


# -- attempts.py on its own ---------------------------------------------------------------------
@pytest.mark.parametrize(("attempt", "max_attempts", "non_retriable", "retry_after", "due"), [
    (0, 3, False, None, NOW + 100),
    (1, 3, False, None, NOW + 200),
    (2, 3, False, None, None),
    (0, 1, False, None, None),
    (0, 3, True, None, None),
    (0, 3, False, 0, NOW),
    (0, 3, False, 7_000, NOW + 7_000),
])
def test_retry_due(attempt: int, max_attempts: int, non_retriable: bool,
                   retry_after: int | None, due: int | None) -> None:
    assert attempts.retry_due(attempt=attempt, max_attempts=max_attempts,
                              non_retriable=non_retriable, retry_after_ms=retry_after,
                              now_ms=NOW, backoff=backoff) == due


@pytest.mark.parametrize(("rejection", "refusal"), [
    # The worker's own mistakes: bad ops, or a step rewritten (the code changed).
    (InvalidArgument("ops.ops[0]", "bad"), attempts.Refusal.CHARGE),
    (Conflict("ops: a step in this report already has a result"), attempts.Refusal.CHARGE),
    # Its sender no longer holds the run.
    (StaleLease("ops.lease: gone"), attempts.Refusal.NOTHING),
    (NotFound("ops.run_id: unknown run"), attempts.Refusal.NOTHING),
    # The server's failures: the database unreachable, anything unexpected.
    (Unavailable("the database is unreachable"), attempts.Refusal.GIVE_BACK),
    (RuntimeError("a bug"), attempts.Refusal.GIVE_BACK),
])
def test_only_the_workers_own_mistakes_charge_a_refused_report(
        rejection: Exception, refusal: attempts.Refusal) -> None:
    assert attempts.after_refusal(rejection) is refusal


def test_an_unusable_report_stands_as_the_dispatched_step_failing() -> None:
    error = ErrorInfo("InvalidOps", "ops.ops[0]: bad")
    (op,) = attempts.unusable_report("r", 7, "p", error).ops
    assert op == StepFailed(step_id="p", name="p", error=error)
    (op,) = attempts.unusable_report("r", 7, "", error).ops
    assert op == RunFailed(error)
