"""Turns RunService messages into what the CLI prints: tables (runs, events, functions,
workers), a run's detail, or JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import common_pb2, function_service_pb2, run_service_pb2
from stepline_server import flow, formatting

TABLE_CELL_CHARS = 60
FLOW_CELL_CHARS = 120  # every setting of a function, "; "-separated
DETAIL_VALUE_CHARS = 300
ENDED_STATUSES = frozenset({"completed", "failed", "cancelled"})
_RUN_STATUS_PREFIX = "RUN_STATUS_"


# -- statuses -----------------------------------------------------------------------------------
def run_status_names() -> list[str]:
    """Lower-case run status names, in lifecycle order: queued, running, … cancelled."""
    return [
        name.removeprefix(_RUN_STATUS_PREFIX).lower()
        for name, value in run_service_pb2.RunStatus.items()
        if value != run_service_pb2.RUN_STATUS_UNSPECIFIED
    ]


def run_status_enum(name: str) -> str:
    """The RunStatus enum name ("RUN_STATUS_QUEUED") of a lower-case name; ValueError lists
    the valid ones. Message constructors accept enum names."""
    if name not in run_status_names():
        valid = ", ".join(run_status_names())
        raise ValueError(f"unknown run status {name!r}: expected one of {valid}")
    return _RUN_STATUS_PREFIX + name.upper()


def run_status_name(value: int) -> str:
    try:
        return str(run_service_pb2.RunStatus.Name(value)).removeprefix(_RUN_STATUS_PREFIX).lower()
    except ValueError:
        return f"status {value}"


def step_status_name(value: int) -> str:
    try:
        return str(run_service_pb2.StepStatus.Name(value)).removeprefix("STEP_STATUS_").lower()
    except ValueError:
        return f"status {value}"


# -- values -------------------------------------------------------------------------------------
def _ms(message: Any, field: str) -> int | None:
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return int(stamp.ToMilliseconds())


def local_time(ms: int | None, *, millis: bool = False) -> str:
    if ms is None:
        return "-"
    text = datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] if millis else text[:-7]


def duration(ms: int | None) -> str:
    return formatting.duration(ms) or "-"


def _span_ms(message: Any, *, start_field: str) -> tuple[int | None, bool]:
    """(elapsed ms, finished?) from a start timestamp to the end, or to now if not ended."""
    start = _ms(message, start_field)
    if start is None:
        return None, False
    end = _ms(message, "ended_at")
    if end is None:
        return max(0, int(time.time() * 1000) - start), False
    return max(0, end - start), True


def run_duration(run: run_service_pb2.Run) -> str:
    """Started (or created) to ended; a running run shows its time so far, with an ellipsis."""
    field = "started_at" if run.HasField("started_at") else "created_at"
    span, finished = _span_ms(run, start_field=field)
    if finished:
        return duration(span)
    if span is not None and run_status_name(run.status) == "running":
        return f"{duration(span)}…"
    return "-"


def truncate(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def payload_text(raw: bytes) -> str:
    """A JSON payload as compact text; empty stays empty."""
    if not raw:
        return ""
    try:
        return json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return raw.decode("utf-8", "replace")


def payload_value(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def error_text(error: common_pb2.ErrorInfo) -> str:
    return f"{error.name}: {error.message}" if error.message else error.name


# -- tables -------------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def runs_table(runs: Sequence[run_service_pb2.Run]) -> str:
    if not runs:
        return "no runs"
    rows = [
        [run.id, run.function_id, run_status_name(run.status) + held_suffix(run),
         local_time(_ms(run, "created_at")), run_duration(run)]
        for run in runs
    ]
    return table(["RUN ID", "FUNCTION", "STATUS", "CREATED", "DURATION"], rows)


def held_text(run: run_service_pb2.Run) -> str:
    """Why a queued run is not running yet: "throttled until 10:32:05", "batching 3/5 until
    …", "waiting for concurrency key acme"; "" when it is not held."""
    if not run.held:
        return ""
    until = _ms(run, "held_until")
    return run.held if until is None else f"{run.held} until {local_time(until, millis=True)}"


