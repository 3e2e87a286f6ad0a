"""An unmodified Inngest app written with the official PyPI SDK, served by FastAPI: the tests'
scenarios (tests/integration/test_inngest_py.py). It knows nothing of Stepline: INNGEST_DEV or
INNGEST_BASE_URL + keys point it at the server, as they would at Inngest.

Run: python -m uvicorn tests.inngest_apps.py_app:app --port PORT
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id=os.environ.get("APP_ID", "pyapp"))


@client.create_function(fn_id="three-steps", trigger=inngest.TriggerEvent(event="test/three"))
async def three_steps(ctx: inngest.Context) -> dict[str, Any]:
    a = await ctx.step.run("one", lambda: 1)
    b = await ctx.step.run("two", lambda: a + 1)
    c = await ctx.step.run("three", lambda: b + 1)
    return {"sum": a + b + c, "n": ctx.event.data.get("n")}


@client.create_function(fn_id="flaky", retries=2, trigger=inngest.TriggerEvent(event="test/flaky"))
async def flaky(ctx: inngest.Context) -> str:
    def attempt() -> str:
        if ctx.attempt == 0:
            raise ValueError("first attempt fails")
        return f"ok on attempt {ctx.attempt}"

    return await ctx.step.run("shaky", attempt)


async def announce_failure(ctx: inngest.Context) -> str:
    return await ctx.step.run("note", lambda: "failure handled")


@client.create_function(fn_id="doomed", retries=3, on_failure=announce_failure,
                        trigger=inngest.TriggerEvent(event="test/doomed"))
async def doomed(ctx: inngest.Context) -> None:
    def boom() -> None:
        raise inngest.NonRetriableError("no point retrying")

    await ctx.step.run("boom", boom)


@client.create_function(fn_id="sleeper", trigger=inngest.TriggerEvent(event="test/sleep"))
async def sleeper(ctx: inngest.Context) -> str:
    await ctx.step.sleep("nap", datetime.timedelta(seconds=1))
    return await ctx.step.run("after", lambda: "woke")


@client.create_function(fn_id="waiter", trigger=inngest.TriggerEvent(event="test/wait"))
async def waiter(ctx: inngest.Context) -> Any:
    seconds = int(ctx.event.data.get("timeout", 30))
    got = await ctx.step.wait_for_event(
        "approval", event="test/approve", if_exp="async.data.id == event.data.id",
        timeout=datetime.timedelta(seconds=seconds))
    return None if got is None else got.data


@client.create_function(fn_id="invoker", trigger=inngest.TriggerEvent(event="test/invoke"))
async def invoker(ctx: inngest.Context) -> Any:
    return await ctx.step.invoke("child", function=three_steps, data={"n": 7})


@client.create_function(fn_id="fan-out", trigger=inngest.TriggerEvent(event="test/parallel"))
async def fan_out(ctx: inngest.Context) -> list[Any]:
    results = await ctx.group.parallel((
        lambda: ctx.step.run("left", lambda: "L"),
        lambda: ctx.step.run("right", lambda: "R"),
    ))
    return list(results)


@client.create_function(fn_id="sender", trigger=inngest.TriggerEvent(event="test/send"))
async def sender(ctx: inngest.Context) -> list[str]:
    return await ctx.step.send_event("fire", inngest.Event(name="test/three", data={"n": 42}))


@client.create_function(
    fn_id="cancellable", cancel=[inngest.Cancel(event="test/stop",
                                                if_exp="async.data.id == event.data.id")],
    trigger=inngest.TriggerEvent(event="test/cancellable"))
async def cancellable(ctx: inngest.Context) -> str:
    await ctx.step.sleep("long", datetime.timedelta(minutes=10))
    return "not cancelled"


@client.create_function(fn_id="ticker",
                        trigger=inngest.TriggerCron(cron=os.environ.get("TICKER_CRON",
                                                                        "*/5 * * * *")),
                        concurrency=[inngest.Concurrency(limit=2)])
async def ticker(ctx: inngest.Context) -> str:
    return "tick"


@client.create_function(fn_id="batcher", trigger=inngest.TriggerEvent(event="test/batch"),
                        batch_events=inngest.Batch(max_size=5,
                                                   timeout=datetime.timedelta(seconds=1)))
async def batcher(ctx: inngest.Context) -> dict[str, Any]:
    return {"event": ctx.event.data.get("i"), "events": [e.data.get("i") for e in ctx.events]}


functions = [three_steps, flaky, doomed, sleeper, waiter, invoker, fan_out, sender, cancellable,
             ticker, batcher]
app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, functions)
