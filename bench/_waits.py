"""Waiting runs, in the in-process worker: matching one event among many pending waits
(fan-in), and how late a 1 s sleep wakes up (timer precision)."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench._backends import Backend
from bench._inprocess import serving
from bench._stats import dist, ms, percentile
from stepline import Context, EventInput, Stepline

WAITER_ID, WAITER_EVENT, MATCH_EVENT = "bench-waiter", "bench/waiter", "bench/match"
OTHER_ID, OTHER_EVENT, OTHER_MATCH = "bench-waiter-other", "bench/waiter-other", "bench/other"
TIMER_ID, TIMER_EVENT = "bench-timer", "bench/timer"
BY_KEY = "async.data.key == event.data.key"
WAIT_TIMEOUT = "1h"
SLOTS = 100
SEND_BATCH = 500
MATCH_TIMEOUT = 15.0
MATCH_GAP_SECONDS = 0.02  # lets the previous matched run finish before the next event
WARMUP_MATCHES = 3
MIN_WAIT_RATE = 50.0  # waits/s; slower creation is taken for stuck (bounds the wait)
TIMER_SECONDS = 1.0
TIMER_SPREAD_SECONDS = 1.0
TIMER_TIMEOUT = 5.0  # after the sleep is over; a healthy server needs well under 1 s


@dataclass
class Marks:
    """Readings taken in step bodies (which run in the SDK's step threads), by key."""

    loop: asyncio.AbstractEventLoop
    values: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[float]] = field(default_factory=dict)

    def expect(self, key: str) -> asyncio.Future[float]:
        waiter: asyncio.Future[float] = self.loop.create_future()
        self.waiters[key] = waiter
        return waiter

    def put(self, key: str, value: float) -> None:
        """Thread-safe: hand `value` to the loop."""
        self.loop.call_soon_threadsafe(self._set, key, value)

    def _set(self, key: str, value: float) -> None:
        self.values[key] = value
        waiter = self.waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(value)


def make_app(target: str, marks: Marks) -> Stepline:
    app = Stepline(app_id="bench-waits", url=target)

    def matched(key: str, got: str | None) -> None:
        now = time.perf_counter()
        marks.put(key, now if got == key else math.nan)  # nan: the wrong event resumed it

    def woke(key: str, before: float) -> None:
        marks.put(key, time.time() - (before + TIMER_SECONDS))

    @app.function(id=WAITER_ID, trigger=WAITER_EVENT, retries=0)
    async def waiter(ctx: Context) -> None:
        key = str(ctx.event.data["key"])
        got = await ctx.step.wait_for_event("w", event=MATCH_EVENT, timeout=WAIT_TIMEOUT,
                                            if_=BY_KEY)
        await ctx.step.run("after", matched, key, None if got is None else got.data.get("key"))

    @app.function(id=OTHER_ID, trigger=OTHER_EVENT, retries=0)
    async def other(ctx: Context) -> None:
        await ctx.step.wait_for_event("w", event=OTHER_MATCH, timeout=WAIT_TIMEOUT, if_=BY_KEY)

    @app.function(id=TIMER_ID, trigger=TIMER_EVENT, retries=0)
    async def timer(ctx: Context) -> None:
        before: float = await ctx.step.run("before", time.time)
        await ctx.step.sleep("t", TIMER_SECONDS)
        await ctx.step.run("after", woke, str(ctx.event.data["key"]), before)

    return app


# -- fan-in ------------------------------------------------------------------------------------
async def start_waits(app: Stepline, backend: Backend, function_id: str, event: str,
                      keys: list[str]) -> None:
    """Start one run per key and return once the database shows them all waiting."""
    function_id = app.functions[function_id].full_name  # as the runs table names it
    base = await asyncio.to_thread(backend.count, function_id, "waiting")
    for start in range(0, len(keys), SEND_BATCH):
        await asyncio.wait_for(app.send_many(
            [EventInput(event, {"key": k}) for k in keys[start:start + SEND_BATCH]]), 60.0)
    timeout = max(30.0, len(keys) / MIN_WAIT_RATE)
    deadline = time.monotonic() + timeout
    while (waiting := await asyncio.to_thread(backend.count, function_id, "waiting") - base) \
            < len(keys):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {waiting}/{len(keys)} runs of {function_id} waiting "
                               f"after {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def time_matches(app: Stepline, backend: Backend, marks: Marks, label: str,
                       count: int) -> list[float]:
    """Start `count` waiters, then resume them one at a time: send -> next step body starts."""
    keys = [f"{label}-{i}" for i in range(count)]
    await start_waits(app, backend, WAITER_ID, WAITER_EVENT, keys)
    latencies = []
    for key in keys:
        waiter = marks.expect(key)
        t0 = time.perf_counter()
        await app.send(MATCH_EVENT, {"key": key})
        t1 = await asyncio.wait_for(waiter, MATCH_TIMEOUT)
        if math.isnan(t1):
            raise RuntimeError(f"run waiting for key {key!r} resumed with another event")
        latencies.append(t1 - t0)
        await asyncio.sleep(MATCH_GAP_SECONDS)
    return latencies


