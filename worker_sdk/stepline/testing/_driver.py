"""The server's part in stepline.testing: answers the ops the SDK's executor reports, as the
server would, and dispatches the run again with its memoized steps until it ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from stepline import _config
from stepline._events import Event, EventInput, event_from_json, event_from_proto
from stepline._execution import RunExecution
from stepline._function import Function
from stepline._step import Step, encode_json, error_info
from stepline.errors import SteplineError
from stepline.testing._records import (
    ErrorRecord,
    InvokeRecord,
    RunResult,
    SleepRecord,
    StepRecord,
    Stubs,
    TestingError,
    WaitRecord,
)
from stepline.v1 import common_pb2
from stepline.v1 import worker_service_pb2 as ws

# A run that needs more dispatches than this is looping (a step failing forever, say).
MAX_DISPATCHES = 1000
CONTINUE = ws.ACK_ACTION_CONTINUE
RELEASE = ws.ACK_ACTION_RELEASE


def _lookup(stubs: Stubs, step_id: str, name: str) -> tuple[bool, Any]:
    if step_id in stubs:
        return True, stubs[step_id]
    if name in stubs:
        return True, stubs[name]
    return False, None


def _error(exc: BaseException) -> ErrorRecord:
    info = error_info(exc)
    return ErrorRecord(name=info.name, message=info.message, stack=info.stack)


def _record(info: common_pb2.ErrorInfo) -> ErrorRecord:
    return ErrorRecord(name=info.name, message=info.message, stack=info.stack)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


class TestStep(Step):
    """The real step tools, except that a stubbed step's callable is replaced by its stub."""

    def __init__(self, execution: TestExecution) -> None:
        super().__init__(execution)
        self._test = execution

    async def _execute(self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> str:
        found, stub = _lookup(self._test.stubs, step_id, self._test.executing.get(step_id, ""))
        if not found:
            return await super()._execute(step_id, fn, args, kwargs)
        if isinstance(stub, BaseException):
            raise stub.with_traceback(None)  # the same instance on every attempt
        output = encode_json(stub, f"output of step {step_id!r}")
        self._test.check_size(output, f"output of step {step_id!r}")
        return output


class TestExecution(RunExecution):
    def __init__(self, driver: Driver, dispatch: ws.Dispatch) -> None:
        super().__init__(driver, dispatch, driver.function, step_pool=driver.pool,
                         body_pool=driver.pool,
                         max_payload_bytes=_config.SERVE_MAX_PAYLOAD_BYTES)
        self.stubs = driver.stubs
        self.executing: dict[str, str] = {}  # step id -> name, of steps that passed the gate

    def new_step(self) -> Step:
        return TestStep(self)

    async def gate(self, step_id: str, name: str) -> None:
        await super().gate(step_id, name)
        self.executing[step_id] = name


class Driver:
    """Plays the server: answers the ops the execution reports, and dispatches the run again
    until it ends."""

    def __init__(self, function: Function, event: common_pb2.Event, *, stubs: Stubs,
                 waits: Stubs, invokes: Stubs, run_id: str, now: datetime,
                 pool: ThreadPoolExecutor, batch: list[common_pb2.Event] | None = None) -> None:
        self.function = function
        self.event = event
        self.batch = batch or []  # a batched run's events (`event` is the first)
        self.stubs, self.waits, self.invokes = stubs, waits, invokes
        self.run_id = run_id
        self.clock = now
        self.pool = pool
        self.memo: dict[str, common_pb2.StepResult] = {}
        self.attempts: dict[str, int] = {}  # failed attempts of the step (or body, "") now due
        self.queue: list[str] = []  # target step ids of planned parallel steps to dispatch
        self.target = ""
        self.steps: list[StepRecord] = []
        self.sent: list[Event] = []
        self.sleeps: list[SleepRecord] = []
        self.wait_records: list[WaitRecord] = []
        self.invoke_records: list[InvokeRecord] = []
        self.ended = False
        self.output: Any = None
        self.error: ErrorRecord | None = None
        self.problem: str | None = None
        self.reported = False

    # -- the OpsSink the execution reports to ----------------------------------------------------
    def send_ops(self, ops: ws.Ops) -> asyncio.Future[ws.Ack]:
        action = CONTINUE
        for op in ops.ops:
            self.reported = True
            if self.problem is None and self._answer(op) == RELEASE:
                action = RELEASE
        if self.problem is not None or self.ended:
            action = RELEASE
        future: asyncio.Future[ws.Ack] = asyncio.get_running_loop().create_future()
        future.set_result(ws.Ack(run_id=ops.run_id, action=action))
        return future

    def _answer(self, op: ws.Op) -> ws.AckAction:
        kind = op.WhichOneof("op")
        handler: Callable[[Any], ws.AckAction] = getattr(self, f"_on_{kind}", self._unknown)
        return handler(getattr(op, str(kind)))

    def _unknown(self, message: Any) -> ws.AckAction:
        self.problem = f"the execution reported an op the test harness does not know: {message}"
        return RELEASE

    def _result(self, record: StepRecord, result: common_pb2.StepResult) -> None:
        self.memo[record.id] = result
        self.steps.append(record)
        self.attempts.pop(self.target, None)

    def _on_step_completed(self, op: ws.StepCompleted) -> ws.AckAction:
        output = json.loads(op.output) if op.output else None
        self._result(StepRecord(id=op.step_id, name=op.name, kind="run", output=output,
                                attempts=self.attempts.get(self.target, 0) + 1),
                     common_pb2.StepResult(step_id=op.step_id, output=op.output or b"null"))
        return RELEASE if self.target else CONTINUE

    def _failed_for_good(self, non_retriable: bool) -> bool:
        """Count a failed attempt of what this dispatch executes; True if it was the last."""
        used = self.attempts.get(self.target, 0) + 1
        if non_retriable or used >= self.function.retries + 1:
            return True
        self.attempts[self.target] = used
        return False

    def _on_step_failed(self, op: ws.StepFailed) -> ws.AckAction:
        attempts = self.attempts.get(self.target, 0) + 1
        if not self._failed_for_good(op.non_retriable):
            self._retry(op.retry_after)
            return RELEASE
        self._result(StepRecord(id=op.step_id, name=op.name, kind="run",
                                error=_record(op.error), attempts=attempts),
                     common_pb2.StepResult(step_id=op.step_id, error=op.error))
        # The last attempt: the step raises StepError where it was called and the run goes on
        # (a parallel step's dispatch ends with it; the run goes on in the next one).
        return RELEASE if self.target else CONTINUE

    def _retry(self, retry_after: common_pb2.RetryAfter) -> None:
        """A retry is due: the fake clock moves on by the delay asked for, and the same step (or
        body) is dispatched again."""
        if retry_after.HasField("delay"):
            self.clock += retry_after.delay.ToTimedelta()
        if self.target:
            self.queue.insert(0, self.target)

    def _on_sleep(self, op: ws.Sleep) -> ws.AckAction:
        started = self.clock
        duration = op.duration.ToTimedelta() if op.HasField("duration") else None
        until = op.until.ToDatetime(tzinfo=UTC) if op.HasField("until") else None
        self.clock = max(self.clock, until) if until is not None else self.clock + (
            duration or timedelta(0))
        self.sleeps.append(SleepRecord(id=op.step_id, name=op.name, duration=duration,
                                       until=until, started_at=started, woke_at=self.clock))
        self._result(StepRecord(id=op.step_id, name=op.name, kind="sleep"),
                     common_pb2.StepResult(step_id=op.step_id, output=b"null"))
        return RELEASE

    def _on_wait_for_event(self, op: ws.WaitForEvent) -> ws.AckAction:
        timeout = op.timeout.ToTimedelta()
        found, stub = _lookup(self.waits, op.step_id, op.name)
        value = self._wait_result(op, stub) if found and stub is not None else None
        self.clock += timeout if value is None else timedelta(0)
        self.wait_records.append(WaitRecord(
            id=op.step_id, name=op.name, event=op.event, if_=op.expression or None,
            timeout=timeout, result=event_from_json(value)))
        self._result(StepRecord(id=op.step_id, name=op.name, kind="wait_for_event",
                                output=value),
                     common_pb2.StepResult(step_id=op.step_id,
                                           output=json.dumps(value).encode()))
        return RELEASE

    def _wait_result(self, op: ws.WaitForEvent, stub: Any) -> dict[str, Any] | None:
        """A wait's stub as the server stores the matched event: {"id", "name", "data", "ts"
        (ms), "user"}. A stub without a name gets the awaited one."""
        if isinstance(stub, Event):
            stub = EventInput(stub.name, stub.data, id=stub.id or None, ts=stub.ts,
                              user=stub.user)
        elif isinstance(stub, Mapping) and "name" not in stub:
            stub = {**stub, "name": op.event}
        try:
            message = (stub if isinstance(stub, EventInput) else EventInput(**stub)).to_proto()
        except (TypeError, SteplineError) as exc:
            self.problem = (f"waits[{op.name!r}]: expected an event (a dict with \"data\", an "
                            f"EventInput or an Event) or None; got {stub!r}: {exc}")
            return None
        event = event_from_proto(message)
        ts = event.ts or self.clock
        return {"id": event.id or f"evt_{op.step_id}", "name": event.name, "data": event.data,
                "ts": _ms(ts), "user": event.user}

    def _on_invoke(self, op: ws.Invoke) -> ws.AckAction:
        found, stub = _lookup(self.invokes, op.step_id, op.name)
        if not found:
            self.problem = (f"step {op.name!r} invokes function {op.function_id!r}: give its "
                            f"result with invokes={{{op.name!r}: ...}} (a value, or an "
                            "exception to fail it)")
            return RELEASE
        data = json.loads(op.data) if op.data else {}
        if isinstance(stub, BaseException):
            error = _error(stub)
            info = common_pb2.ErrorInfo(name=error.name, message=error.message)
            self.invoke_records.append(InvokeRecord(id=op.step_id, name=op.name,
                                                    function_id=op.function_id, data=data,
                                                    error=error))
            self._result(StepRecord(id=op.step_id, name=op.name, kind="invoke", error=error),
                         common_pb2.StepResult(step_id=op.step_id, error=info))
            return RELEASE
        output = encode_json(stub, f"invokes[{op.name!r}]")
        self.invoke_records.append(InvokeRecord(id=op.step_id, name=op.name,
                                                function_id=op.function_id, data=data,
                                                output=stub))
        self._result(StepRecord(id=op.step_id, name=op.name, kind="invoke",
                                output=json.loads(output)),
                     common_pb2.StepResult(step_id=op.step_id, output=output.encode()))
        return RELEASE

    def _on_send_events(self, op: ws.SendEvents) -> ws.AckAction:
        events = [event_from_proto(message) for message in op.events]
        self.sent.extend(events)
        ids = {"ids": [event.id for event in events]}
        self._result(StepRecord(id=op.step_id, name=op.name, kind="send_event", output=ids),
                     common_pb2.StepResult(step_id=op.step_id,
                                           output=json.dumps(ids).encode()))
        return CONTINUE

    def _on_planned(self, op: ws.Planned) -> ws.AckAction:
        self.queue.extend(step.step_id for step in op.steps)
        return RELEASE

    def _on_run_completed(self, op: ws.RunCompleted) -> ws.AckAction:
        self.ended = True
        self.output = json.loads(op.output) if op.output else None
        return RELEASE

    def _on_run_failed(self, op: ws.RunFailed) -> ws.AckAction:
        if self._failed_for_good(op.non_retriable):
            self.ended = True
            self.error = _record(op.error)
        else:
            self._retry(op.retry_after)
        return RELEASE

    # -- dispatching ------------------------------------------------------------------------------
    def dispatch(self) -> ws.Dispatch:
        self.target = self.queue.pop(0) if self.queue else ""
        attempt = self.attempts.get(self.target, 0)
        return ws.Dispatch(
            run_id=self.run_id, function_id=self.function.id, lease=1, attempt=attempt,
            max_attempts=self.function.retries + 1, event=self.event,
            steps=list(self.memo.values()), target_step_id=self.target, events=self.batch)

    async def drive(self) -> int:
        for count in range(1, MAX_DISPATCHES + 1):
            self.reported = False
            await TestExecution(self, self.dispatch()).execute()
            if self.problem is not None:
                raise TestingError(self.problem)
            if self.ended:
                return count
            if not self.reported:
                raise TestingError(f"dispatch {count} of the run ended without reporting "
                                   "anything")
        raise TestingError(f"the run did not end within {MAX_DISPATCHES} dispatches")

    def result(self, dispatches: int) -> RunResult:
        return RunResult(output=self.output, error=self.error, steps=tuple(self.steps),
                         sent_events=tuple(self.sent), sleeps=tuple(self.sleeps),
                         waits=tuple(self.wait_records), invokes=tuple(self.invoke_records),
                         dispatches=dispatches, now=self.clock)
