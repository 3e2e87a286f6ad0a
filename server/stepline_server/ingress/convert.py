"""Protobuf messages to the engine's records and back, validating as it goes.

Every error names the offending field with its path in the request, e.g. `events[2].data`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import common_pb2, run_service_pb2, worker_service_pb2
from stepline_server.engine import cron, expressions
from stepline_server.errors import InvalidArgument
from stepline_server.ids import new_id, now_ms
from stepline_server.model import (
    NEVER_MS,
    CancelOn,
    Dispatch,
    ErrorInfo,
    EventRecord,
    EventTrigger,
    FunctionSpec,
    Invoke,
    Op,
    OpsBatch,
    Planned,
    RunCompleted,
    RunFailed,
    RunRecord,
    RunStatus,
    SendEvents,
    Sleep,
    StepCompleted,
    StepFailed,
    StepRecord,
    StepStatus,
    Trigger,
    WaitForEvent,
)
from stepline_server.settings import DEFAULT_RETRIES, MAX_RETRIES
from stepline_server.telemetry import traceparent

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]*$")
MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 256


def json_text(raw: bytes, field: str, limit: int, *, default: str | None = None,
              object_only: bool = False) -> str:
    """Validate a JSON payload; return it as text, unchanged."""
    if not raw:
        if default is None:
            raise InvalidArgument(field, "required JSON payload is empty")
        return default
    if len(raw) > limit:
        raise InvalidArgument(field, f"{len(raw)} bytes exceeds the limit of {limit} bytes")
    try:
        text = raw.decode("utf-8")
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(field, f"malformed JSON ({exc})") from None
    if object_only and not isinstance(value, dict):
        raise InvalidArgument(field, f"expected a JSON object, got {type(value).__name__}")
    return text


def _check_id(value: str, field: str, what: str) -> None:
    if not value:
        raise InvalidArgument(field, f"{what} is required")
    if len(value) > MAX_ID_LENGTH or not ID_PATTERN.match(value):
        raise InvalidArgument(
            field, f"{value[:80]!r} is not a valid {what}: use at most {MAX_ID_LENGTH} letters, "
            "digits and _ . : / @ -, starting with a letter or digit")


def _ms(ts: Timestamp) -> int:
    return int(ts.ToMilliseconds())


def _timestamp(ms: int | None) -> Timestamp | None:
    if ms is None or ms >= NEVER_MS:  # "never": a suspension without a timeout
        return None
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


# -- events -------------------------------------------------------------------------------------
def events_from_proto(
    messages: Any, limit: int, field: str = "events"
) -> list[EventRecord]:
    if not messages:
        raise InvalidArgument(field, "at least one event is required")
    records = []
    for i, event in enumerate(messages):
        path = f"{field}[{i}]"
        if not event.name:
            raise InvalidArgument(f"{path}.name", "event name is required")
        if len(event.name) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"{path}.name", f"longer than {MAX_NAME_LENGTH} characters")
        if len(event.id) > MAX_ID_LENGTH:
            raise InvalidArgument(f"{path}.id", f"longer than {MAX_ID_LENGTH} characters")
        data = json_text(event.data, f"{path}.data", limit, default="{}", object_only=True)
        user = json_text(event.user, f"{path}.user", limit, default="", object_only=True) or None
        records.append(EventRecord(
            id=event.id or new_id(), name=event.name, data=data,
            ts_ms=_ms(event.ts) if event.HasField("ts") else now_ms(), user=user,
            traceparent=traceparent.normalize(event.traceparent),
        ))
    return records


def event_to_proto(record: EventRecord) -> common_pb2.Event:
    return common_pb2.Event(
        id=record.id, name=record.name, data=record.data.encode(), ts=_timestamp(record.ts_ms),
        user=(record.user or "").encode(), traceparent=record.traceparent or "",
    )


# -- functions ----------------------------------------------------------------------------------
def functions_from_proto(app_id: str, messages: Any, field: str) -> list[FunctionSpec]:
    _check_id(app_id, "app_id", "app id")
    specs: list[FunctionSpec] = []
    seen: dict[str, int] = {}
    for i, fn in enumerate(messages):
        path = f"{field}[{i}]"
        _check_id(fn.id, f"{path}.id", "function id")
        if fn.id in seen:
            raise InvalidArgument(
                f"{path}.id", f"duplicate function id {fn.id!r} (also {field}[{seen[fn.id]}])")
        seen[fn.id] = i
        retries = fn.retries if fn.HasField("retries") else DEFAULT_RETRIES
        if not 0 <= retries <= MAX_RETRIES:
            raise InvalidArgument(
                f"{path}.retries", f"must be between 0 and {MAX_RETRIES}, got {retries}")
        if len(fn.name) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"{path}.name", f"longer than {MAX_NAME_LENGTH} characters")
        triggers = tuple(_trigger(t, f"{path}.triggers[{j}]") for j, t in enumerate(fn.triggers))
        if not triggers:
            raise InvalidArgument(f"{path}.triggers", "at least one trigger is required")
        _no_duplicate_triggers(triggers, f"{path}.triggers")
        cancel_on = tuple(_cancel_on(c, f"{path}.cancel_on[{j}]")
                          for j, c in enumerate(fn.cancel_on))
        start_ms = _positive_ms(fn.timeouts, "start", f"{path}.timeouts.start")
        finish_ms = _positive_ms(fn.timeouts, "finish", f"{path}.timeouts.finish")
        specs.append(FunctionSpec(fn.id, fn.name or fn.id, triggers, retries, cancel_on,
                                  start_ms, finish_ms))
    return specs


def _no_duplicate_triggers(triggers: tuple[Trigger, ...], field: str) -> None:
    seen: set[Trigger | str] = set()
    for j, t in enumerate(triggers):
        if isinstance(t, EventTrigger):
            if t.name in seen:
                raise InvalidArgument(f"{field}[{j}].event.name",
                                      f"event {t.name!r} appears in two triggers; combine their "
                                      "filters with ||")
            seen.add(t.name)
        else:
            if t in seen:
                raise InvalidArgument(f"{field}[{j}].cron.schedule",
                                      f"schedule {t.schedule!r} ({t.timezone}) appears twice")
            seen.add(t)


def _cancel_on(message: common_pb2.CancelOn, path: str) -> CancelOn:
    _event_name(message.event, f"{path}.event")
    if message.expression:
        expressions.compile_expression(message.expression, f"{path}.expression",
                                       expressions.MATCH_VARIABLES)
    timeout = _positive_ms(message, "timeout", f"{path}.timeout")
    return CancelOn(message.event, message.expression, timeout)


MAX_DURATION_MS = 366 * 24 * 3600 * 1000


def _duration_ms(value: Any, field: str, *, allow_zero: bool = False) -> int:
    ms = int(value.ToMilliseconds())
    if value.seconds < 0 or value.nanos < 0 or (ms == 0 and not allow_zero):
        raise InvalidArgument(field, f"must be {'at least 0' if allow_zero else 'positive'}, "
                                     f"got {value.seconds}s {value.nanos}ns")
    if ms > MAX_DURATION_MS:
        raise InvalidArgument(field, f"{ms} ms is longer than the limit of one year")
    return ms


def _positive_ms(message: Any, name: str, field: str) -> int | None:
    if message is None or not message.HasField(name):
        return None
    return _duration_ms(getattr(message, name), field)


def _event_name(name: str, field: str) -> None:
    if not name:
        raise InvalidArgument(field, "event name is required")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(field, f"longer than {MAX_NAME_LENGTH} characters")


def _trigger(message: common_pb2.Trigger, path: str) -> Trigger:
    kind = message.WhichOneof("kind")
    if kind == "event":
        if not message.event.name:
            raise InvalidArgument(f"{path}.event.name", "event name is required")
        if len(message.event.name) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"{path}.event.name", f"longer than {MAX_NAME_LENGTH} characters")
        if message.event.expression:
            expressions.compile_expression(message.event.expression, f"{path}.event.expression",
                                           expressions.TRIGGER_VARIABLES)
        return EventTrigger(message.event.name, message.event.expression)
    if kind == "cron":
        return cron.parse_cron(message.cron.schedule, message.cron.timezone, f"{path}.cron")
    raise InvalidArgument(path, "a trigger needs an event or a cron schedule")


# -- dispatch and ops ---------------------------------------------------------------------------
def dispatch_to_proto(work: Dispatch) -> worker_service_pb2.ServerMessage:
    steps = [
        common_pb2.StepResult(step_id=s.step_id, error=error_to_proto(s.error))
        if s.error is not None
        else common_pb2.StepResult(step_id=s.step_id, output=(s.output or "null").encode())
        for s in work.steps
    ]
    return worker_service_pb2.ServerMessage(dispatch=worker_service_pb2.Dispatch(
        run_id=work.run_id, function_id=work.function_id, lease=work.lease,
        attempt=work.attempt, max_attempts=work.max_attempts, event=event_to_proto(work.event),
        steps=steps, traceparent=traceparent.for_dispatch(work),
        target_step_id=work.target_step_id,
    ))


def error_from_proto(message: common_pb2.ErrorInfo) -> ErrorInfo:
    return ErrorInfo(message.name or "Error", message.message, message.stack)


def error_to_proto(error: ErrorInfo | None) -> common_pb2.ErrorInfo | None:
    if error is None:
        return None
    return common_pb2.ErrorInfo(name=error.name, message=error.message, stack=error.stack)


def _retry_after_ms(message: Any) -> int | None:
    if not message.HasField("retry_after"):
        return None
    return max(0, int(message.retry_after.delay.ToMilliseconds()))


def _started(message: Any) -> int | None:
    return _ms(message.started_at) if message.HasField("started_at") else None


def ops_from_proto(message: worker_service_pb2.Ops, limit: int) -> OpsBatch:
    if not message.run_id:
        raise InvalidArgument("ops.run_id", "run id is required")
    if not message.ops:
        raise InvalidArgument("ops.ops", "at least one op is required")
    ops: list[Op] = []
    for i, op in enumerate(message.ops):
        path = f"ops.ops[{i}]"
        kind = op.WhichOneof("op")
        if kind == "step_completed":
            m = op.step_completed
            _require_step_id(m.step_id, f"{path}.step_completed.step_id")
            ops.append(StepCompleted(m.step_id, m.name or m.step_id,
                                     json_text(m.output, f"{path}.step_completed.output", limit,
                                               default="null"), _started(m)))
        elif kind == "step_failed":
            f = op.step_failed
            _require_step_id(f.step_id, f"{path}.step_failed.step_id")
            ops.append(StepFailed(f.step_id, f.name or f.step_id, error_from_proto(f.error),
                                  f.non_retriable, _retry_after_ms(f), _started(f)))
        elif kind == "run_completed":
            ops.append(RunCompleted(json_text(op.run_completed.output,
                                              f"{path}.run_completed.output", limit,
                                              default="null")))
        elif kind == "run_failed":
            rf = op.run_failed
            ops.append(RunFailed(error_from_proto(rf.error), rf.non_retriable,
                                 _retry_after_ms(rf)))
        elif kind == "sleep":
            sl = op.sleep
            _require_step_id(sl.step_id, f"{path}.sleep.step_id")
            if sl.HasField("until") == sl.HasField("duration"):
                raise InvalidArgument(f"{path}.sleep", "exactly one of until and duration is "
                                                       "required")
            if sl.HasField("until"):
                ops.append(Sleep(sl.step_id, sl.name or sl.step_id, until_ms=_ms(sl.until)))
            else:
                ops.append(Sleep(sl.step_id, sl.name or sl.step_id, duration_ms=_duration_ms(
                    sl.duration, f"{path}.sleep.duration", allow_zero=True)))
        elif kind == "wait_for_event":
            w = op.wait_for_event
            _require_step_id(w.step_id, f"{path}.wait_for_event.step_id")
            _event_name(w.event, f"{path}.wait_for_event.event")
            if not w.HasField("timeout"):
                raise InvalidArgument(f"{path}.wait_for_event.timeout", "a timeout is required")
            ops.append(WaitForEvent(w.step_id, w.name or w.step_id, w.event, w.expression,
                                    _duration_ms(w.timeout, f"{path}.wait_for_event.timeout")))
        elif kind == "invoke":
            iv = op.invoke
            _require_step_id(iv.step_id, f"{path}.invoke.step_id")
            _check_id(iv.function_id, f"{path}.invoke.function_id", "function id")
            ops.append(Invoke(
                iv.step_id, iv.name or iv.step_id, iv.function_id,
                json_text(iv.data, f"{path}.invoke.data", limit, default="{}",
                          object_only=True),
                _duration_ms(iv.timeout, f"{path}.invoke.timeout")
                if iv.HasField("timeout") else None))
        elif kind == "send_events":
            se = op.send_events
            _require_step_id(se.step_id, f"{path}.send_events.step_id")
            records = events_from_proto(se.events, limit, f"{path}.send_events.events")
            records = [r if se.events[j].id else replace(
                r, id=sent_event_id(message.run_id, se.step_id, j))
                for j, r in enumerate(records)]
            ops.append(SendEvents(se.step_id, se.name or se.step_id, tuple(records)))
        elif kind == "planned":
            planned = []
            for j, ps in enumerate(op.planned.steps):
                _require_step_id(ps.step_id, f"{path}.planned.steps[{j}].step_id")
                planned.append((ps.step_id, ps.name or ps.step_id))
            ops.append(Planned(tuple(planned)))
        elif kind is None:
            raise InvalidArgument(path, "unknown or empty op (a newer SDK than this server?)")
        else:
            raise InvalidArgument(path, f"op kind {kind!r} is not supported by this server yet")
    if message.target_step_id:
        _require_step_id(message.target_step_id, "ops.target_step_id")
    return OpsBatch(message.run_id, message.lease, message.function_id, tuple(ops),
                    message.target_step_id)


def sent_event_id(run_id: str, step_id: str, index: int) -> str:
    """The id of the `index`th event sent by a step, when the SDK gave none: the same on every
    replay, so the event is sent once."""
    return hashlib.sha256(f"{run_id}\0{step_id}\0{index}".encode()).hexdigest()[:32]


def _require_step_id(step_id: str, field: str) -> None:
    if not step_id:
        raise InvalidArgument(field, "step id is required")
    if len(step_id) > 300:
        raise InvalidArgument(field, "longer than 300 characters")


# -- runs ---------------------------------------------------------------------------------------
_RUN_STATUS = {
    RunStatus.QUEUED: run_service_pb2.RUN_STATUS_QUEUED,
    RunStatus.RUNNING: run_service_pb2.RUN_STATUS_RUNNING,
    RunStatus.SLEEPING: run_service_pb2.RUN_STATUS_SLEEPING,
    RunStatus.WAITING: run_service_pb2.RUN_STATUS_WAITING,
    RunStatus.COMPLETED: run_service_pb2.RUN_STATUS_COMPLETED,
    RunStatus.FAILED: run_service_pb2.RUN_STATUS_FAILED,
    RunStatus.CANCELLED: run_service_pb2.RUN_STATUS_CANCELLED,
}
_RUN_STATUS_BACK: dict[int, RunStatus] = {v: k for k, v in _RUN_STATUS.items()}


def run_status_from_proto(value: int) -> RunStatus | None:
    if value == run_service_pb2.RUN_STATUS_UNSPECIFIED:
        return None
    if value not in _RUN_STATUS_BACK:
        raise InvalidArgument("status", f"unknown run status {value}")
    return _RUN_STATUS_BACK[value]


_STEP_STATUS = {
    StepStatus.COMPLETED: run_service_pb2.STEP_STATUS_COMPLETED,
    StepStatus.FAILED: run_service_pb2.STEP_STATUS_FAILED,
    StepStatus.SLEEPING: run_service_pb2.STEP_STATUS_SLEEPING,
    StepStatus.WAITING: run_service_pb2.STEP_STATUS_WAITING,
    StepStatus.INVOKING: run_service_pb2.STEP_STATUS_INVOKING,
}


STEP_KINDS = {None: "run", "sleep": "sleep", "event": "wait_for_event", "invoke": "invoke",
              "send": "send_event"}


def _step_to_proto(step: StepRecord) -> run_service_pb2.Step:
    return run_service_pb2.Step(
        step_id=step.step_id, name=step.name, kind=STEP_KINDS.get(step.kind, step.kind or ""),
        status=_STEP_STATUS[step.status],
        output=(step.output or "").encode(), error=error_to_proto(step.error),
        attempts=step.attempts, started_at=_timestamp(step.started_at_ms),
        ended_at=_timestamp(step.ended_at_ms),
        attempt_errors=[common_pb2.ErrorInfo(name=f.error.name, message=f.error.message,
                                             stack=f.error.stack) for f in step.failures],
    )


def run_to_proto(run: RunRecord) -> run_service_pb2.Run:
    return run_service_pb2.Run(
        id=run.id, function_id=run.function_id, status=_RUN_STATUS[run.status],
        event=None if run.event is None else event_to_proto(run.event),
        output=(run.output or "").encode(), error=error_to_proto(run.error),
        attempt=run.attempt, created_at=_timestamp(run.created_at_ms),
        started_at=_timestamp(run.started_at_ms), ended_at=_timestamp(run.ended_at_ms),
        steps=[_step_to_proto(s) for s in run.steps], parent_run_id=run.parent_run_id or "",
        source_run_id=run.source_run_id or "",
    )
