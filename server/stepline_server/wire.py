"""The messages of common.proto (events, function configs, errors, times) to the server's records
and back, validating as it goes. Shared by the two gRPC edges: ingress/convert.py (the client
services) and dispatch/convert.py (the worker stream).

Every error names the offending field with its path in the request, e.g. `events[2].data`.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import common_pb2
from stepline_server import flow, names
from stepline_server.engine import cron, expressions
from stepline_server.errors import InvalidArgument
from stepline_server.ids import new_id, now_ms
from stepline_server.limits import (
    MAX_DURATION_MS,
    MAX_NAME_LENGTH,
    MAX_TIMEZONE_LENGTH,
    PayloadLimits,
    check_app_id,
    check_event_id,
    check_function_id,
    check_length,
    check_name,
    check_time_ms,
    json_text,
)
from stepline_server.model import (
    NEVER_MS,
    CancelOn,
    ErrorInfo,
    EventRecord,
    EventTrigger,
    FunctionSpec,
    Trigger,
)
from stepline_server.settings import DEFAULT_RETRIES, MAX_RETRIES
from stepline_server.telemetry import traceparent


# -- times --------------------------------------------------------------------------------------
def ms(ts: Timestamp, field: str) -> int:
    """A Timestamp in milliseconds, within the times the server supports (limits.py)."""
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(field, f"nanos must be from 0 to 999999999, got {ts.nanos}")
    return check_time_ms(ts.seconds * 1000 + ts.nanos // 1_000_000, field)


def optional_ms(message: Any, name: str, path: str | None = None) -> int | None:
    """The Timestamp field `name` in milliseconds; None when unset. Errors name `path`
    (default: `name`)."""
    if not message.HasField(name):
        return None
    return ms(getattr(message, name), path or name)


# The longest retention a function may declare (zero keeps its runs forever).
MAX_RETENTION_DAYS = 100 * 365
MAX_RETENTION_MS = MAX_RETENTION_DAYS * 86_400_000


def timestamp(value_ms: int | None) -> Timestamp | None:
    if value_ms is None or value_ms >= NEVER_MS:  # "never": a suspension without a timeout
        return None
    ts = Timestamp()
    ts.FromMilliseconds(value_ms)
    return ts


def duration(value_ms: int | None) -> Duration | None:
    if value_ms is None:
        return None
    d = Duration()
    d.FromMilliseconds(value_ms)
    return d


def duration_ms(value: Duration, field: str, *, allow_zero: bool = False) -> int:
    if not -1_000_000_000 < value.nanos < 1_000_000_000:
        raise InvalidArgument(field, f"nanos must be within ±999999999, got {value.nanos}")
    result = value.seconds * 1000 + value.nanos // 1_000_000
    if value.seconds < 0 or value.nanos < 0 or (result == 0 and not allow_zero):
        raise InvalidArgument(field, f"must be {'at least 0' if allow_zero else 'positive'}, "
                                     f"got {value.seconds}s {value.nanos}ns")
    if result > MAX_DURATION_MS:
        raise InvalidArgument(field, f"{result} ms is longer than the limit of one year")
    return result


def _positive_ms(message: Any, name: str, field: str) -> int | None:
    if message is None or not message.HasField(name):
        return None
    return duration_ms(getattr(message, name), field)


# -- events -------------------------------------------------------------------------------------
def events_from_proto(messages: Any, limits: PayloadLimits, field: str = "events"
                      ) -> list[EventRecord]:
    if not messages:
        raise InvalidArgument(field, "at least one event is required")
    if len(messages) > limits.events_per_request:
        raise InvalidArgument(field, f"{len(messages)} events exceeds the limit of "
                                     f"{limits.events_per_request} per request")
    return [_event(event, f"{field}[{i}]", limits.event_bytes)
            for i, event in enumerate(messages)]


def _event(event: common_pb2.Event, path: str, limit: int) -> EventRecord:
    check_name(event.name, f"{path}.name")
    check_event_id(event.id, f"{path}.id")
    data = json_text(event.data, f"{path}.data", limit, default="{}", object_only=True)
    user = json_text(event.user, f"{path}.user", limit, default="", object_only=True) or None
    ts = optional_ms(event, "ts", f"{path}.ts")
    return EventRecord(id=event.id or new_id(), name=event.name, data=data,
                       ts_ms=now_ms() if ts is None else ts, user=user,
                       traceparent=traceparent.normalize(event.traceparent))


def event_to_proto(record: EventRecord) -> common_pb2.Event:
    return common_pb2.Event(
        id=record.id, name=record.name, data=record.data.encode(), ts=timestamp(record.ts_ms),
        user=(record.user or "").encode(), traceparent=record.traceparent or "",
    )


# -- errors -------------------------------------------------------------------------------------
def error_from_proto(parent: Any, path: str) -> ErrorInfo:
    """The required ErrorInfo field `error` of `parent` (a StepFailed or a RunFailed)."""
    if not parent.HasField("error"):
        raise InvalidArgument(f"{path}.error", "an error is required: at least its name or "
                                               "message")
    message = parent.error
    check_length(message.name, f"{path}.error.name", MAX_NAME_LENGTH)
    return ErrorInfo(message.name or "Error", message.message, message.stack)


def error_to_proto(error: ErrorInfo | None) -> common_pb2.ErrorInfo | None:
    if error is None:
        return None
    return common_pb2.ErrorInfo(name=error.name, message=error.message, stack=error.stack)


# -- function configs ---------------------------------------------------------------------------
def functions_from_proto(app_id: str, messages: Any, field: str, *, app_field: str = "app_id"
                         ) -> list[FunctionSpec]:
    """An app's declared functions, each by its full name `<app_id>:<id>` (names.py)."""
    check_app_id(app_id, app_field)
    specs: list[FunctionSpec] = []
    seen: dict[str, int] = {}
    for i, fn in enumerate(messages):
        path = f"{field}[{i}]"
        check_function_id(fn.id, f"{path}.id")
        if fn.id in seen:
            raise InvalidArgument(
                f"{path}.id", f"duplicate function id {fn.id!r} (also {field}[{seen[fn.id]}])")
        seen[fn.id] = i
        specs.append(_function(app_id, fn, path))
    return specs


