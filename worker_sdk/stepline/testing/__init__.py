"""Run a function in-process, without a server, for its unit tests.

    from stepline.testing import run

    result = run(send_welcome_email, event={"name": "user/signup.completed",
                                            "data": {"userId": "usr_1"}},
                 steps={"send-email": "msg_1"})
    assert result.output == {"messageId": "msg_1"}
    assert result.step_names == ["fetch-user", "send-email"]

The function runs through the SDK's own executor (the RunExecution the worker uses): this
module plays the server's part, answering each op the execution reports and dispatching the run
again with the memoized steps, as the server does. Steps without a stub run their real code;
a stubbed step returns the stub (or raises it, if it is an exception) instead. Sleeps end at
once on a fake clock, waits get the event you give (or time out), invokes return their stub,
and failures are retried per the function's `retries` without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from stepline._events import Event, EventInput, EventLike, _event_message
from stepline._function import EventTrigger, Function
from stepline.testing._driver import MAX_DISPATCHES, Driver
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

__all__ = [
    "MAX_DISPATCHES",
    "ErrorRecord",
    "InvokeRecord",
    "RunResult",
    "SleepRecord",
    "StepRecord",
    "TestingError",
    "WaitRecord",
    "run",
    "run_async",
]


def _trigger_event(function: Function, event: EventLike | Event | None,
                   now: datetime) -> common_pb2.Event:
    if event is None:
        names = [t.name for t in function.triggers if isinstance(t, EventTrigger)]
        event = {"name": names[0] if names else "stepline/test", "data": {}}
    if isinstance(event, Event):
        event = EventInput(event.name, event.data, id=event.id or None, ts=event.ts,
                           user=event.user)
    message = _event_message(event, "event")
    message.id = message.id or "evt_test"
    if not message.HasField("ts"):
        message.ts.FromDatetime(now)
    return message


def _batch(function: Function, events: Sequence[EventLike | Event],
           now: datetime) -> list[common_pb2.Event]:
    """A batched run's events, each with an id of its own."""
    batch = [_trigger_event(function, event, now) for event in events]
    for index, message in enumerate(batch):
        if message.id == "evt_test":
            message.id = f"evt_test_{index}"
    return batch


async def run_async(function: Function, *, event: EventLike | Event | None = None,
                    events: Sequence[EventLike | Event] | None = None,
                    steps: Stubs | None = None, waits: Stubs | None = None,
                    invokes: Stubs | None = None, run_id: str = "run_test",
                    now: datetime | None = None) -> RunResult:
    """run(), for a test that already has an event loop running (an async test)."""
    if not isinstance(function, Function):
        raise TestingError(f"function: expected what @app.function(...) returns; got "
                           f"{function!r}")
    if events is not None and (event is not None or not events):
        raise TestingError("events: give a batch of at least one event, and no `event` (the "
                           "batch's first event is the trigger)")
    clock = now if now is not None else datetime.now(UTC)
    batch = _batch(function, events, clock) if events else []
    trigger = batch[0] if batch else _trigger_event(function, event, clock)
    with ThreadPoolExecutor(4, thread_name_prefix="stepline-test") as pool:
        driver = Driver(function, trigger, stubs=steps or {}, waits=waits or {},
                        invokes=invokes or {}, run_id=run_id, now=clock, pool=pool,
                        batch=batch)
        dispatches = await driver.drive()
    return driver.result(dispatches)


def run(function: Function, *, event: EventLike | Event | None = None,
        events: Sequence[EventLike | Event] | None = None,
        steps: Stubs | None = None, waits: Stubs | None = None,
        invokes: Stubs | None = None, run_id: str = "run_test",
        now: datetime | None = None) -> RunResult:
    """Run `function` to its end in this process, with no server, and return what happened.

    `event`: the trigger (a dict with "name" and "data", an EventInput or an Event; default: an
    event of the function's first trigger with empty data). `events`: instead of `event`, the
    events of a batched run (`ctx.events`, oldest first; the first is `ctx.event`). `steps`:
    results of `step.run` steps by step id or name; a value is returned instead of calling the
    step's function, an exception instance is raised by it (and retried like any failure). Steps
    without a stub run for real. `waits`: the event each wait_for_event gets, by id or name
    (None or no entry: it times out). `invokes`: each invoke's result by id or name (an
    exception fails it; an invoke without a stub raises TestingError). `now`: where the fake
    clock starts (default the current time); sleeps and timed-out waits move it on, instantly.

    The function's own failure is `result.error`, not an exception: run() raises only
    TestingError, when the run cannot be carried out.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop running here: the usual case
    else:
        raise TestingError("run() was called with an event loop running (an async test); "
                           "use `await run_async(...)` there")
    return asyncio.run(run_async(function, event=event, events=events, steps=steps, waits=waits,
                                 invokes=invokes, run_id=run_id, now=now))
