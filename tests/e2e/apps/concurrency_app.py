"""A function limited to E2E_LIMIT steps at once per event.data.k, for worker processes. Every
step execution writes its start and end to E2E_LOG (tests/flow_apps.record_step)."""

from __future__ import annotations

import os
import time
from typing import Any

from stepline import Concurrency, Stepline
from tests.flow_apps import mark, record_step

app = Stepline(app_id="e2e-conc")
LOG = os.environ.get("E2E_LOG", "e2e-steps.log")
LIMIT = int(os.environ.get("E2E_LIMIT", "2"))
STEP_SECONDS = float(os.environ.get("E2E_STEP_SECONDS", "0.08"))
VICTIM = os.environ.get("E2E_ROLE") == "victim"  # hangs in its first step, to be killed


def step(key: str, run_id: str) -> None:
    if VICTIM:
        mark(LOG, "start", key, run_id)
        time.sleep(120)  # killed here
    record_step(LOG, key, run_id, STEP_SECONDS)


@app.function(id="limited", trigger="e2e/conc", retries=3,
              concurrency=Concurrency(LIMIT, key="event.data.k"))
def work(ctx: Any) -> None:
    key = ctx.event.data["k"]
    ctx.step.run("one", step, key, ctx.run_id)
    ctx.step.run("two", step, key, ctx.run_id)