def _function(app_id: str, fn: common_pb2.FunctionConfig, path: str) -> FunctionSpec:
    retries = fn.retries if fn.HasField("retries") else DEFAULT_RETRIES
    if not 0 <= retries <= MAX_RETRIES:
        raise InvalidArgument(
            f"{path}.retries", f"must be between 0 and {MAX_RETRIES}, got {retries}")
    check_length(fn.name, f"{path}.name")
    triggers = tuple(_trigger(t, f"{path}.triggers[{j}]") for j, t in enumerate(fn.triggers))
    if not triggers:
        raise InvalidArgument(f"{path}.triggers", "at least one trigger is required")
    _no_duplicate_triggers(triggers, f"{path}.triggers")
    return FunctionSpec(
        id=names.full_name(app_id, fn.id), name=fn.name or fn.id, triggers=triggers,
        retries=retries,
        cancel_on=tuple(_cancel_on(c, f"{path}.cancel_on[{j}]")
                        for j, c in enumerate(fn.cancel_on)),
        start_timeout_ms=_positive_ms(fn.timeouts, "start", f"{path}.timeouts.start"),
        finish_timeout_ms=_positive_ms(fn.timeouts, "finish", f"{path}.timeouts.finish"),
        retention_ms=_retention_ms(fn, f"{path}.retention"),
        flow=flow_control_from_proto(fn, path, has_cancel_on=bool(fn.cancel_on)))


# -- flow control -------------------------------------------------------------------------------
_SCOPES = {common_pb2.Concurrency.SCOPE_UNSPECIFIED: flow.Scope.FN,
           common_pb2.Concurrency.SCOPE_FN: flow.Scope.FN,
           common_pb2.Concurrency.SCOPE_ENV: flow.Scope.ENV,
           common_pb2.Concurrency.SCOPE_ACCOUNT: flow.Scope.ACCOUNT}
