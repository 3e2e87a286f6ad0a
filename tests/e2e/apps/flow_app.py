"""The worker of tests/e2e/test_flow_deferred.py: a debounced and a batched function, each
returning what it got as ctx.event and ctx.events."""

from __future__ import annotations

from typing import Any

from stepline import Batch, Context, Debounce, Stepline

app = Stepline(app_id="flow-e2e")


@app.function(id="debounced", trigger="flow/debounce", debounce=Debounce("5s"))
async def debounced(ctx: Context) -> dict[str, Any]:
    return {"event": ctx.event.data["i"], "events": [e.data["i"] for e in ctx.events]}


@app.function(id="batched", trigger="flow/batch", batch_events=Batch(3, "5s"))
async def batched(ctx: Context) -> dict[str, Any]:
    return {"event": ctx.event.data["i"], "events": [e.data["i"] for e in ctx.events]}
