"""`ctx.step`: durable steps. Completed steps return their memoized result on replay."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from stepline.errors import NonRetriableError, RetryAfterError, StepError
from stepline.v1 import common_pb2, worker_service_pb2

if TYPE_CHECKING:
    from stepline._execution import RunExecution

T = TypeVar("T")


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


class Step:
    """Step tools for async functions: `await ctx.step.run("name", fn, *args)`."""

    def __init__(self, execution: RunExecution) -> None:
        self._ex = execution

    async def run(
        self, name: str, fn: Callable[..., Awaitable[T]] | Callable[..., T], *args: Any,
        **kwargs: Any,
    ) -> T:
        """Run `fn(*args, **kwargs)` once for this run and return its (JSON) result.

        On replay the stored result is returned without calling `fn`. A failure is retried with
        backoff; after the last attempt StepError is raised here.
        """
        if not isinstance(name, str) or not name:
            raise TypeError("step name must be a non-empty string")
        ex = self._ex
        step_id = ex.ids.next(name)
        memo = ex.memo.get(step_id)
        if memo is not None:
            return _memoized(step_id, memo)  # type: ignore[no-any-return]
        await ex.settle()
        started = now_timestamp()
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(*args, **kwargs)
            else:
                call = functools.partial(fn, *args, **kwargs)
                result = await asyncio.get_running_loop().run_in_executor(ex.step_pool, call)
                if inspect.isawaitable(result):
                    result = await result
            output = encode_json(result, f"output of step {step_id!r}")
            ex.check_size(output, f"output of step {step_id!r}")
        except Released:
            raise
        except Exception as exc:
            op = worker_service_pb2.Op(step_failed=worker_service_pb2.StepFailed(
                step_id=step_id, name=name, started_at=started, **failure_fields(exc)))
            ack = await ex.send([op])
            if ack.action != worker_service_pb2.ACK_ACTION_CONTINUE:
                raise Released() from None
            error = op.step_failed.error
            ex.memo[step_id] = common_pb2.StepResult(step_id=step_id, error=error)
            raise StepError(step_id, error.name, error.message, error.stack) from exc
        # Reported at the next boundary: before the next step runs, or with the run's result.
        ex.defer(worker_service_pb2.Op(step_completed=worker_service_pb2.StepCompleted(
            step_id=step_id, name=name, output=output.encode(), started_at=started)))
        return json.loads(output)  # type: ignore[no-any-return]


def _memoized(step_id: str, memo: common_pb2.StepResult) -> Any:
    if memo.WhichOneof("result") == "error":
        raise StepError(step_id, memo.error.name, memo.error.message, memo.error.stack)
    return json.loads(memo.output)


class SyncStep:
    """The same step tools for plain (sync) functions, which run in a worker thread."""

    def __init__(self, step: Step, loop: asyncio.AbstractEventLoop) -> None:
        self._step = step
        self._loop = loop

    def run(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        future = asyncio.run_coroutine_threadsafe(
            self._step.run(name, fn, *args, **kwargs), self._loop)
        return future.result()
