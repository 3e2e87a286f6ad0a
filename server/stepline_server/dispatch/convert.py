"""The worker stream's messages (worker_service.proto) to the engine's records and back: a
dispatch out, a report's ops in, one reader per op kind. Errors name the field, e.g.
`ops.ops[1].sleep.duration`. A stream belongs to one app and speaks its bare function ids; the
engine's are full names (names.py), translated here both ways."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from stepline.v1 import common_pb2, worker_service_pb2
from stepline_server import names
from stepline_server.errors import InvalidArgument
from stepline_server.ids import sent_event_id
from stepline_server.limits import (
    MAX_DURATION_MS,
    MAX_NAME_LENGTH,
    PayloadLimits,
    check_length,
    check_name,
    check_run_id,
    check_step_id,
    json_text,
)
from stepline_server.model import (
    Dispatch,
    Invoke,
    Op,
    OpsBatch,
    Planned,
    RunCompleted,
    RunFailed,
    SendEvents,
    Sleep,
    StepCompleted,
    StepFailed,
    WaitForEvent,
)
from stepline_server.telemetry import traceparent
from stepline_server.wire import (
    duration_ms,
    error_from_proto,
    error_to_proto,
    event_to_proto,
    events_from_proto,
    optional_ms,
)


def dispatch_to_proto(work: Dispatch) -> worker_service_pb2.ServerMessage:
    steps = [
        common_pb2.StepResult(step_id=s.step_id, error=error_to_proto(s.error))
        if s.error is not None
        else common_pb2.StepResult(step_id=s.step_id, output=(s.output or "null").encode())
        for s in work.steps
    ]
    return worker_service_pb2.ServerMessage(dispatch=worker_service_pb2.Dispatch(
        run_id=work.run_id, function_id=names.local_id(work.function_id), lease=work.lease,
        attempt=work.attempt, max_attempts=work.max_attempts, event=event_to_proto(work.event),
        steps=steps, traceparent=traceparent.for_dispatch(work),
        target_step_id=work.target_step_id, events=[event_to_proto(e) for e in work.events],
    ))


def ops_from_proto(message: worker_service_pb2.Ops, limits: PayloadLimits, *, app_id: str
                   ) -> OpsBatch:
    """A report from a worker of app `app_id`."""
    check_run_id(message.run_id, "ops.run_id")
    check_length(message.function_id, "ops.function_id")
    if message.target_step_id:
        check_step_id(message.target_step_id, "ops.target_step_id")
    if not message.ops:
        raise InvalidArgument("ops.ops", "at least one op is required")
    ops = [_op(message.run_id, app_id, op, f"ops.ops[{i}]", limits)
           for i, op in enumerate(message.ops)]
    return OpsBatch(run_id=message.run_id, lease=message.lease,
                    function_id=names.full_name(app_id, message.function_id), ops=tuple(ops),
                    target_step_id=message.target_step_id)


def _op(run_id: str, app_id: str, op: worker_service_pb2.Op, path: str, limits: PayloadLimits
        ) -> Op:
    kind = op.WhichOneof("op")
    if kind is None:
        raise InvalidArgument(path, "unknown or empty op (a newer SDK than this server?)")
    reader = _READERS.get(kind)
    if reader is None:
        raise InvalidArgument(path, f"op kind {kind!r} is not supported by this server yet")
    return reader(_Field(run_id, app_id, getattr(op, kind), f"{path}.{kind}", limits))


class _Field:
    """One op's message, where it sits in the report, the reporting worker's app and the
    payload limits."""

    __slots__ = ("app_id", "limits", "message", "path", "run_id")

    def __init__(self, run_id: str, app_id: str, message: Any, path: str,
                 limits: PayloadLimits) -> None:
        self.run_id = run_id
        self.app_id = app_id
        self.message = message
        self.path = path
        self.limits = limits

    def step(self) -> tuple[str, str]:
        """The op's step id (required) and name (the id when unnamed)."""
        step_id, name = self.message.step_id, self.message.name
        check_step_id(step_id, f"{self.path}.step_id")
        # Step ids may be longer than names ("name:12"): an unnamed step takes its id as its
        # name only when that fits the name's limit.
        if not name and len(step_id) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"{self.path}.name", f"required when the step id is longer "
                                                       f"than {MAX_NAME_LENGTH} characters")
        check_length(name, f"{self.path}.name")
        return step_id, name or step_id

    def json(self, name: str, *, default: str, object_only: bool = False,
             limit: int | None = None) -> str:
        return json_text(getattr(self.message, name), f"{self.path}.{name}",
                         limit or self.limits.output_bytes, default=default,
                         object_only=object_only)

    def time(self, name: str) -> int | None:
        return optional_ms(self.message, name, f"{self.path}.{name}")

    def duration(self, name: str, *, allow_zero: bool = False) -> int | None:
        if not self.message.HasField(name):
            return None
        return duration_ms(getattr(self.message, name), f"{self.path}.{name}",
                           allow_zero=allow_zero)

    def retry_after_ms(self) -> int | None:
        if not self.message.HasField("retry_after"):
            return None
        delay = self.message.retry_after.delay
        path = f"{self.path}.retry_after.delay"
        if delay.seconds < 0 or delay.nanos < 0:  # a time already past: retry at once
            return 0
        if delay.seconds * 1000 + delay.nanos // 1_000_000 > MAX_DURATION_MS:
            raise InvalidArgument(path, f"{delay.seconds}s is longer than the limit of one year")
        return duration_ms(delay, path, allow_zero=True)


