"""The app bench/flow_concurrency.py runs: the same 2-step function with and without
`concurrency {limit: 50, key: event.data.tenant}`, served by worker processes
(`python -m stepline worker bench._conc_app:app`), and a keyed function for the fairness
figure, served in the benchmark's own process (its first step notes when it began)."""

from __future__ import annotations

import time

from stepline import Concurrency, Context, Stepline

app = Stepline(app_id="bench-conc")
fair_app = Stepline(app_id="bench-fair")
PLAIN, KEYED, FAIR = "plain", "keyed", "fair"
TENANT_LIMIT = 50
FAIR_LIMIT = 5
first_step: dict[str, float] = {}  # fairness: event data "probe" -> perf_counter at step start


def _trivial(i: int) -> int:
    return i + 1


async def _two_steps(ctx: Context) -> int:
    a = await ctx.step.run("a", _trivial, 0)
    return int(await ctx.step.run("b", _trivial, a))


plain = app.function(id=PLAIN, trigger="bench/plain", retries=0)(_two_steps)
keyed = app.function(id=KEYED, trigger="bench/keyed", retries=0,
                     concurrency=Concurrency(TENANT_LIMIT, key="event.data.tenant"))(_two_steps)


def _began(probe: str) -> None:
    if probe:
        first_step.setdefault(probe, time.perf_counter())
    else:
        time.sleep(0.05)  # the backlog's runs: 5 at a time, 100 steps a second


@fair_app.function(id=FAIR, trigger="bench/fair", retries=0,
                   concurrency=Concurrency(FAIR_LIMIT, key="event.data.k"))
async def fair(ctx: Context) -> None:
    await ctx.step.run("s", _began, ctx.event.data.get("probe", ""))
