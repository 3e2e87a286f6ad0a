"""A three-step function for crash tests. Every step execution appends a line to E2E_LOG."""

from __future__ import annotations

import os
import time
from typing import Any

from stepline import Stepline

app = Stepline(app_id="e2e-crash")
LOG = os.environ.get("E2E_LOG", "e2e-steps.log")
ROLE = os.environ.get("E2E_ROLE", "normal")
STEP_SECONDS = float(os.environ.get("E2E_STEP_SECONDS", "0"))


def record(run_id: str, step: str) -> str:
    # O_APPEND writes of one short line are atomic: safe across processes.
    with open(LOG, "a") as log:
        log.write(f"{run_id} {step} {os.getpid()}\n")
    return f"{step}@{os.getpid()}"


def slow_step(run_id: str, step: str) -> str:
    result = record(run_id, step)
    if ROLE == "victim" and step == "two":
        time.sleep(120)  # killed here
    time.sleep(STEP_SECONDS)
    return result


@app.function(id="crashy", trigger="e2e/crash", retries=3)
def crashy(ctx: Any) -> dict[str, Any]:
    one = ctx.step.run("one", slow_step, ctx.run_id, "one")
    two = ctx.step.run("two", slow_step, ctx.run_id, "two")
    three = ctx.step.run("three", slow_step, ctx.run_id, "three")
    return {"steps": [one, two, three]}
