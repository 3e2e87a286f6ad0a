"""An unmodified Inngest app written with the official PyPI SDK that declares every flow control
setting (tests/integration/test_inngest_flow.py). FLOW_BAD=1 adds a function whose rate limit
period is longer than Stepline allows, to see the sync refused naming the field.

Run: python -m uvicorn tests.inngest_apps.py_flow_app:app --port PORT
"""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from typing import Any

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id=os.environ.get("APP_ID", "pyflow"))
SECOND = datetime.timedelta(seconds=1)


@client.create_function(
    fn_id="limited", trigger=inngest.TriggerEvent(event="flow/limited"),
    concurrency=[inngest.Concurrency(limit=1, key="event.data.tenant"),
                 inngest.Concurrency(limit=20, key="'all'", scope="env")])
async def limited(ctx: inngest.Context) -> dict[str, Any]:
    async def work() -> dict[str, Any]:
        start = time.time()
        await asyncio.sleep(0.5)
        return {"start": start, "end": time.time()}

    return await ctx.step.run("work", work)


@client.create_function(
    fn_id="rate-limited", trigger=inngest.TriggerEvent(event="flow/rate"),
    rate_limit=inngest.RateLimit(limit=1, period=datetime.timedelta(minutes=1),
                                 key="event.data.user"))
async def rate_limited(ctx: inngest.Context) -> Any:
    return ctx.event.data


@client.create_function(
    fn_id="debounced", trigger=inngest.TriggerEvent(event="flow/debounce"),
    debounce=inngest.Debounce(period=2 * SECOND, key="event.data.doc", timeout=30 * SECOND))
async def debounced(ctx: inngest.Context) -> Any:
    return ctx.event.data


@client.create_function(
    fn_id="batched", trigger=inngest.TriggerEvent(event="flow/batch"),
    batch_events=inngest.Batch(max_size=3, timeout=2 * SECOND))
async def batched(ctx: inngest.Context) -> list[Any]:
    return [event.data.get("i") for event in ctx.events]


@client.create_function(
    fn_id="throttled", trigger=inngest.TriggerEvent(event="flow/throttle"),
    throttle=inngest.Throttle(limit=2, period=datetime.timedelta(minutes=1), burst=3,
                              key="event.data.k"))
async def throttled(ctx: inngest.Context) -> str:
    return "ok"


@client.create_function(
    fn_id="prioritized", trigger=inngest.TriggerEvent(event="flow/priority"),
    priority=inngest.Priority(run="event.data.vip ? 120 : 0"),
    idempotency="event.data.order",
    singleton=inngest.Singleton(key="event.data.user", mode="cancel"))
async def prioritized(ctx: inngest.Context) -> str:
    return "ok"


functions = [limited, rate_limited, debounced, batched, throttled, prioritized]

if os.environ.get("FLOW_BAD"):
    @client.create_function(
        fn_id="bad", trigger=inngest.TriggerEvent(event="flow/bad"),
        rate_limit=inngest.RateLimit(limit=1, period=datetime.timedelta(days=2)))
    async def bad(ctx: inngest.Context) -> str:
        return "never"

    functions.append(bad)

app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, functions)