def _step_completed(f: _Field) -> Op:
    step_id, name = f.step()
    return StepCompleted(step_id=step_id, name=name, output=f.json("output", default="null"),
                         started_at_ms=f.time("started_at"))


def _step_failed(f: _Field) -> Op:
    step_id, name = f.step()
    m = f.message
    return StepFailed(step_id=step_id, name=name, error=error_from_proto(m, f.path),
                      non_retriable=m.non_retriable, retry_after_ms=f.retry_after_ms(),
                      started_at_ms=f.time("started_at"))


def _run_completed(f: _Field) -> Op:
    return RunCompleted(f.json("output", default="null"))


def _run_failed(f: _Field) -> Op:
    return RunFailed(error_from_proto(f.message, f.path), f.message.non_retriable,
                     f.retry_after_ms())


def _sleep(f: _Field) -> Op:
    step_id, name = f.step()
    if f.message.HasField("until") == f.message.HasField("duration"):
        raise InvalidArgument(f.path, "exactly one of until and duration is required")
    until = f.time("until")
    return Sleep(step_id=step_id, name=name, until_ms=until,
                 duration_ms=None if until is not None else f.duration("duration",
                                                                       allow_zero=True))


def _wait_for_event(f: _Field) -> Op:
    step_id, name = f.step()
    check_name(f.message.event, f"{f.path}.event")
    timeout = f.duration("timeout")
    if timeout is None:
        raise InvalidArgument(f"{f.path}.timeout", "a timeout is required")
    return WaitForEvent(step_id=step_id, name=name, event=f.message.event,
                        expression=f.message.expression, timeout_ms=timeout)


def _invoke(f: _Field) -> Op:
    step_id, name = f.step()
    function_id = names.invoked(f.message.function_id, f"{f.path}.function_id",
                                app_id=f.app_id)
    return Invoke(step_id=step_id, name=name, function_id=function_id,
                  data=f.json("data", default="{}", object_only=True,
                              limit=f.limits.event_bytes),
                  timeout_ms=f.duration("timeout"))


def _send_events(f: _Field) -> Op:
    step_id, name = f.step()
    sent = f.message.events
    records = events_from_proto(sent, f.limits, f"{f.path}.events")
    # Events the code sent without an id get one derived from the step: sent once, however
    # often the step is reported.
    records = [r if sent[j].id else replace(r, id=sent_event_id(f.run_id, step_id, j))
               for j, r in enumerate(records)]
    return SendEvents(step_id, name, tuple(records))


def _planned(f: _Field) -> Op:
    steps = []
    for j, planned in enumerate(f.message.steps):
        steps.append(_Field(f.run_id, f.app_id, planned, f"{f.path}.steps[{j}]",
                            f.limits).step())
    return Planned(tuple(steps))


_READERS: dict[str, Callable[[_Field], Op]] = {
    "step_completed": _step_completed,
    "step_failed": _step_failed,
    "run_completed": _run_completed,
    "run_failed": _run_failed,
    "sleep": _sleep,
    "wait_for_event": _wait_for_event,
    "invoke": _invoke,
    "send_events": _send_events,
    "planned": _planned,
}
