"""The soak's app: mixed functions (steps, sleeps, waits, retries, parallel steps, sent events).

Every step body appends `run_id step_id token plan time_ms` to exec-<pid>.log in CHAOS_EXEC_DIR and
fsyncs it before doing anything else, so a `kill -9` cannot hide an execution; the token is the
body's result, so the checks can tell which execution a recorded result came from.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
from typing import Any

from stepline import Context, Stepline, SyncContext

app = Stepline(app_id="chaos")

# Kills and lost leases each use up an attempt (engine/attempts.py); 7 attempts per step is
# far more than the soak's kill rate takes from one step, so a run that fails anyway says the
# engine charged attempts it should not have.
RETRIES = 6
APPROVE_EVENT = "chaos/approve"
CHILD_EVENT = "chaos/child"
# Long enough that no approval the driver sends arrives after it: a wait that times out
# although its event was accepted is a lost event, and the checks fail on it.
WAIT_TIMEOUT = "60s"
LOG_PREFIX = "exec-"


def full_name(function_id: str) -> str:
    """How the server names the app's function (runs.function_id): `<app_id>:<id>`."""
    return f"{app.app_id}:{function_id}"


STEPS, SLEEP, WAIT, RETRY, PARALLEL, FANOUT, CHILD = (full_name(f) for f in (
    "chaos-steps", "chaos-sleep", "chaos-wait", "chaos-retry", "chaos-parallel", "chaos-fanout",
    "chaos-child"))
# Trigger event -> function, and how often the driver sends each (weights).
TRIGGERS = {
    "chaos/steps": STEPS,
    "chaos/sleep": SLEEP,
    "chaos/wait": WAIT,
    "chaos/retry": RETRY,
    "chaos/parallel": PARALLEL,
    "chaos/fanout": FANOUT,
}
MIX = {"chaos/steps": 3, "chaos/sleep": 2, "chaos/wait": 1, "chaos/retry": 1,
       "chaos/parallel": 2, "chaos/fanout": 1}
# The steps of kind "run" a completed run of each function has recorded, by step id.
RUN_STEPS: dict[str, tuple[str, ...]] = {
    STEPS: ("a", "b", "c"),
    SLEEP: ("before", "after"),
    WAIT: ("armed", "done"),
    RETRY: ("first", "shaky"),
    PARALLEL: ("part0", "part1", "part2", "join"),
    FANOUT: ("prep",),
    CHILD: ("only",),
}
FUNCTION_IDS = tuple(RUN_STEPS)

_EXEC_DIR = os.environ.get("CHAOS_EXEC_DIR", ".")
# A body takes up to this long, so kills land inside bodies as well as between them.
_WORK_SECONDS = float(os.environ.get("CHAOS_WORK_SECONDS", "0.02"))
_log_lock = threading.Lock()
_log_fd: list[int] = []


def _record(line: str) -> None:
    """Append one line to this process's execution log and fsync it: once this returns, the
    execution is on disk whatever happens to the process."""
    with _log_lock:
        if not _log_fd:
            path = os.path.join(_EXEC_DIR, f"{LOG_PREFIX}{os.getpid()}.log")
            _log_fd.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        os.write(_log_fd[0], line.encode())
        os.fsync(_log_fd[0])


def body(run_id: str, step_id: str, planned_failure: bool = False) -> str:
    """A step body: logs its execution, works a little, returns a token no other execution
    returns (or fails, when the workload plans a failure)."""
    token = uuid.uuid4().hex[:16]
    _record(f"{run_id} {step_id} {token} {'fail' if planned_failure else 'ok'} "
            f"{int(time.time() * 1000)}\n")
    time.sleep(random.uniform(0, _WORK_SECONDS))
    if planned_failure:
        raise RuntimeError(f"planned failure of {step_id} on the run's first attempt")
    return token


@app.function(id="chaos-steps", trigger="chaos/steps", retries=RETRIES)
def steps(ctx: SyncContext) -> dict[str, Any]:
    return {"steps": {s: ctx.step.run(s, body, ctx.run_id, s) for s in ("a", "b", "c")}}


@app.function(id="chaos-sleep", trigger="chaos/sleep", retries=RETRIES)
async def sleeper(ctx: Context) -> dict[str, Any]:
    before = await ctx.step.run("before", body, ctx.run_id, "before")
    await ctx.step.sleep("nap", float(ctx.event.data["nap"]))
    after = await ctx.step.run("after", body, ctx.run_id, "after")
    return {"steps": {"before": before, "after": after}}


@app.function(id="chaos-wait", trigger="chaos/wait", retries=RETRIES)
def waiter(ctx: SyncContext) -> dict[str, Any]:
    armed = ctx.step.run("armed", body, ctx.run_id, "armed")
    approval = ctx.step.wait_for_event("approval", event=APPROVE_EVENT, timeout=WAIT_TIMEOUT,
                                       if_="async.data.key == event.data.key")
    done = ctx.step.run("done", body, ctx.run_id, "done")
    return {"steps": {"armed": armed, "done": done},
            "approval": None if approval is None else approval.id}


@app.function(id="chaos-retry", trigger="chaos/retry", retries=RETRIES)
def flaky(ctx: SyncContext) -> dict[str, Any]:
    first = ctx.step.run("first", body, ctx.run_id, "first")
    # Fails on the run's first attempt only: one reported failure and one retry per run.
    shaky = ctx.step.run("shaky", body, ctx.run_id, "shaky", ctx.attempt == 0)
    return {"steps": {"first": first, "shaky": shaky}}


@app.function(id="chaos-parallel", trigger="chaos/parallel", retries=RETRIES)
async def parallel(ctx: Context) -> dict[str, Any]:
    names = ("part0", "part1", "part2")
    parts = await asyncio.gather(*(ctx.step.run(n, body, ctx.run_id, n) for n in names))
    join = await ctx.step.run("join", body, ctx.run_id, "join")
    return {"steps": {**dict(zip(names, parts, strict=True)), "join": join}}


@app.function(id="chaos-fanout", trigger="chaos/fanout", retries=RETRIES)
def fanout(ctx: SyncContext) -> dict[str, Any]:
    prep = ctx.step.run("prep", body, ctx.run_id, "prep")
    sent = ctx.step.send_event("notify", {"name": CHILD_EVENT, "data": {"parent": ctx.run_id}})
    return {"steps": {"prep": prep}, "sent": sent["ids"]}


@app.function(id="chaos-child", trigger=CHILD_EVENT, retries=RETRIES)
def child(ctx: SyncContext) -> dict[str, Any]:
    return {"steps": {"only": ctx.step.run("only", body, ctx.run_id, "only")},
            "parent": ctx.event.data["parent"]}