_SCOPE_PROTO = {flow.Scope.FN: common_pb2.Concurrency.SCOPE_FN,
                flow.Scope.ENV: common_pb2.Concurrency.SCOPE_ENV,
                flow.Scope.ACCOUNT: common_pb2.Concurrency.SCOPE_ACCOUNT}
_MODES = {common_pb2.Singleton.MODE_SKIP: flow.SingletonMode.SKIP,
          common_pb2.Singleton.MODE_CANCEL: flow.SingletonMode.CANCEL}
_MODE_PROTO = {mode: value for value, mode in _MODES.items()}


def flow_control_from_proto(fn: common_pb2.FunctionConfig, path: str, *,
                            has_cancel_on: bool) -> flow.FlowControl:
    """A FunctionConfig's flow control settings, checked (flow.check) and their CEL compiled."""
    def required_ms(message: Any, name: str, field: str) -> int:
        value = _positive_ms(message, name, field)
        if value is None:
            raise InvalidArgument(field, "is required")
        return value

    concurrency = tuple(
        flow.Concurrency(limit=c.limit, key=c.key, scope=_SCOPES.get(c.scope, flow.Scope.FN))
        for c in fn.concurrency)
    throttle = rate_limit = debounce = batching = singleton = None
    if fn.HasField("throttle"):
        t = fn.throttle
        throttle = flow.Throttle(
            limit=t.limit, period_ms=required_ms(t, "period", f"{path}.throttle.period"),
            burst=t.burst if t.HasField("burst") else 1, key=t.key)
    if fn.HasField("rate_limit"):
        r = fn.rate_limit
        rate_limit = flow.RateLimit(
            limit=r.limit, period_ms=required_ms(r, "period", f"{path}.rate_limit.period"),
            key=r.key)
    if fn.HasField("debounce"):
        d = fn.debounce
        debounce = flow.Debounce(
            period_ms=required_ms(d, "period", f"{path}.debounce.period"), key=d.key,
            timeout_ms=_positive_ms(d, "timeout", f"{path}.debounce.timeout"))
    if fn.HasField("batch_events"):
        b = fn.batch_events
        batching = flow.Batching(
            max_size=b.max_size,
            timeout_ms=required_ms(b, "timeout", f"{path}.batch_events.timeout"), key=b.key)
    if fn.HasField("singleton"):
        mode = _MODES.get(fn.singleton.mode)
        if mode is None:
            raise InvalidArgument(f"{path}.singleton.mode", "must be MODE_SKIP or MODE_CANCEL")
        singleton = flow.Singleton(mode=mode, key=fn.singleton.key)
    settings = flow.FlowControl(
        concurrency=concurrency, throttle=throttle, rate_limit=rate_limit, debounce=debounce,
        priority=fn.priority.run if fn.HasField("priority") else "", batching=batching,
        idempotency=fn.idempotency, singleton=singleton)
    return check_flow_control(settings, path, has_cancel_on=has_cancel_on)


def check_flow_control(settings: flow.FlowControl, path: str, *, has_cancel_on: bool
                       ) -> flow.FlowControl:
    """Values, combinations and CEL of flow control settings, whatever their source."""
    flow.check(settings, path, has_cancel_on=has_cancel_on)
    for source, field in flow.expressions_of(settings, path):
        check_length(source, field, flow.MAX_KEY_EXPRESSION)
        expressions.compile_expression(source, field, expressions.TRIGGER_VARIABLES)
    return settings


