"""How the SDK's types read in user code: checked by strict mypy (tests/unit/test_sdk_typing.py),
never run.

`assert_type` pins what a type checker infers. A line ending in `# type: ignore[code]` must be
an error of that code: strict mypy reports an ignore that silences nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import assert_type

from stepline import (
    Context,
    Event,
    Function,
    RetryAfterError,
    Step,
    Stepline,
    SyncContext,
    SyncStep,
    Worker,
    serve,
)

app = Stepline("typing-check")
assert_type(app.worker(slots=2), Worker)
assert_type(serve.asgi(app, url="https://shop.example.com/api/stepline"), serve.AsgiHandler)
assert_type(serve.wsgi(app, max_ops=10, max_seconds=1.5), serve.WsgiHandler)
serve.asgi(app, url=3)  # type: ignore[arg-type]


def fetch(user_id: str) -> dict[str, str]:
    return {"id": user_id}


async def fetch_async(user_id: str) -> dict[str, str]:
    return {"id": user_id}


@app.function(id="async-fn", trigger="t/a")
async def async_fn(ctx: Context) -> int:
    assert_type(ctx.step, Step)
    user = await ctx.step.run("fetch", fetch, "u1")
    assert_type(user, dict[str, str])
    again = await ctx.step.run("fetch-async", fetch_async, "u1")
    assert_type(again, dict[str, str])
    await ctx.step.sleep("nap", timedelta(minutes=1))
    got = await ctx.step.wait_for_event("upgrade", event="billing/upgraded", timeout="2d")
    assert_type(got, Event | None)
    ctx.step.run("forgot-await", fetch, "u1") + 1  # type: ignore[operator]
    if ctx.attempt > 1:
        raise RetryAfterError("busy", 5.0)
    return len(user)


@app.function(id="sync-fn", trigger="t/s")
def sync_fn(ctx: SyncContext) -> int:
    assert_type(ctx.step, SyncStep)
    user = ctx.step.run("fetch", fetch, "u1")
    assert_type(user, dict[str, str])
    ctx.step.sleep("nap", 60)
    got = ctx.step.wait_for_event("upgrade", event="billing/upgraded", timeout="2d")
    assert_type(got, Event | None)
    return len(user)


assert_type(async_fn, Function)


def spelled_out(ctx: Context[SyncStep]) -> SyncContext:
    return ctx


def not_a_step(ctx: Context[int]) -> None:  # type: ignore[type-var]
    pass


def sync_code_with_the_async_context(ctx: Context) -> int:
    # A plain function annotated `Context` gets a SyncStep at run time: mypy points it out.
    user = ctx.step.run("fetch", fetch, "u1")
    return len(user)  # type: ignore[arg-type]


# stepline.testing: run() and what its result holds.
def testing_helpers() -> None:
    from stepline import testing

    result = testing.run(async_fn, event={"name": "t/a", "data": {}}, steps={"fetch": {"id": "x"}},
                         waits={"upgrade": None}, invokes={}, now=None)
    assert_type(result, testing.RunResult)
    assert_type(result.error, testing.ErrorRecord | None)
    assert_type(result.steps, tuple[testing.StepRecord, ...])
    assert_type(result.step("fetch"), testing.StepRecord)
    assert_type(result.step_names, list[str])
    assert_type(result.sent_events, tuple[Event, ...])
    assert_type(result.sleeps, tuple[testing.SleepRecord, ...])
    assert_type(result.waits[0].result, Event | None)
    assert_type(result.failed, bool)
    testing.run(fetch, event={"name": "t/a"})  # type: ignore[arg-type]
    testing.run(async_fn, steps=["fetch"])  # type: ignore[arg-type]
