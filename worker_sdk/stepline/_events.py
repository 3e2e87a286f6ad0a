"""Events as a function receives them (`Event`) and as code sends them (`EventInput`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stepline._durations import timestamp_proto
from stepline.errors import InvalidUsageError
from stepline.v1 import common_pb2


@dataclass(frozen=True)
class Event:
    """An event as a function receives it."""

    name: str
    data: Any
    id: str = ""
    ts: datetime | None = None
    user: Any = None


@dataclass(frozen=True)
class EventInput:
    """An event to send: `EventInput("user/signup.completed", {"userId": "usr_1"})`."""

    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    ts: datetime | None = None
    user: Mapping[str, Any] | None = None

    def to_proto(self) -> common_pb2.Event:
        """The message to send; InvalidUsageError for what the server would refuse."""
        return _event_message(self, "event")


EventLike = EventInput | Mapping[str, Any]
"""An EventInput, or a dict with "name", "data" and optionally "id", "ts", "user"."""

_EVENT_KEYS = frozenset({"name", "data", "id", "ts", "user"})
# The server's limits (stepline_server/limits.py): the columns' sizes.
MAX_NAME_LENGTH = 256
MAX_ID_LENGTH = 128


def _ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def event_from_proto(message: common_pb2.Event) -> Event:
    return Event(
        name=message.name,
        data=json.loads(message.data) if message.data else {},
        id=message.id,
        ts=_ms_to_datetime(message.ts.ToMilliseconds()) if message.HasField("ts") else None,
        user=json.loads(message.user) if message.user else None,
    )


def event_from_json(value: Any) -> Event | None:
    """A wait_for_event step's result: {"id", "name", "data", "ts" (ms), "user"}, or None."""
    if value is None:
        return None
    ts = value.get("ts")
    return Event(name=value["name"], data=value.get("data", {}), id=value.get("id", ""),
                 ts=None if ts is None else _ms_to_datetime(ts), user=value.get("user"))


def sent_event_id(run_id: str, step_id: str, index: int) -> str:
    """The id of the `index`th event of a send_event step when the caller gave none: the same
    on every replay, so the server's dedup sends it once."""
    return hashlib.sha256(f"{run_id}\0{step_id}\0{index}".encode()).hexdigest()[:32]


def step_events(events: EventLike | Sequence[EventLike], run_id: str, step_id: str,
                what: str) -> list[common_pb2.Event]:
    """Validate a send_event step's events and give each its id (the caller's, or derived)."""
    items = [events] if isinstance(events, EventInput | Mapping) else events
    if isinstance(items, str | bytes) or not isinstance(items, Sequence) or not items:
        raise InvalidUsageError(
            f"{what}: expected an event or a non-empty list of events (EventInput or dict); "
            f"got {events!r}")
    messages = []
    for index, item in enumerate(items):
        message = _event_message(item, f"{what}[{index}]")
        if not message.id:
            message.id = sent_event_id(run_id, step_id, index)
        messages.append(message)
    return messages


def _event_message(item: Any, what: str) -> common_pb2.Event:
    if isinstance(item, Mapping):
        unknown = set(item) - _EVENT_KEYS
        if unknown:
            raise InvalidUsageError(f"{what}: unknown key(s) {sorted(unknown)}; an event takes "
                                    f"{sorted(_EVENT_KEYS)}")
        if "name" not in item:
            raise InvalidUsageError(f"{what}: the event has no \"name\"")
        item = EventInput(item["name"], item.get("data", {}), id=item.get("id"),
                          ts=item.get("ts"), user=item.get("user"))
    if not isinstance(item, EventInput):
        raise InvalidUsageError(f"{what}: expected an EventInput or a dict; got {item!r}")
    if not isinstance(item.name, str) or not item.name:
        raise InvalidUsageError(f"{what}.name: expected a non-empty string; got {item.name!r}")
    check_text(item.name, f"{what}.name", MAX_NAME_LENGTH)
    if item.id is not None and not isinstance(item.id, str):
        raise InvalidUsageError(f"{what}.id: expected a string; got {item.id!r}")
    check_text(item.id or "", f"{what}.id", MAX_ID_LENGTH)
    message = common_pb2.Event(id=item.id or "", name=item.name,
                               data=_json_object(item.data, f"{what}.data"))
    if item.user is not None:
        message.user = _json_object(item.user, f"{what}.user")
    if item.ts is not None:
        if not isinstance(item.ts, datetime):
            raise InvalidUsageError(f"{what}.ts: expected a datetime; got {item.ts!r}")
        message.ts.CopyFrom(timestamp_proto(item.ts))
    return message


def check_text(value: str, what: str, limit: int) -> None:
    """What the server accepts in a name or an id: at most `limit` characters, no NUL."""
    if len(value) > limit:
        raise InvalidUsageError(f"{what}: longer than {limit} characters ({len(value)})")
    if "\x00" in value:
        raise InvalidUsageError(f"{what}: contains a NUL character, which is not allowed")


def _json_object(value: Any, what: str) -> bytes:
    if not isinstance(value, Mapping):
        raise InvalidUsageError(f"{what}: expected a JSON object (a dict); got {value!r}")
    try:
        return json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidUsageError(f"{what}: not JSON-serializable: {exc}") from None
