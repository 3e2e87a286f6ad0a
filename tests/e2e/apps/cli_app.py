"""A small app for the CLI end-to-end test: a two-step greeting whose second step fails once,
and a function that naps long enough to be cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

from stepline import Context, Stepline

app = Stepline(app_id="cli-e2e")
_shout_attempts: dict[str, int] = {}


def make_greeting(name: str) -> str:
    return f"Hello, {name}"


def shout(run_id: str, text: str) -> str:
    # Fails on its first attempt of each run, so the run shows a failed attempt and a retry.
    _shout_attempts[run_id] = _shout_attempts.get(run_id, 0) + 1
    if _shout_attempts[run_id] == 1:
        raise RuntimeError("flaky: first attempt fails")
    return text.upper()


@app.function(id="greet", trigger="test/cli.greet", retries=2)
async def greet(ctx: Context) -> dict[str, Any]:
    greeting = await ctx.step.run("make-greeting", make_greeting, ctx.event.data["name"])
    loud = await ctx.step.run("shout", shout, ctx.run_id, greeting)
    return {"greeting": loud}


@app.function(id="nap", trigger="test/cli.nap")
async def nap(ctx: Context) -> None:
    await ctx.step.run("sleep", asyncio.sleep, 60)
