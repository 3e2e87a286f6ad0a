"""The worker of tests/e2e/test_flow_deferred.py: a debounced and a batched function, each
returning what it got as ctx.event and ctx.events."""

from __future__ import annotations

from typing import Any

from stepline import Context, Stepline
from tests.flow_functions import batching, debounce, with_flow

app = Stepline(app_id="flow-e2e")


@app.function(id="debounced", trigger="flow/debounce")
async def debounced(ctx: Context) -> dict[str, Any]:
    return {"event": ctx.event.data["i"], "events": [e.data["i"] for e in ctx.events]}


@app.function(id="batched", trigger="flow/batch")
async def batched(ctx: Context) -> dict[str, Any]:
    return {"event": ctx.event.data["i"], "events": [e.data["i"] for e in ctx.events]}


with_flow(app, debounced, debounce(5.0))
with_flow(app, batched, batching(3, 5.0))
