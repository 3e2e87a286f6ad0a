"""`ctx.step`: durable steps. Completed steps return their memoized result on replay."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from google.protobuf.timestamp_pb2 import Timestamp

from stepline._durations import (
    DurationLike,
    duration_proto,
    parse_duration,
    parse_time,
    timestamp_proto,
)
from stepline._events import (
    MAX_NAME_LENGTH,
    Event,
    EventLike,
    check_text,
    event_from_json,
    step_events,
)
from stepline._function import Function
from stepline.errors import InvalidUsageError, NonRetriableError, RetryAfterError, StepError
from stepline.v1 import common_pb2
from stepline.v1 import worker_service_pb2 as ws

if TYPE_CHECKING:
    from stepline._execution import RunExecution

T = TypeVar("T")
log = logging.getLogger("stepline.worker")


class Released(BaseException):
    """Unwinds user code when the run is suspended or taken away from this worker.

    A BaseException, so `except Exception` in user code does not swallow it.
    """


class StepIds:
    """Deterministic step ids: the name for its first use in a run, then `name:1`, `name:2`…"""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}
        self._used: set[str] = set()

    def next(self, name: str) -> str:
        n = self._next.get(name, 0)
        while True:
            step_id = name if n == 0 else f"{name}:{n}"
            n += 1
            if step_id not in self._used:
                break
        self._next[name] = n
        self._used.add(step_id)
        return step_id


def encode_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise NonRetriableError(f"{what} is not JSON-serializable: {exc}") from exc


def error_info(exc: BaseException) -> common_pb2.ErrorInfo:
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return common_pb2.ErrorInfo(name=type(exc).__name__, message=str(exc), stack=stack[-8000:])


def failure_fields(exc: BaseException) -> dict[str, Any]:
    """How an exception from user code maps onto StepFailed/RunFailed fields."""
    fields: dict[str, Any] = {"error": error_info(exc)}
    if isinstance(exc, NonRetriableError):
        fields["non_retriable"] = True
    elif isinstance(exc, RetryAfterError):
        fields["retry_after"] = common_pb2.RetryAfter()
        fields["retry_after"].delay.FromMilliseconds(int(exc.delay_seconds * 1000))
    return fields


def now_timestamp() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def _memoized(step_id: str, memo: common_pb2.StepResult) -> Any:
    if memo.WhichOneof("result") == "error":
        raise StepError(step_id, memo.error.name, memo.error.message, memo.error.stack)
    return json.loads(memo.output)


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidUsageError(f"step name: expected a non-empty string; got {name!r}")
    # The step's id is this name, or "name:N" when the name repeats: both fit the server.
    check_text(name, "step name", MAX_NAME_LENGTH)


def _check_text(value: Any, what: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise InvalidUsageError(f"{what}: expected a non-empty string; got {value!r}")


class Step:
    """Step tools for async functions: `await ctx.step.run("name", fn, *args)`.

    Each call is a step with an id derived from its name (and occurrence); a completed step
    returns its recorded result on replay. Call steps in the same order on every attempt.
    """

    def __init__(self, execution: RunExecution) -> None:
        self._ex = execution

    # Two overloads, because one `Callable[..., Awaitable[T]] | Callable[..., T]` parameter
    # leaves mypy unable to infer T for an async `fn`.
    @overload
    async def run(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any,
                  **kwargs: Any) -> T: ...

    @overload
    async def run(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once for this run and return its (JSON) result.

        On replay the stored result is returned without calling `fn`. A failure is retried with
        backoff; after the last attempt StepError is raised here.
        """
        _check_name(name)
        ex = self._ex
        step_id, memo = ex.next_step(name)
        if memo is not None:
            return _memoized(step_id, memo)
        await ex.check_new_step(step_id)
        await ex.gate(step_id, name)
        await ex.settle()
        started = now_timestamp()
        try:
            with ex.trace.step_span(step_id, name):
                output = await self._execute(step_id, fn, args, kwargs)
        except Released:
            raise
        except Exception as exc:
            op = ws.Op(step_failed=ws.StepFailed(
                step_id=step_id, name=name, started_at=started, **failure_fields(exc)))
            ack = await ex.send([op])
            if ack.action != ws.ACK_ACTION_CONTINUE:
                ex.release(ack)
                raise Released() from None
            error = op.step_failed.error
            ex.memo[step_id] = common_pb2.StepResult(step_id=step_id, error=error)
            raise StepError(step_id, error.name, error.message, error.stack) from exc
        done = ws.Op(step_completed=ws.StepCompleted(
            step_id=step_id, name=name, output=output.encode(), started_at=started))
        if ex.target_step_id:  # a parallel step's dispatch ends with its result
            ex.release(await ex.send([done]))
            raise Released()
        # Reported at the next boundary: before the next step runs, or with the run's result.
        ex.defer(done)
        return json.loads(output)

    async def _execute(self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> str:
        """Call a step's function (a plain one in the step pool, in this context, so that its
        spans nest under the step's); return its output as JSON text."""
        if inspect.iscoroutinefunction(fn):
            result = await fn(*args, **kwargs)
        else:
            call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
            result = await asyncio.get_running_loop().run_in_executor(self._ex.step_pool, call)
            if inspect.isawaitable(result):
                result = await result
        output = encode_json(result, f"output of step {step_id!r}")
        self._ex.check_size(output, f"output of step {step_id!r}")
        return output

    async def sleep(self, name: str, duration: DurationLike) -> None:
        """Pause the run for `duration`: seconds, a timedelta, or a string such as "30s",
        "1h30m", "500ms", "2d", "1w". The run holds no worker meanwhile; the server's clock
        measures the time."""
        _check_name(name)
        delay = parse_duration(duration, f"step {name!r}: duration", allow_zero=True)
        await self._suspend(name, lambda step_id: ws.Op(sleep=ws.Sleep(
            step_id=step_id, name=name, duration=duration_proto(delay))))

    async def sleep_until(self, name: str, when: datetime | str) -> None:
        """Pause the run until `when`: a timezone-aware datetime, or an ISO 8601 string with an
        offset or Z ("2030-01-31T09:00:00+01:00"). A time in the past returns at once."""
        _check_name(name)
        until = parse_time(when, f"step {name!r}: when")
        await self._suspend(name, lambda step_id: ws.Op(sleep=ws.Sleep(
            step_id=step_id, name=name, until=timestamp_proto(until))))

    # ASYNC109 wants asyncio.timeout instead of a `timeout` parameter, but this `timeout` is a
    # durable step option (how long the server waits, holding no worker), not a cancel scope on
    # this call.
    async def wait_for_event(self, name: str, *, event: str,
                             timeout: DurationLike,  # noqa: ASYNC109
                             if_: str | None = None) -> Event | None:
        """Wait for the next event called `event`, sent after this step began, for which the CEL
        filter `if_` is true (`event` is the run's trigger, `async` the candidate, e.g.
        "async.data.userId == event.data.userId"). Returns that event, or None after `timeout`.
        """
        _check_name(name)
        _check_text(event, f"step {name!r}: event")
        _check_text(if_, f"step {name!r}: if_", optional=True)
        limit = parse_duration(timeout, f"step {name!r}: timeout")
        result = await self._suspend(name, lambda step_id: ws.Op(wait_for_event=ws.WaitForEvent(
            step_id=step_id, name=name, event=event, expression=if_ or "",
            timeout=duration_proto(limit))))
        return event_from_json(result)

    # `timeout`: how long the server lets the child run take; durable, as in wait_for_event.
    async def invoke(self, name: str, *, function: Function | str,
                     data: Mapping[str, Any] | None = None,
                     timeout: DurationLike | None = None,  # noqa: ASYNC109
                     ) -> Any:
        """Start a run of `function` with `data` as its event's data, and return that run's
        output. `function`: a Function, the id of one in this app ("fn"), or the full name of
        one in any app ("other-app:fn"). Its failure, a missing function, or `timeout` (error
        "InvokeTimeout") raise StepError here."""
        _check_name(name)
        function_id = function.full_name if isinstance(function, Function) else function
        _check_text(function_id, f"step {name!r}: function")
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise InvalidUsageError(
                f"step {name!r}: data: expected a JSON object (a dict); got {data!r}")
        try:
            payload = json.dumps(dict(data), separators=(",", ":"), ensure_ascii=False,
                                 allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidUsageError(f"step {name!r}: data: not JSON-serializable: {exc}") from None
        self._ex.check_size(payload, f"data of step {name!r}")
        limit = None if timeout is None else parse_duration(timeout, f"step {name!r}: timeout")

        def op(step_id: str) -> ws.Op:
            invoke = ws.Invoke(step_id=step_id, name=name, function_id=function_id,
                               data=payload.encode())
            if limit is not None:
                invoke.timeout.CopyFrom(duration_proto(limit))
            return ws.Op(invoke=invoke)

        return await self._suspend(name, op)

    async def send_event(self, name: str,
                         events: EventLike | Sequence[EventLike]) -> dict[str, list[str]]:
        """Send one event or a list (EventInput, or dicts with "name", "data" and optionally
        "id", "user") exactly once for this run; returns {"ids": [...]}. An event without an id
        gets one derived from the run and the step, so a replay cannot send it twice."""
        _check_name(name)
        ex = self._ex
        step_id, memo = ex.next_step(name)
        if memo is not None:
            return _memoized(step_id, memo)  # type: ignore[no-any-return]
        messages = step_events(events, ex.run_id, step_id, f"step {name!r}: events")
        traceparent = ex.trace.event_traceparent(step_id)
        for message in messages:
            message.traceparent = traceparent
        for index, message in enumerate(messages):
            ex.check_size(message.data.decode(), f"data of event {index} of step {name!r}")
        await ex.check_new_step(step_id)
        ack = await ex.report([ws.Op(send_events=ws.SendEvents(
            step_id=step_id, name=name, events=messages))])
        if ack.action != ws.ACK_ACTION_CONTINUE:
            ex.release(ack)
            raise Released()
        return {"ids": [message.id for message in messages]}

    async def _suspend(self, name: str, op: Callable[[str], ws.Op]) -> Any:
        """A step the server completes later (sleep, wait, invoke): on replay its result; else
        report `op(step_id)` and drop the run, which the server dispatches again when done."""
        ex = self._ex
        step_id, memo = ex.next_step(name)
        if memo is not None:
            return _memoized(step_id, memo)
        await ex.check_new_step(step_id)
        ack = await ex.report([op(step_id)])
        if ack.action == ws.ACK_ACTION_CONTINUE:
            log.error("run %s: the server answered CONTINUE to suspending step %r; dropping the "
                      "run", ex.run_id, step_id)
        ex.release(ack)
        raise Released()


class SyncStep:
    """The same step tools for plain (sync) functions, which run in a worker thread."""

    def __init__(self, step: Step, loop: asyncio.AbstractEventLoop) -> None:
        self._step = step
        self._loop = loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @overload
    def run(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any,
            **kwargs: Any) -> T: ...

    @overload
    def run(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """See Step.run (an async `fn` runs on the worker's event loop, and is awaited)."""
        return self._call(self._step.run(name, fn, *args, **kwargs))

    def sleep(self, name: str, duration: DurationLike) -> None:
        """See Step.sleep."""
        self._call(self._step.sleep(name, duration))

    def sleep_until(self, name: str, when: datetime | str) -> None:
        """See Step.sleep_until."""
        self._call(self._step.sleep_until(name, when))

    def wait_for_event(self, name: str, *, event: str, timeout: DurationLike,
                       if_: str | None = None) -> Event | None:
        """See Step.wait_for_event."""
        return self._call(self._step.wait_for_event(name, event=event, timeout=timeout, if_=if_))

    def invoke(self, name: str, *, function: Function | str, data: Mapping[str, Any] | None = None,
               timeout: DurationLike | None = None) -> Any:
        """See Step.invoke."""
        return self._call(self._step.invoke(name, function=function, data=data, timeout=timeout))

    def send_event(self, name: str,
                   events: EventLike | Sequence[EventLike]) -> dict[str, list[str]]:
        """See Step.send_event."""
        return self._call(self._step.send_event(name, events))
