"""The engine's records as the dashboard shows them: JSON documents for /api, and formatting
helpers for the templates. No I/O here."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from stepline_server import formatting
from stepline_server.model import (
    NEVER_MS,
    CronTrigger,
    ErrorInfo,
    EventEntry,
    EventRecord,
    FunctionInfo,
    FunctionStats,
    RunRecord,
    StepFailure,
    StepRecord,
    WorkerInfo,
)

# Longest JSON document shown in full on a page (the API always returns everything).
MAX_SHOWN_CHARS = 20_000


# -- JSON documents -----------------------------------------------------------------------------
def json_value(text: str | None) -> Any:
    """Stored JSON text as a value (text that is not JSON stays text). NaN and Infinity stay
    text too: rows stored before the server refused them must not break the JSON answers."""
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return text


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def error_json(error: ErrorInfo | None) -> dict[str, str] | None:
    if error is None:
        return None
    return {"name": error.name, "message": error.message, "stack": error.stack}


def _failure_json(failure: StepFailure) -> dict[str, Any]:
    return {"attempt": failure.attempt + 1, "error": error_json(failure.error),
            "started_at_ms": failure.started_at_ms, "ended_at_ms": failure.ended_at_ms}


def step_json(step: StepRecord) -> dict[str, Any]:
    pending = not step.status.ended
    # A pending sleep, wait or invoke keeps its due time in ended_at_ms until it resumes.
    due = step.ended_at_ms if pending and step.ended_at_ms < NEVER_MS else None
    return {
        "step_id": step.step_id, "name": step.name, "status": step.status.value,
        "attempts": step.attempts, "started_at_ms": step.started_at_ms,
        "ended_at_ms": None if pending else step.ended_at_ms, "due_at_ms": due,
        "output": json_value(step.output), "error": error_json(step.error),
        "failures": [_failure_json(f) for f in step.failures],
    }


def event_json(record: EventRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "data": json_value(record.data),
            "ts_ms": record.ts_ms, "user": json_value(record.user)}


def run_json(run: RunRecord, *, detail: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": run.id, "function_id": run.function_id, "event_id": run.event_id,
        "status": run.status.value, "ended": run.status.ended, "attempt": run.attempt,
        "created_at_ms": run.created_at_ms, "started_at_ms": run.started_at_ms,
        "ended_at_ms": run.ended_at_ms, "parent_run_id": run.parent_run_id,
        "source_run_id": run.source_run_id, "error": error_json(run.error),
        "held": run.held or None, "held_until_ms": run.held_until_ms,
    }
    if detail:
        doc |= {
            "output": json_value(run.output),
            "event": None if run.event is None else event_json(run.event),
            "steps": [step_json(s) for s in run.steps],
            "body_failures": [_failure_json(f) for f in run.body_failures],
        }
    return doc


def event_entry_json(entry: EventEntry) -> dict[str, Any]:
    return event_json(entry.record) | {"received_at_ms": entry.received_at_ms,
                                       "run_ids": list(entry.run_ids)}


def success_rate(stats: FunctionStats) -> float | None:
    """Completed among the runs that completed or failed (cancelled runs are neither)."""
    decided = stats.completed + stats.failed
    return None if decided == 0 else stats.completed / decided


def triggers_json(info: FunctionInfo) -> list[dict[str, str]]:
    return [{"cron": t.schedule, "timezone": t.timezone} if isinstance(t, CronTrigger)
            else {"event": t.name, "expression": t.expression} for t in info.spec.triggers]


def function_json(info: FunctionInfo) -> dict[str, Any]:
    spec, stats = info.spec, info.stats
    return {
        "id": spec.id, "name": spec.name, "app_id": info.app_id, "version": info.version,
        "archived": info.archived, "created_at_ms": info.created_at_ms,
        "updated_at_ms": info.updated_at_ms, "triggers": triggers_json(info),
        "retries": spec.retries,
        "cancel_on": [{"event": c.event, "expression": c.expression, "timeout_ms": c.timeout_ms}
                      for c in spec.cancel_on],
        "timeouts": {"start_ms": spec.start_timeout_ms, "finish_ms": spec.finish_timeout_ms},
        # In force: its own (retention_own) or the server's; 0 keeps its runs forever.
        "retention_ms": info.retention_ms, "retention_own": spec.retention_ms is not None,
        # Flow control: the stored settings (the proto's fields, times in ms) and their lines.
        "flow": spec.flow.to_json(), "flow_described": spec.flow.describe(),
        "stats": {"window": "24h", "runs": stats.runs, "completed": stats.completed,
                  "failed": stats.failed, "cancelled": stats.cancelled, "active": stats.active,
                  "success_rate": success_rate(stats)},
    }


def worker_json(worker: WorkerInfo) -> dict[str, Any]:
    return {
        "connection_id": worker.connection_id, "server_id": worker.server_id,
        "worker_id": worker.worker_id, "app_id": worker.app_id,
        "function_ids": list(worker.function_ids), "slots": worker.slots,
        "slots_in_use": worker.slots_in_use, "sdk": worker.sdk,
        "connected_at_ms": worker.connected_at_ms,
        "last_heartbeat_ms": worker.last_heartbeat_ms, "draining": worker.draining,
    }


# -- formatting (Jinja filters) -----------------------------------------------------------------
def timestamp(ms: int | None) -> str:
    """UTC, to the second; the page script shows it in the reader's time zone."""
    if ms is None:
        return ""
    if ms >= NEVER_MS:
        return "never"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ms: int | None) -> str:
    return formatting.iso(ms) or ""


def pretty_json(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    if len(text) > MAX_SHOWN_CHARS:
        return f"{text[:MAX_SHOWN_CHARS]}\n… ({len(text) - MAX_SHOWN_CHARS} more characters; " \
               "the JSON API has all of it)"
    return text


def compact_json(text: str, max_chars: int = 120) -> str:
    """One line of stored JSON text, cut to fit a table cell."""
    value = json_value(text)
    line = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return line if len(line) <= max_chars else line[:max_chars - 1] + "…"


def percent(value: float | None) -> str:
    return "\u2013" if value is None else f"{value * 100:.0f} %"  # an en dash: no value
