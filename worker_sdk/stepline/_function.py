"""A function as the SDK holds it: its handler and its declared configuration, read from the
arguments of `@app.function(...)` (triggers, cancel_on, timeouts, on_failure; flow control in
_flow.py)."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from stepline._durations import DurationLike, duration_proto, parse_duration
from stepline._flow import FlowOptions
from stepline.errors import InvalidUsageError
from stepline.v1 import common_pb2

FUNCTION_FAILED = "stepline/function.failed"
# The server's rules for ids (see FunctionConfig in common.proto): a function's full name is
# "<app_id>:<function_id>", so neither holds ':'; app ids are slugs.
MAX_ID_LENGTH = 128
_APP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_FUNCTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./@-]*")


def check_app_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidUsageError(f"app_id: expected a non-empty string; got {value!r}")
    if len(value) > MAX_ID_LENGTH or not _APP_ID.fullmatch(value):
        raise InvalidUsageError(
            f"app_id: {value!r} is not a valid app id: use at most {MAX_ID_LENGTH} letters, "
            "digits and _ . -, starting with a letter or digit")
    return value


def check_function_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidUsageError(f"function id: expected a non-empty string; got {value!r}")
    if len(value) > MAX_ID_LENGTH or not _FUNCTION_ID.fullmatch(value):
        raise InvalidUsageError(
            f"function id: {value!r} is not a valid function id: use at most {MAX_ID_LENGTH} "
            "letters, digits and _ . / @ -, starting with a letter or digit (no ':', which "
            "separates the app id in a function's full name)")
    return value


@dataclass(frozen=True)
class EventTrigger:
    """Start a run for each event called `name` for which the CEL filter `if_` (over `event`)
    is true; no filter matches every such event. Build it with `stepline.on_event`."""

    name: str
    if_: str | None = None

    def to_proto(self) -> common_pb2.Trigger:
        return common_pb2.Trigger(
            event=common_pb2.EventTrigger(name=self.name, expression=self.if_ or ""))


@dataclass(frozen=True)
class CronTrigger:
    """Start a run on a five-field cron schedule, in time zone `tz` (default UTC; a schedule
    may also start with "TZ=Europe/Paris "). Build it with `stepline.on_cron`."""

    schedule: str
    tz: str | None = None

    def to_proto(self) -> common_pb2.Trigger:
        return common_pb2.Trigger(
            cron=common_pb2.CronTrigger(schedule=self.schedule, timezone=self.tz or ""))


def on_event(name: str, if_: str | None = None) -> EventTrigger:
    """A trigger: `on_event("shop/order", if_="event.data.total > 100")`."""
    return EventTrigger(name, if_)


def on_cron(schedule: str, tz: str | None = None) -> CronTrigger:
    """A trigger: `on_cron("0 9 * * MON", tz="Europe/Paris")`."""
    return CronTrigger(schedule, tz)


@dataclass(frozen=True)
class CancelOn:
    """Cancel an unfinished run when an `event` arrives for which the CEL filter `if_` (over
    `event`, the run's trigger, and `async`, the new event) is true; only within `timeout` of
    the run's start when given."""

    event: str
    if_: str | None = None
    timeout: DurationLike | None = None

    def to_proto(self) -> common_pb2.CancelOn:
        message = common_pb2.CancelOn(event=self.event, expression=self.if_ or "")
        if self.timeout is not None:
            message.timeout.CopyFrom(duration_proto(parse_duration(self.timeout, "timeout")))
        return message


@dataclass(frozen=True)
class Timeouts:
    """`start`: longest wait from a run's creation to its first dispatch; `finish`: from then to
    its end. A run over either fails with a Timeout error."""

    start: timedelta | None = None
    finish: timedelta | None = None


Trigger = EventTrigger | CronTrigger
TriggerLike = str | EventTrigger | CronTrigger | Mapping[str, Any]
CancelOnLike = CancelOn | Mapping[str, Any]


@dataclass(frozen=True)
class Function:
    """A declared function, as `@app.function(...)` returns it; calling it calls the handler.

    `id` is its id within its app; the server and every listing name it by `full_name`,
    "<app_id>:<id>"."""

    id: str
    name: str
    handler: Callable[..., Any]
    triggers: tuple[Trigger, ...]
    retries: int
    cancel_on: tuple[CancelOn, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    app_id: str = ""
    # How long the server keeps an ended run's history: None its default, zero forever.
    retention: timedelta | None = None
    flow: FlowOptions = field(default_factory=FlowOptions)

    @property
    def full_name(self) -> str:
        """"<app_id>:<id>": how runs, listings, the CLI, the dashboard and system events name
        it; just the id for a Function made outside an app."""
        return f"{self.app_id}:{self.id}" if self.app_id else self.id

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    def __call__(self, ctx: Any) -> Any:
        return self.handler(ctx)

    def to_proto(self) -> common_pb2.FunctionConfig:
        config = common_pb2.FunctionConfig(
            id=self.id, name=self.name, retries=self.retries,
            triggers=[t.to_proto() for t in self.triggers],
            cancel_on=[c.to_proto() for c in self.cancel_on],
        )
        if self.timeouts.start is not None:
            config.timeouts.start.CopyFrom(duration_proto(self.timeouts.start))
        if self.timeouts.finish is not None:
            config.timeouts.finish.CopyFrom(duration_proto(self.timeouts.finish))
        if self.retention is not None:
            config.retention.CopyFrom(duration_proto(self.retention))
        self.flow.add_to(config)
        return config


def failure_function(function: Function, handler: Callable[..., Any]) -> Function:
    """The companion that runs `handler` once `function` fails for good: it is triggered by the
    stepline/function.failed event the server sends for that function, which names it by full
    name, so a function of another app with the same id never sets it off."""
    when = f"event.data.function_id == {cel_string(function.full_name)}"
    return Function(f"{function.id}-failure", f"{function.name} (on failure)", handler,
                    (EventTrigger(FUNCTION_FAILED, when),), function.retries,
                    app_id=function.app_id, retention=function.retention)


def cel_string(text: str) -> str:
    """`text` as a CEL string literal: JSON's escapes (\\" \\\\ \\n \\uXXXX) all mean the same
    in CEL."""
    return json.dumps(text, ensure_ascii=False)


# -- reading @app.function(...) arguments -------------------------------------------------------
def _text(value: Any, what: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidUsageError(f"{what}: expected a non-empty string; got {value!r}")
    return value


def _keys(item: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(item) - allowed
    if unknown:
        raise InvalidUsageError(
            f"{what}: unknown key(s) {sorted(unknown)}; expected keys among {sorted(allowed)}")


def parse_triggers(trigger: TriggerLike | Sequence[TriggerLike] | None,
                   what: str) -> tuple[Trigger, ...]:
    if trigger is None:
        raise InvalidUsageError(f"{what}: a trigger is required, e.g. trigger=\"user/signup\"")
    items = [trigger] if isinstance(trigger, str | EventTrigger | CronTrigger | Mapping) else (
        trigger)
    if not isinstance(items, Sequence) or not items:
        raise InvalidUsageError(f"{what}: expected an event name, on_event(...), on_cron(...), "
                                f"a dict, or a non-empty list of them; got {trigger!r}")
    return tuple(_trigger(t, f"{what}[{i}]") for i, t in enumerate(items))


def _trigger(item: Any, what: str) -> Trigger:
    if isinstance(item, str):
        return EventTrigger(str(_text(item, what)))
    if isinstance(item, Mapping):
        if "event" in item and "cron" not in item:
            _keys(item, {"event", "if"}, what)
            item = EventTrigger(item["event"], item.get("if"))
        elif "cron" in item and "event" not in item:
            _keys(item, {"cron", "tz"}, what)
            item = CronTrigger(item["cron"], item.get("tz"))
        else:
            raise InvalidUsageError(f'{what}: a trigger dict needs exactly one of "event" '
                                    f'(with "if") or "cron" (with "tz"); got {dict(item)!r}')
    if isinstance(item, EventTrigger):
        return EventTrigger(str(_text(item.name, f"{what}.event")),
                            _text(item.if_, f"{what}.if", optional=True))
    if isinstance(item, CronTrigger):
        return CronTrigger(str(_text(item.schedule, f"{what}.cron")),
                           _text(item.tz, f"{what}.tz", optional=True))
    raise InvalidUsageError(f"{what}: expected an event name, on_event(...), on_cron(...) or a "
                            f"dict; got {item!r}")


def parse_cancel_on(cancel_on: CancelOnLike | Sequence[CancelOnLike] | None,
                    what: str) -> tuple[CancelOn, ...]:
    if cancel_on is None:
        return ()
    items = [cancel_on] if isinstance(cancel_on, CancelOn | Mapping) else cancel_on
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise InvalidUsageError(f"{what}: expected a list of CancelOn or dicts; got "
                                f"{cancel_on!r}")
    result = []
    for i, item in enumerate(items):
        where = f"{what}[{i}]"
        if isinstance(item, Mapping):
            _keys(item, {"event", "if", "timeout"}, where)
            item = CancelOn(item.get("event", ""), item.get("if"), item.get("timeout"))
        if not isinstance(item, CancelOn):
            raise InvalidUsageError(f"{where}: expected a CancelOn or a dict; got {item!r}")
        timeout = (None if item.timeout is None
                   else parse_duration(item.timeout, f"{where}.timeout"))
        result.append(CancelOn(str(_text(item.event, f"{where}.event")),
                               _text(item.if_, f"{where}.if", optional=True), timeout))
    return tuple(result)


def parse_retention(retention: DurationLike | None, what: str) -> timedelta | None:
    """None (the server's retention), "forever" or 0 (keep forever), or a duration of at least
    a second ("7d", "12h", seconds, a timedelta)."""
    if retention is None:
        return None
    if isinstance(retention, str) and retention.strip().lower() == "forever":
        return timedelta(0)
    value = parse_duration(retention, what, allow_zero=True)
    if timedelta(0) < value < timedelta(seconds=1):
        raise InvalidUsageError(f'{what}: must be at least 1s, or 0/"forever"; got {retention!r}')
    return value


def parse_timeouts(timeouts: Mapping[str, DurationLike] | Timeouts | None,
                   what: str) -> Timeouts:
    if timeouts is None:
        return Timeouts()
    if isinstance(timeouts, Timeouts):
        timeouts = {k: v for k, v in (("start", timeouts.start), ("finish", timeouts.finish))
                    if v is not None}
    if not isinstance(timeouts, Mapping):
        raise InvalidUsageError(
            f'{what}: expected a dict with "start" and/or "finish"; got {timeouts!r}')
    _keys(timeouts, {"start", "finish"}, what)
    start, finish = timeouts.get("start"), timeouts.get("finish")
    return Timeouts(
        None if start is None else parse_duration(start, f"{what}.start"),
        None if finish is None else parse_duration(finish, f"{what}.finish"))