def held_suffix(run: run_service_pb2.Run) -> str:
    return f" ({held_text(run)})" if run.held else ""


def _step_result(step: run_service_pb2.Step) -> str:
    if step.HasField("error"):
        return truncate(error_text(step.error), TABLE_CELL_CHARS)
    return truncate(payload_text(step.output), TABLE_CELL_CHARS)


def _earlier_failures(step: run_service_pb2.Step) -> list[common_pb2.ErrorInfo]:
    """Failed attempts' errors, without the last one when it is the step's final error (the
    RESULT column shows that one already)."""
    errors = list(step.attempt_errors)
    if step.HasField("error") and errors and errors[-1] == step.error:
        errors.pop()
    return errors


def steps_table(steps: Sequence[run_service_pb2.Step]) -> str:
    if not steps:
        return "no steps recorded"
    headers = ["STEP", "STATUS", "ATTEMPTS", "DURATION", "RESULT"]
    lines = table(headers, [
        [s.step_id, step_status_name(s.status), str(s.attempts),
         duration(_span_ms(s, start_field="started_at")[0]), _step_result(s)]
        for s in steps
    ]).splitlines()
    out = [lines[0]]
    for step, line in zip(steps, lines[1:], strict=True):
        out.append(line)
        for n, error in enumerate(_earlier_failures(step), start=1):
            out.append(f"  attempt {n} failed: {truncate(error_text(error), 100)}")
    return "\n".join(out)


# -- one run ------------------------------------------------------------------------------------
def run_detail(run: run_service_pb2.Run) -> str:
    """The run's header (function, status, event, times, outcome), then its steps."""
    fields: list[tuple[str, str]] = [
        ("run", run.id),
        ("function", run.function_id),
        ("status", run_status_name(run.status)),
    ]
    if run.held:
        fields.append(("held", held_text(run)))
    if run.source_run_id:
        fields.append(("source", run.source_run_id))  # replayed or rerun from it
    if run.attempt and run_status_name(run.status) not in ENDED_STATUSES:
        fields.append(("attempt", str(run.attempt + 1)))
    if run.HasField("event"):
        fields.append(("event", f"{run.event.name} ({run.event.id})"))
        fields.append(("data", truncate(payload_text(run.event.data) or "{}",
                                        DETAIL_VALUE_CHARS)))
    fields += [
        ("created", local_time(_ms(run, "created_at"), millis=True)),
        ("started", local_time(_ms(run, "started_at"), millis=True)),
        ("ended", local_time(_ms(run, "ended_at"), millis=True)),
        ("duration", run_duration(run)),
    ]
    if run.output:
        fields.append(("output", truncate(payload_text(run.output), DETAIL_VALUE_CHARS)))
    if run.HasField("error"):
        fields.append(("error", truncate(error_text(run.error), DETAIL_VALUE_CHARS)))
    width = max(len(name) for name, _ in fields)
    header = "\n".join(f"{name.ljust(width)}  {value}" for name, value in fields)
    return f"{header}\n\n{steps_table(run.steps)}"


def _error_dict(error: common_pb2.ErrorInfo) -> dict[str, str]:
    return {"name": error.name, "message": error.message, "stack": error.stack}


def _step_dict(step: run_service_pb2.Step) -> dict[str, Any]:
    return {
        "step_id": step.step_id,
        "name": step.name,
        "status": step_status_name(step.status),
        "attempts": step.attempts,
        "started_at": formatting.iso(_ms(step, "started_at")),
        "ended_at": formatting.iso(_ms(step, "ended_at")),
        "output": payload_value(step.output),
        "error": _error_dict(step.error) if step.HasField("error") else None,
        "attempt_errors": [_error_dict(e) for e in step.attempt_errors],
    }


