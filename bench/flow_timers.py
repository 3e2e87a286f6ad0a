"""Debounce and batch-timeout timer precision (issue 12): how late a debounced run and a partial
batch start, from their due time to their first step; the goal is a p99 of 100 ms, as sleeps.

A server process per backend, a worker in this process (one clock for the sends and the steps).
`keys` debounce keys each get two events (the second resets the period) and `keys` batch keys
one event each (the batch never fills: its timeout starts it), spread over `spread` seconds so
due times come one after another as under real load. A run's due time is taken from when its
event's send began, so the figure is an upper bound (the server's clock read a little later).

    .venv/bin/python bench/flow_timers.py [--backend sqlite|postgres|all] [--keys 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/flow_timers.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _proc
from bench._backends import BACKENDS, Backend
from bench._inprocess import serving, wait_for
from bench._stats import dist
from stepline import Batch, Context, Debounce, EventInput, Stepline

PERIOD_SECONDS = 1.0  # the debounce period and the batch timeout (both at their minimum)
SLOTS = 50
WAIT_SECONDS = 60.0


def make_app(url: str, started: dict[str, float]) -> Stepline:
    """A debounced and a batched function whose first step notes when it ran, by key."""
    app = Stepline("flow-bench", url=url)

    def note(key: str) -> None:
        started.setdefault(key, time.time())

    @app.function(id="debounced", trigger="bench/debounce",
                  debounce=Debounce(PERIOD_SECONDS, key="event.data.k"))
    async def debounced(ctx: Context) -> None:
        await ctx.step.run("first", note, f"d{ctx.event.data['k']}")

    @app.function(id="batched", trigger="bench/batch",
                  batch_events=Batch(10, PERIOD_SECONDS, key="event.data.k"))
    async def batched(ctx: Context) -> None:
        await ctx.step.run("first", note, f"b{ctx.event.data['k']}")

    return app


async def _send(app: Stepline, name: str, key: int) -> float:
    """Send one event; when its send began (its run is due PERIOD_SECONDS after, or later)."""
    began = time.time()
    await app.send_many([EventInput(name, {"k": key})])
    return began


async def _load(app: Stepline, keys: int, spread: float) -> dict[str, float]:
    """Each key's events, keys spread evenly; the due time of each key's run."""
    due: dict[str, float] = {}
    gap = spread / keys
    for k in range(keys):
        due[f"b{k}"] = await _send(app, "bench/batch", k) + PERIOD_SECONDS
        await _send(app, "bench/debounce", k)
        await asyncio.sleep(gap / 2)
        due[f"d{k}"] = await _send(app, "bench/debounce", k) + PERIOD_SECONDS  # resets it
        await asyncio.sleep(gap / 2)
    return due


async def measure(backend: Backend, keys: int, spread: float) -> dict[str, Any]:
    server, port = await asyncio.to_thread(_proc.start_server, backend.url,
                                           backend.workdir / "server.log")
    started: dict[str, float] = {}
    app = make_app(f"127.0.0.1:{port}", started)
    try:
        async with serving(app, SLOTS):
            await app.send("bench/warm-up", {})
            due = await _load(app, keys, spread)
            with contextlib.suppress(TimeoutError):  # those that never start are counted
                await wait_for(lambda: len(started) >= len(due), WAIT_SECONDS, "every run")
    finally:
        await _proc.stop_child(server)
    result: dict[str, Any] = {"backend": backend.name, "keys": keys, "spread_s": spread}
    for kind, prefix in (("debounce", "d"), ("batch_timeout", "b")):
        late = [started[k] - due[k] for k in due if k.startswith(prefix) and k in started]
        result[kind] = {"runs": len(late), "missing": keys - len(late),
                        "late_ms": dist(late) if late else None,
                        "early": sum(1 for x in late if x < 0)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--spread", type=float, default=4.0, help="seconds the keys span")
    args = parser.parse_args()
    results = []
    for name in BACKENDS if args.backend == "all" else (args.backend,):
        backend = Backend(name)
        try:
            result = asyncio.run(measure(backend, args.keys, args.spread))
        finally:
            backend.close()
        results.append(result)
        for kind in ("debounce", "batch_timeout"):
            figures = result[kind]
            late = figures["late_ms"] or {}
            print(f"{name:8} {kind:14} lateness p50 {late.get('p50')} ms, p99 {late.get('p99')}"
                  f" ms, max {late.get('max')} ms ({figures['runs']} runs, "
                  f"{figures['missing']} never started, {figures['early']} early)")
    print(json.dumps({"flow_timers": results}))


if __name__ == "__main__":
    main()
