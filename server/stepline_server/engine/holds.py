"""Why a queued run is not running yet, as GetRun, ListRuns, the CLI and the dashboard say it:
"waiting for concurrency key acme", "throttled", "debounced", "batching 3/5", "delayed by
priority", with the time it is held until when known. Read from the run's own queue item
(store/holds.py), which the flow control stages (engine/flow_*.py) mark."""

from __future__ import annotations

import dataclasses
import json

from sqlalchemy.engine import Connection

from stepline_server.flow import FlowControl
from stepline_server.model import FlowKind, RunRecord, RunStatus
from stepline_server.store.holds import Hold, holds_of

_TIMED: dict[str, str] = {FlowKind.THROTTLE: "throttled", FlowKind.DEBOUNCE: "debounced",
                         FlowKind.PRIORITY: "delayed by priority"}


def attach(conn: Connection, runs: list[RunRecord], now_ms: int) -> list[RunRecord]:
    """`runs` with their holds; no query when none of them is queued."""
    queued = [run.id for run in runs if run.status is RunStatus.QUEUED]
    found = holds_of(conn, queued) if queued else {}
    if not found:
        return runs
    result = []
    for run in runs:
        hold = found.get(run.id)
        told = None if hold is None else describe(hold, now_ms)
        result.append(run if told is None else dataclasses.replace(
            run, held=told[0], held_until_ms=told[1]))
    return result


def describe(hold: Hold, now_ms: int) -> tuple[str, int | None] | None:
    """(why, until when) of a hold; None for a timed hold whose time has come: the run is due,
    only waiting for a worker like any other."""
    if hold.reason == FlowKind.CONCURRENCY:  # parked until a slot frees: no time known
        value = hold.key_value or ""
        return ("waiting for concurrency key " + value if value
                else "waiting for concurrency"), None
    if hold.due_at_ms <= now_ms:
        return None
    if hold.reason == FlowKind.BATCH:
        return f"batching {hold.events}/{_batch_size(hold.config)}", hold.due_at_ms
    return _TIMED.get(hold.reason, hold.reason), hold.due_at_ms


def _batch_size(config: str | None) -> int | str:
    batching = FlowControl.from_json(json.loads(config or "{}").get("flow")).batching
    return "?" if batching is None else batching.max_size