def flow_control_to_proto(settings: flow.FlowControl) -> dict[str, Any]:
    """FunctionConfig fields (keyword arguments) of flow control settings."""
    fields: dict[str, Any] = {}
    if settings.concurrency:
        fields["concurrency"] = [common_pb2.Concurrency(limit=c.limit, key=c.key,
                                                        scope=_SCOPE_PROTO[c.scope])
                                 for c in settings.concurrency]
    if settings.throttle:
        t = settings.throttle
        fields["throttle"] = common_pb2.Throttle(limit=t.limit, period=duration(t.period_ms),
                                                 burst=t.burst, key=t.key)
    if settings.rate_limit:
        r = settings.rate_limit
        fields["rate_limit"] = common_pb2.RateLimit(limit=r.limit, period=duration(r.period_ms),
                                                    key=r.key)
    if settings.debounce:
        d = settings.debounce
        fields["debounce"] = common_pb2.Debounce(period=duration(d.period_ms), key=d.key,
                                                 timeout=duration(d.timeout_ms))
    if settings.priority:
        fields["priority"] = common_pb2.Priority(run=settings.priority)
    if settings.batching:
        b = settings.batching
        fields["batch_events"] = common_pb2.Batching(max_size=b.max_size,
                                                     timeout=duration(b.timeout_ms), key=b.key)
    if settings.idempotency:
        fields["idempotency"] = settings.idempotency
    if settings.singleton:
        fields["singleton"] = common_pb2.Singleton(mode=_MODE_PROTO[settings.singleton.mode],
                                                   key=settings.singleton.key)
    return fields


def _retention_ms(fn: common_pb2.FunctionConfig, field: str) -> int | None:
    """Unset: the server's retention; zero: forever; else at least a second, at most
    MAX_RETENTION_MS."""
    if not fn.HasField("retention"):
        return None
    value = fn.retention
    if value.seconds < 0 or value.nanos < 0 or value.nanos >= 1_000_000_000:
        raise InvalidArgument(field, f"must be a positive duration (or zero: forever), got "
                                     f"{value.seconds}s {value.nanos}ns")
    result = value.seconds * 1000 + value.nanos // 1_000_000
    if 0 < result < 1000 or result > MAX_RETENTION_MS:
        raise InvalidArgument(field, f"must be between 1 second and {MAX_RETENTION_DAYS} days "
                                     f"(or zero: forever), got {result} ms")
    return result


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
    check_name(message.event, f"{path}.event")
    if message.expression:
        expressions.compile_expression(message.expression, f"{path}.expression",
                                       expressions.MATCH_VARIABLES)
    timeout = _positive_ms(message, "timeout", f"{path}.timeout")
    return CancelOn(message.event, message.expression, timeout)


def _trigger(message: common_pb2.Trigger, path: str) -> Trigger:
    kind = message.WhichOneof("kind")
    if kind == "event":
        check_name(message.event.name, f"{path}.event.name")
        if message.event.expression:
            expressions.compile_expression(message.event.expression, f"{path}.event.expression",
                                           expressions.TRIGGER_VARIABLES)
        return EventTrigger(message.event.name, message.event.expression)
    if kind == "cron":
        check_length(message.cron.schedule, f"{path}.cron.schedule")
        check_length(message.cron.timezone, f"{path}.cron.timezone", MAX_TIMEZONE_LENGTH)
        return cron.parse_cron(message.cron.schedule, message.cron.timezone, f"{path}.cron")
    raise InvalidArgument(path, "a trigger needs an event or a cron schedule")


def function_config_to_proto(spec: FunctionSpec) -> common_pb2.FunctionConfig:
    """The inverse of functions_from_proto, for one function: as its app declared it, by the
    id it has in that app."""
    triggers = [
        common_pb2.Trigger(event=common_pb2.EventTrigger(name=t.name, expression=t.expression))
        if isinstance(t, EventTrigger)
        else common_pb2.Trigger(cron=common_pb2.CronTrigger(schedule=t.schedule,
                                                            timezone=t.timezone))
        for t in spec.triggers
    ]
    timeouts = None
    if spec.start_timeout_ms is not None or spec.finish_timeout_ms is not None:
        timeouts = common_pb2.Timeouts(start=duration(spec.start_timeout_ms),
                                       finish=duration(spec.finish_timeout_ms))
    return common_pb2.FunctionConfig(
        id=names.local_id(spec.id), name=spec.name, triggers=triggers, retries=spec.retries,
        cancel_on=[common_pb2.CancelOn(event=c.event, expression=c.expression,
                                       timeout=duration(c.timeout_ms))
                   for c in spec.cancel_on],
        timeouts=timeouts, retention=duration(spec.retention_ms),
        **flow_control_to_proto(spec.flow))
