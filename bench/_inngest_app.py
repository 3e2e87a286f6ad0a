"""The Inngest bench's app: a 3-step function on the official PyPI SDK, served by FastAPI
(uvicorn), pointed at the server by INNGEST_DEV."""

from __future__ import annotations

from typing import Any

import fastapi
import inngest
import inngest.fast_api

client = inngest.Inngest(app_id="bench-inngest")


def _trivial(i: int) -> int:
    return i + 1


@client.create_function(fn_id="three-steps", retries=0,
                        trigger=inngest.TriggerEvent(event="bench/inngest-three"))
async def three_steps(ctx: inngest.Context) -> dict[str, Any]:
    a = await ctx.step.run("a", _trivial, 0)
    b = await ctx.step.run("b", _trivial, a)
    c = await ctx.step.run("c", _trivial, b)
    return {"c": c}


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [three_steps])
