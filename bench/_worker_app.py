"""The app the throughput and sleeper benchmarks run in separate worker processes.

`python -m stepline worker bench._worker_app:app --slots N --url 127.0.0.1:PORT`
(with the repository root on PYTHONPATH).
"""

from __future__ import annotations

from typing import Any

from stepline import Context, Stepline

FUNCTION_ID = "bench-throughput"
TRIGGER = "bench/throughput"
SLEEPER_ID = "bench-sleeper"
SLEEPER_TRIGGER = "bench/sleeper"
SLEEPER_NAP = "2h"  # far beyond the benchmark: the runs stay asleep until the server stops

app = Stepline(app_id="bench-throughput")


def _trivial(i: int) -> int:
    return i + 1


@app.function(id=FUNCTION_ID, trigger=TRIGGER, retries=0)
async def three_steps(ctx: Context) -> dict[str, Any]:
    a = await ctx.step.run("a", _trivial, 0)
    b = await ctx.step.run("b", _trivial, a)
    c = await ctx.step.run("c", _trivial, b)
    return {"c": c}


@app.function(id=SLEEPER_ID, trigger=SLEEPER_TRIGGER, retries=0)
async def sleeper(ctx: Context) -> None:
    await ctx.step.sleep("nap", SLEEPER_NAP)