async def measure_fanin(app: Stepline, backend: Backend, marks: Marks, *, matches: int,
                        other_waits: int, same_waits: int) -> dict[str, Any]:
    """Match latency with no other waits, with `other_waits` on another event name, and with
    `same_waits` more on the same event name (distinct keys) on top."""
    await time_matches(app, backend, marks, "warmup", WARMUP_MATCHES)
    alone = await time_matches(app, backend, marks, "alone", matches)
    t0 = time.perf_counter()
    await start_waits(app, backend, OTHER_ID, OTHER_EVENT,
                      [f"other-{i}" for i in range(other_waits)])
    other_rate = other_waits / (time.perf_counter() - t0)
    with_other = await time_matches(app, backend, marks, "other", matches)
    await start_waits(app, backend, WAITER_ID, WAITER_EVENT,
                      [f"idle-{i}" for i in range(same_waits)])
    with_same = await time_matches(app, backend, marks, "same", matches)
    p50 = percentile(alone, 50)
    return {
        "matches": matches, "other_waits": other_waits, "same_waits": same_waits,
        "wait_start_rate_per_s": round(other_rate, 1),
        "alone_ms": dist(alone), "other_ms": dist(with_other), "same_ms": dist(with_same),
        "other_p50_ratio": round(percentile(with_other, 50) / p50, 2),
        "same_p50_ratio": round(percentile(with_same, 50) / p50, 2),
    }


# -- timer precision -----------------------------------------------------------------------------
async def time_timers(app: Stepline, marks: Marks, label: str, runs: int,
                      spread: float) -> tuple[list[float], int]:
    """`runs` runs sleeping TIMER_SECONDS, started evenly over `spread` seconds. Returns the
    lateness of those that woke within TIMER_TIMEOUT of the last start, and how many did not."""
    keys = [f"{label}-{i}" for i in range(runs)]
    waiters = [marks.expect(k) for k in keys]
    t0 = time.perf_counter()
    for i, key in enumerate(keys):
        await asyncio.sleep(max(0.0, t0 + i * spread / runs - time.perf_counter()))
        await app.send(TIMER_EVENT, {"key": key})
    await asyncio.wait(waiters, timeout=TIMER_SECONDS + TIMER_TIMEOUT)
    for waiter in waiters:
        waiter.cancel()  # no-op for those that woke
    late = [w.result() for w in waiters if not w.cancelled()]
    return late, runs - len(late)


def _late(late: list[float], runs: int, missing: int) -> dict[str, Any]:
    return {"runs": runs, "missing": missing, "late_ms": dist(late) if late else None,
            "min_ms": ms(min(late)) if late else None}


async def measure_timers(app: Stepline, marks: Marks, *, runs: int,
                         lone: int) -> dict[str, Any]:
    """Lateness of `lone` 1 s sleeps one after another (each alone on the server), then of
    `runs` sleeps started over TIMER_SPREAD_SECONDS. A timer that never fires is counted, not
    waited for forever: the report shows it as missing."""
    lone_late: list[float] = []
    lone_missing = 0
    for i in range(lone):
        late, missing = await time_timers(app, marks, f"lone-{i}", 1, 0.0)
        lone_late += late
        lone_missing += missing
    late, missing = await time_timers(app, marks, "timer", runs, TIMER_SPREAD_SECONDS)
    if lone_missing or missing:
        print(f"  note: {lone_missing}/{lone} lone and {missing}/{runs} spread timers did not "
              f"fire within {TIMER_TIMEOUT:g} s", file=sys.stderr, flush=True)
    return {"sleep_s": TIMER_SECONDS, "spread_s": TIMER_SPREAD_SECONDS,
            "lone": _late(lone_late, lone, lone_missing), **_late(late, runs, missing)}


async def measure_waits(backend: Backend, target: str, *, matches: int, other_waits: int,
                        same_waits: int, timers: int, lone_timers: int) -> dict[str, Any]:
    """Fan-in first: should a timer stall the server's dispatch for this worker, the fan-in
    figures are not affected (the worker leaves after the timers)."""
    marks = Marks(asyncio.get_running_loop())
    app = make_app(target, marks)
    async with serving(app, SLOTS):
        fanin = await measure_fanin(app, backend, marks, matches=matches,
                                    other_waits=other_waits, same_waits=same_waits)
        timer = await measure_timers(app, marks, runs=timers, lone=lone_timers)
    return {"fanin": fanin, "timers": timer}