def run_dict(run: run_service_pb2.Run) -> dict[str, Any]:
    """The run as plain JSON-ready data; payloads decoded, times in ISO 8601 UTC."""
    event = None
    if run.HasField("event"):
        event = {"id": run.event.id, "name": run.event.name,
                 "data": payload_value(run.event.data) or {},
                 "ts": formatting.iso(_ms(run.event, "ts"))}
    return {
        "id": run.id,
        "function_id": run.function_id,
        "status": run_status_name(run.status),
        "attempt": run.attempt,
        "source_run_id": run.source_run_id or None,
        "held": run.held or None,
        "held_until": formatting.iso(_ms(run, "held_until")),
        "event": event,
        "created_at": formatting.iso(_ms(run, "created_at")),
        "started_at": formatting.iso(_ms(run, "started_at")),
        "ended_at": formatting.iso(_ms(run, "ended_at")),
        "output": payload_value(run.output),
        "error": _error_dict(run.error) if run.HasField("error") else None,
        "steps": [_step_dict(s) for s in run.steps],
    }


# -- events, functions, workers -----------------------------------------------------------------
RUN_IDS_SHOWN = 2


def ago(ms: int | None) -> str:
    """How long ago: "4 s ago", "3m 07s ago"."""
    if ms is None:
        return "-"
    elapsed = max(0, int(time.time() * 1000) - ms)
    return f"{elapsed // 1000} s ago" if elapsed < 60_000 else f"{duration(elapsed)} ago"


def _run_ids_cell(run_ids: Sequence[str]) -> str:
    if not run_ids:
        return "-"
    shown = ", ".join(run_ids[:RUN_IDS_SHOWN])
    more = len(run_ids) - RUN_IDS_SHOWN
    return f"{shown} (+{more} more)" if more > 0 else shown


def events_table(entries: Sequence[run_service_pb2.EventEntry]) -> str:
    if not entries:
        return "no events"
    rows = [
        [e.event.id, e.event.name, local_time(_ms(e, "received_at")), _run_ids_cell(e.run_ids)]
        for e in entries
    ]
    return table(["EVENT ID", "NAME", "RECEIVED", "RUNS"], rows)


def skips_table(skips: Sequence[run_service_pb2.Skip]) -> str:
    if not skips:
        return "no skips"
    rows = [[local_time(_ms(s, "skipped_at")), s.function_id, s.reason, s.event_id,
             s.key or "-"] for s in skips]
    return table(["SKIPPED", "FUNCTION", "REASON", "EVENT ID", "KEY"], rows)


def _trigger_text(trigger: common_pb2.Trigger) -> str:
    if trigger.WhichOneof("kind") == "cron":
        zone = f" ({trigger.cron.timezone})" if trigger.cron.timezone else ""
        return f"cron {trigger.cron.schedule}{zone}"
    if trigger.event.expression:
        return f"{trigger.event.name} if {trigger.event.expression}"
    return str(trigger.event.name)


def functions_table(functions: Sequence[run_service_pb2.FunctionInfo]) -> str:
    if not functions:
        return "no functions registered"
    rows = []
    for f in functions:
        s = f.stats
        rows.append([
            f.function_id + (" (archived)" if f.archived else "") + pause_text(f.pause),
            f.app_id, str(f.version),
            str(s.runs), str(s.completed), str(s.failed), str(s.cancelled), str(s.active),
            _retention_text(f),
            truncate("; ".join(flow_settings(f.config).describe()) or "-", FLOW_CELL_CHARS),
            truncate(", ".join(_trigger_text(t) for t in f.config.triggers), TABLE_CELL_CHARS),
        ])
    return table(["FUNCTION", "APP", "VERSION", "RUNS/24H", "COMPLETED", "FAILED", "CANCELLED",
                  "ACTIVE", "RETENTION", "FLOW CONTROL", "TRIGGERS"], rows)


