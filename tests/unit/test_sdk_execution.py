"""RunExecution against a fake stream: the ops it reports for sleep, waits, invoke and
send_event, what it returns on replay, and how it catches code that changed between attempts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from stepline import (
    Context,
    Event,
    EventInput,
    Function,
    Step,
    StepError,
    Stepline,
    SyncContext,
    SyncStep,
)
from stepline._execution import RunExecution
from stepline._worker import Session
from stepline.v1 import common_pb2
from stepline.v1 import worker_service_pb2 as ws

RUN_ID = "run-1"
SUSPENDING = {"sleep", "wait_for_event", "invoke", "run_completed", "run_failed"}


class FakeSession:
    """Stands in for the worker's stream: records each Ops message and answers it as the server
    would: RELEASE for ops that suspend or end the run, CONTINUE otherwise (or `action`)."""

    def __init__(self, action: ws.AckAction | None = None) -> None:
        self.sent: list[ws.Ops] = []
        self.action = action

    def send_ops(self, ops: ws.Ops) -> asyncio.Future[ws.Ack]:
        self.sent.append(ops)
        kinds = {op.WhichOneof("op") for op in ops.ops}
        action = self.action or (ws.ACK_ACTION_RELEASE if kinds & SUSPENDING
                                 else ws.ACK_ACTION_CONTINUE)
        future: asyncio.Future[ws.Ack] = asyncio.get_running_loop().create_future()
        ack = ws.Ack(run_id=ops.run_id, seq=len(self.sent), action=action)
        asyncio.get_running_loop().call_soon(future.set_result, ack)  # answered later, as over gRPC
        return future

    def kinds(self) -> list[list[tuple[str, str]]]:
        return [[(str(op.WhichOneof("op")), _step_id(op)) for op in ops.ops] for ops in self.sent]

    def last_op(self) -> ws.Op:
        return self.sent[-1].ops[-1]


def _step_id(op: ws.Op) -> str:
    message = getattr(op, str(op.WhichOneof("op")))
    return str(getattr(message, "step_id", ""))


def execute(function: Function, steps: Sequence[common_pb2.StepResult] = (),
            session: FakeSession | None = None, target: str = "") -> FakeSession:
    """Run one dispatch of `function` (of the parallel step `target`, if given)."""
    session = session or FakeSession()
    dispatch = ws.Dispatch(
        run_id=RUN_ID, function_id=function.id, lease=7, steps=list(steps),
        event=common_pb2.Event(id="ev-1", name="t/go", data=b'{"n":1}'), target_step_id=target)

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            execution = RunExecution(cast(Session, session), dispatch, function, step_pool=pool,
                                     body_pool=pool, max_payload_bytes=1 << 20)
            await asyncio.wait_for(execution.execute(), 10)

    asyncio.run(main())
    return session


def done(step_id: str, value: Any) -> common_pb2.StepResult:
    return common_pb2.StepResult(step_id=step_id, output=json.dumps(value).encode())


def failed(step_id: str, name: str, message: str) -> common_pb2.StepResult:
    return common_pb2.StepResult(step_id=step_id,
                                 error=common_pb2.ErrorInfo(name=name, message=message))


def declare(handler: Callable[..., Any], function_id: str = "f") -> Function:
    app = Stepline("app", url="127.0.0.1:1")
    return app.function(id=function_id, trigger="t/go", retries=2)(handler)


def output_of(session: FakeSession) -> Any:
    op = session.last_op()
    assert op.WhichOneof("op") == "run_completed", op
    return json.loads(op.run_completed.output)


def failure_of(session: FakeSession) -> ws.RunFailed:
    op = session.last_op()
    assert op.WhichOneof("op") == "run_failed", op
    return op.run_failed


# -- sleep ----------------------------------------------------------------------------------------
def test_sleep_is_reported_with_the_deferred_step_and_drops_the_run() -> None:
    calls: list[str] = []

    async def napper(ctx: Any) -> str:
        await ctx.step.run("before", lambda: calls.append("before"))
        await ctx.step.sleep("nap", "1m30s")
        await ctx.step.run("after", lambda: calls.append("after"))
        return "rested"

    fn = declare(napper)
    session = execute(fn)
    assert session.kinds() == [[("step_completed", "before"), ("sleep", "nap")]]
    sleep = session.last_op().sleep
    assert sleep.duration.ToMilliseconds() == 90_000 and not sleep.HasField("until")
    assert calls == ["before"]

    resumed = execute(fn, [done("before", None), done("nap", None)])
    assert resumed.kinds() == [[("step_completed", "after"), ("run_completed", "")]]
    assert output_of(resumed) == "rested" and calls == ["before", "after"]


def test_sleep_until_sends_the_instant() -> None:
    when = datetime(2030, 1, 31, 8, 0, tzinfo=UTC)

    def sync_napper(ctx: Any) -> str:  # the sync facade has the same tools
        ctx.step.sleep_until("until", "2030-01-31T09:00:00+01:00")
        return "late"

    session = execute(declare(sync_napper))
    assert session.kinds() == [[("sleep", "until")]]
    assert session.last_op().sleep.until.ToDatetime(tzinfo=UTC) == when


@pytest.mark.parametrize("call", [
    lambda step: step.sleep("nap", "soon"),
    lambda step: step.sleep_until("nap", datetime(2030, 1, 1)),
    lambda step: step.wait_for_event("w", event="x", timeout=0),
    lambda step: step.invoke("i", function="", data={}),
    lambda step: step.invoke("i", function="g", data=[1]),
    lambda step: step.send_event("s", {"name": "", "data": {}}),
    lambda step: step.send_event("s", {"name": "x", "data": "text"}),
    lambda step: step.send_event("s", []),
    # What the server would refuse: names past its columns, NUL, NaN.
    lambda step: step.run("n" * 257, lambda: 1),
    lambda step: step.sleep("nap\x00", 1),
    lambda step: step.send_event("s", {"name": "e" * 257, "data": {}}),
    lambda step: step.send_event("s", {"name": "e", "id": "i" * 129, "data": {}}),
    lambda step: step.send_event("s", {"name": "e", "data": {"x": float("nan")}}),
])
def test_bad_arguments_fail_the_run_at_once(call: Callable[[Any], Any]) -> None:
    async def misuse(ctx: Any) -> None:
        await call(ctx.step)

    run_failed = failure_of(execute(declare(misuse)))
    assert run_failed.error.name == "InvalidUsageError" and run_failed.non_retriable


# -- wait_for_event and invoke ------------------------------------------------------------------
def test_wait_for_event_reports_the_wait_then_returns_the_event() -> None:
    async def waiter(ctx: Any) -> Any:
        got = await ctx.step.wait_for_event("upgrade", event="billing/upgraded", timeout="2d",
                                            if_="async.data.userId == event.data.userId")
        assert got is None or isinstance(got, Event)
        if got is None:
            return None
        assert got.ts is not None
        return [got.id, got.name, got.data, got.ts.isoformat(), got.user]

    fn = declare(waiter)
    session = execute(fn)
    assert session.kinds() == [[("wait_for_event", "upgrade")]]
    wait = session.last_op().wait_for_event
    assert (wait.name, wait.event, wait.expression, wait.timeout.ToMilliseconds()) == (
        "upgrade", "billing/upgraded", "async.data.userId == event.data.userId", 172_800_000)

    event = {"id": "e9", "name": "billing/upgraded", "data": {"plan": "pro"},
             "ts": 1_700_000_000_123, "user": {"id": "u"}}
    assert output_of(execute(fn, [done("upgrade", event)])) == [
        "e9", "billing/upgraded", {"plan": "pro"}, "2023-11-14T22:13:20.123000+00:00",
        {"id": "u"}]
    assert output_of(execute(fn, [done("upgrade", None)])) is None


def test_invoke_reports_the_call_and_raises_the_childs_error() -> None:
    app = Stepline("app", url="127.0.0.1:1")

    @app.function(id="double", trigger="t/double")
    async def double(ctx: Any) -> int:
        return 2 * int(ctx.event.data["n"])

    @app.function(id="caller", trigger="t/go")
    async def caller(ctx: Any) -> Any:
        doubled = await ctx.step.invoke("double-it", function=double, data={"n": 21},
                                        timeout=timedelta(minutes=5))
        try:
            await ctx.step.invoke("slow", function="slow-child")
        except StepError as exc:
            return [doubled, exc.step_id, exc.error_name, exc.error_message]
        return "not reached"

    # A Function is named by its full name; an id string goes as written (the server resolves
    # a bare id in the caller's app).
    session = execute(caller)
    invoke = session.last_op().invoke
    assert (invoke.step_id, invoke.function_id, json.loads(invoke.data),
            invoke.timeout.ToMilliseconds()) == ("double-it", "app:double", {"n": 21}, 300_000)

    session = execute(caller, [done("double-it", 42)])
    invoke = session.last_op().invoke
    assert (invoke.function_id, invoke.data, invoke.HasField("timeout")) == (
        "slow-child", b"{}", False)

    session = execute(caller, [done("double-it", 42),
                               failed("slow", "InvokeTimeout", "did not finish in time")])
    assert output_of(session) == [42, "slow", "InvokeTimeout", "did not finish in time"]


# -- send_event -----------------------------------------------------------------------------------
def test_send_event_ids_are_kept_or_derived_and_sent_with_the_step() -> None:
    async def fan_out(ctx: Any) -> Any:
        await ctx.step.run("first", lambda: 1)
        sent = await ctx.step.send_event("notify", [
            {"name": "t/a", "data": {"n": 1}},
            EventInput("t/b", {"n": 2}, id="mine", user={"id": "u"}),
            {"name": "t/c", "data": {}, "user": {"id": "v"}}])
        again = await ctx.step.send_event("notify", EventInput("t/d"))
        return [sent, again]

    session = execute(declare(fan_out))
    assert session.kinds() == [[("step_completed", "first"), ("send_events", "notify")],
                               [("send_events", "notify:1")], [("run_completed", "")]]

    def derived(step_id: str, index: int) -> str:
        return hashlib.sha256(f"{RUN_ID}\0{step_id}\0{index}".encode()).hexdigest()[:32]

    events = session.sent[0].ops[1].send_events.events
    assert [e.id for e in events] == [derived("notify", 0), "mine", derived("notify", 2)]
    assert [json.loads(e.data) for e in events] == [{"n": 1}, {"n": 2}, {}]
    assert [e.user for e in events] == [b"", b'{"id":"u"}', b'{"id":"v"}']
    assert output_of(session) == [{"ids": [derived("notify", 0), "mine", derived("notify", 2)]},
                                  {"ids": [derived("notify:1", 0)]}]


def test_send_event_replays_from_memo_without_sending() -> None:
    async def sender(ctx: Any) -> Any:
        return await ctx.step.send_event("notify", {"name": "t/a", "data": {}})

    session = execute(declare(sender), [done("notify", {"ids": ["x"]})])
    assert session.kinds() == [[("run_completed", "")]]
    assert output_of(session) == {"ids": ["x"]}


def test_a_rejected_send_event_drops_the_run() -> None:
    async def sender(ctx: Any) -> Any:
        try:
            await ctx.step.send_event("notify", {"name": "t/a", "data": {}})
        except Exception:  # Released is not an Exception: user code cannot swallow it
            return "swallowed"
        return "sent"

    session = execute(declare(sender), session=FakeSession(ws.ACK_ACTION_REJECTED))
    assert session.kinds() == [[("send_events", "notify")]]


# -- non-determinism ------------------------------------------------------------------------------
def test_a_new_step_before_memoized_ones_fails_the_run() -> None:
    calls: list[str] = []

    async def changed(ctx: Any) -> str:
        await ctx.step.run("a", lambda: calls.append("a"))
        with contextlib.suppress(Exception):  # swallowing the error does not save the run
            await ctx.step.run("c", lambda: calls.append("c"))
        return "finished"

    session = execute(declare(changed), [done("a", None), done("b", 1), done("b:1", 2)])
    assert calls == []
    run_failed = failure_of(session)
    assert run_failed.error.name == "NonDeterminismError" and run_failed.non_retriable
    message = run_failed.error.message
    assert "new step 'c'" in message and "'b', 'b:1'" in message
    assert session.kinds() == [[("run_failed", "")]]


@pytest.mark.parametrize("kind", ["sleep", "wait", "invoke", "send"])
def test_every_step_kind_checks_for_non_determinism(kind: str) -> None:
    async def changed(ctx: Any) -> None:
        step = ctx.step
        await {"sleep": lambda: step.sleep("new", 1),
               "wait": lambda: step.wait_for_event("new", event="x", timeout=1),
               "invoke": lambda: step.invoke("new", function="g"),
               "send": lambda: step.send_event("new", {"name": "x", "data": {}})}[kind]()

    session = execute(declare(changed), [done("old", None)])
    assert session.kinds() == [[("run_failed", "")]]
    assert failure_of(session).error.name == "NonDeterminismError"


def test_steps_awaited_together_replay_without_false_alarms() -> None:
    calls: list[str] = []

    def call(step_id: str, value: int) -> int:
        calls.append(step_id)
        return value

    async def branch(ctx: Any, prefix: str) -> list[Any]:
        first = await ctx.step.run(f"{prefix}1", call, f"{prefix}1", 1)
        if prefix == "a":
            await asyncio.sleep(0)  # so branch b reaches its new step while a2 is not replayed
        second = await ctx.step.run(f"{prefix}2", call, f"{prefix}2", 2)
        return [first, second]

    async def together(ctx: Any) -> Any:
        return await asyncio.gather(branch(ctx, "a"), branch(ctx, "b"))

    # The earlier attempt finished a1, b1 and a2; b2 failed and is retried now.
    session = execute(declare(together), [done("a1", 10), done("b1", 20), done("a2", 30)])
    assert calls == ["b2"]
    assert output_of(session) == [[10, 30], [20, 2]]


def test_async_functions_get_a_step_and_sync_ones_a_sync_step() -> None:
    seen: list[tuple[bool, type]] = []

    async def async_fn(ctx: Context) -> None:
        seen.append((isinstance(ctx, Context), type(ctx.step)))

    def sync_fn(ctx: SyncContext) -> None:
        seen.append((isinstance(ctx, Context), type(ctx.step)))

    execute(declare(async_fn))
    execute(declare(sync_fn))
    assert seen == [(True, Step), (True, SyncStep)]


def test_sync_functions_report_the_same_ops() -> None:
    def sync_fn(ctx: Any) -> Any:
        value = ctx.step.run("one", lambda: 1)
        sent = ctx.step.send_event("tell", {"name": "t/x", "data": {"v": value}, "id": "fixed"})
        ctx.step.sleep("nap", timedelta(seconds=2))
        return sent

    session = execute(declare(sync_fn))
    assert session.kinds() == [[("step_completed", "one"), ("send_events", "tell")],
                               [("sleep", "nap")]]
    resumed = execute(declare(sync_fn), [done("one", 1), done("tell", {"ids": ["fixed"]}),
                                         done("nap", None)])
    assert output_of(resumed) == {"ids": ["fixed"]}


# -- parallel steps -------------------------------------------------------------------------------
def _fan_out(calls: list[str]) -> Function:
    def call(step_id: str) -> str:
        calls.append(step_id)
        return step_id.upper()

    async def fan(ctx: Any) -> Any:
        return await asyncio.gather(*(ctx.step.run(s, call, s) for s in ("a", "b", "c")))

    return declare(fan)


def test_steps_awaited_together_are_planned_not_run() -> None:
    calls: list[str] = []
    session = execute(_fan_out(calls))
    planned = session.last_op().planned
    assert [(s.step_id, s.name) for s in planned.steps] == [("a", "a"), ("b", "b"), ("c", "c")]
    assert calls == [] and session.kinds() == [[("planned", "")]]


def test_a_parallel_steps_dispatch_runs_its_target_alone_and_ends() -> None:
    # Siblings a and c wait for the dispatch to end; reporting b's result releases them at once.
    calls: list[str] = []
    session = execute(_fan_out(calls), target="b")
    assert calls == ["b"]
    assert session.kinds() == [[("step_completed", "b")]]
    assert session.sent[0].target_step_id == "b"


def test_a_parallel_step_not_reached_on_replay_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stepline._execution.TARGET_WAIT_SECONDS", 0.01)
    calls: list[str] = []
    session = execute(_fan_out(calls), target="gone")
    assert calls == [] and session.kinds() == [[("step_failed", "gone")]]
    error = session.last_op().step_failed.error
    assert error.name == "NonDeterminismError" and "'gone' was not reached" in error.message