def flow_settings(config: common_pb2.FunctionConfig) -> flow.FlowControl:
    """A listed function's flow control, as the server stored (and checked) it, to describe.
    Not wire.flow_control_from_proto: importing wire (the engine, CEL) would take the CLI's
    start from 0.3 s to 3 s on the test machine, for every command."""
    def ms(value: Any) -> int:
        return int(value.ToMilliseconds())

    throttle, rate, debounce = config.throttle, config.rate_limit, config.debounce
    batch, singleton = config.batch_events, config.singleton
    return flow.FlowControl(
        concurrency=tuple(flow.Concurrency(
            limit=c.limit, key=c.key, scope=_SCOPES.get(c.scope, flow.Scope.FN))
            for c in config.concurrency),
        throttle=flow.Throttle(limit=throttle.limit, period_ms=ms(throttle.period),
                               burst=throttle.burst, key=throttle.key)
        if config.HasField("throttle") else None,
        rate_limit=flow.RateLimit(limit=rate.limit, period_ms=ms(rate.period), key=rate.key)
        if config.HasField("rate_limit") else None,
        debounce=flow.Debounce(period_ms=ms(debounce.period), key=debounce.key,
                               timeout_ms=ms(debounce.timeout)
                               if debounce.HasField("timeout") else None)
        if config.HasField("debounce") else None,
        priority=config.priority.run,
        batching=flow.Batching(max_size=batch.max_size, timeout_ms=ms(batch.timeout),
                               key=batch.key) if config.HasField("batch_events") else None,
        idempotency=config.idempotency,
        singleton=flow.Singleton(mode=flow.SingletonMode.CANCEL
                                 if singleton.mode == common_pb2.Singleton.MODE_CANCEL
                                 else flow.SingletonMode.SKIP, key=singleton.key)
        if config.HasField("singleton") else None)


_SCOPES = {common_pb2.Concurrency.SCOPE_ENV: flow.Scope.ENV,
           common_pb2.Concurrency.SCOPE_ACCOUNT: flow.Scope.ACCOUNT}


def _retention_text(f: run_service_pb2.FunctionInfo) -> str:
    """The retention in force; "(server)" when it is the server's, not the function's own."""
    if not f.HasField("retention"):
        return "-"  # a server before retention
    text = formatting.retention(f.retention.ToMilliseconds())
    return text if f.config.HasField("retention") else f"{text} (server)"


def pause_text(pause: run_service_pb2.FunctionPause) -> str:
    """" (paused: 3 held)", " (paused, skipping: 2 skipped)", " (2 skipped)" or ""."""
    if pause.paused:
        if pause.skip:
            return f" (paused, skipping: {pause.skipped} skipped)"
        return f" (paused: {pause.held} held" + (
            f", {pause.skipped} cron ticks skipped)" if pause.skipped else ")")
    if pause.held:
        return f" ({pause.held} held runs starting)"
    return f" ({pause.skipped} skipped while paused)" if pause.skipped else ""


def workers_table(workers: Sequence[run_service_pb2.WorkerInfo]) -> str:
    if not workers:
        return "no workers connected"
    rows = [
        [w.connection_id, w.worker_id, w.app_id, f"{w.slots_in_use}/{w.slots}",
         "draining" if w.draining else "ready", w.sdk or "-",
         local_time(_ms(w, "connected_at")), ago(_ms(w, "last_heartbeat")),
         truncate(", ".join(w.function_ids), TABLE_CELL_CHARS)]
        for w in workers
    ]
    return table(["CONNECTION", "WORKER", "APP", "SLOTS", "STATE", "SDK", "CONNECTED",
                  "HEARTBEAT", "FUNCTIONS"], rows)


def apps_table(apps: Sequence[function_service_pb2.App]) -> str:
    if not apps:
        return "no apps registered"
    rows = [
        [a.app_id, a.kind, a.url or "-", a.protocol or "-", a.sdk or "-", str(a.functions),
         ago(_ms(a, "synced_at"))]
        for a in apps
    ]
    return table(["APP", "KIND", "URL", "PROTOCOL", "SDK", "FUNCTIONS", "LAST SYNC"], rows)
