"""Query strings, forms and JSON bodies to engine arguments, validated; every error names its
field (InvalidArgument), as the gRPC ingress does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.datastructures import FormData, QueryParams
from starlette.requests import Request

from stepline_server.engine.expressions import TRIGGER_VARIABLES, compile_expression
from stepline_server.errors import InvalidArgument
from stepline_server.ids import new_id, now_ms
from stepline_server.limits import (
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    check_event_id,
    check_name,
    check_text,
    check_time_ms,
    json_text,
    parse_json,
)
from stepline_server.model import EventRecord, RunStatus
from stepline_server.names import MAX_FULL_NAME_LENGTH

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_BODY_BYTES = 8 * 1024 * 1024
# The runs page's "created in the last …" choices.
SINCE = {"15m": 15 * 60_000, "1h": 3600_000, "24h": 24 * 3600_000, "7d": 7 * 24 * 3600_000}


@dataclass(frozen=True, slots=True)
class RunFilter:
    function_id: str | None  # as given: the engine checks that it is a full name
    status: RunStatus | None
    event_name: str | None
    created_after_ms: int | None
    created_before_ms: int | None
    since: str | None
    limit: int
    page_token: str
    expression: str | None = None  # CEL over the trigger event ("if")
    text: str | None = None  # in the output or error


def _text(query: QueryParams, field: str, max_length: int = MAX_NAME_LENGTH) -> str | None:
    value = query.get(field, "").strip()
    check_text(value, field, max_length)
    return value or None


def run_status(value: str | None, field: str = "status") -> RunStatus | None:
    if not value:
        return None
    try:
        return RunStatus(value)
    except ValueError:
        raise InvalidArgument(field, f"unknown run status {value!r}; expected one of "
                                     f"{', '.join(s.value for s in RunStatus)}") from None


def limit(query: QueryParams, default: int = DEFAULT_PAGE_SIZE) -> int:
    raw = query.get("limit", "")
    if not raw:
        return default
    # isdigit() alone would take "¹" or "٣", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise InvalidArgument("limit", f"expected a whole number from 1 to {MAX_PAGE_SIZE}, "
                                       f"got {raw!r}")
    return int(raw)


def timestamp_ms(value: str | None, field: str) -> int | None:
    """Milliseconds since the epoch, or ISO 8601 with a time zone (2026-11-28T09:30:00Z)."""
    if not value:
        return None
    if value.isdigit() and value.isascii():
        if len(value) > 16:  # more digits than any supported time has
            raise InvalidArgument(field, f"{value[:40]} ms is outside the supported times "
                                         "(years 1 to 9999)")
        return check_time_ms(int(value), field)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidArgument(field, f"expected milliseconds since the epoch or ISO 8601 with a "
                                     f"time zone (2026-11-28T09:30:00Z), got {value[:80]!r}")
    try:
        return check_time_ms(int(parsed.timestamp() * 1000), field)
    except OverflowError:  # a time zone offset that moves year 1 or 9999 past the range
        raise InvalidArgument(field, "outside the supported times (years 1 to 9999)") from None


def run_filter(query: QueryParams) -> RunFilter:
    since = query.get("since") or None
    after = timestamp_ms(query.get("created_after"), "created_after")
    if since is not None:
        if since not in SINCE:
            raise InvalidArgument("since", f"expected one of {', '.join(SINCE)}, got {since!r}")
        after = max(after or 0, now_ms() - SINCE[since])
    before = timestamp_ms(query.get("created_before"), "created_before")
    if after is not None and before is not None and before <= after:
        raise InvalidArgument("created_before", "must be later than created_after")
    return RunFilter(
        function_id=_text(query, "function", MAX_FULL_NAME_LENGTH),
        status=run_status(query.get("status")),
        event_name=_text(query, "event"),
        created_after_ms=after, created_before_ms=before, since=since,
        limit=limit(query), page_token=page_token(query),
        expression=expression(query.get("if", ""), "if"), text=_text(query, "text", 256),
    )


def expression(source: str, field: str) -> str | None:
    """An optional CEL filter over `event`, checked (INVALID_ARGUMENT naming `field`)."""
    source = source.strip()
    if not source:
        return None
    compile_expression(source, field, TRIGGER_VARIABLES)
    return source


def page_token(query: QueryParams) -> str:
    value = query.get("page_token", "")
    check_text(value, "page_token", 1000)
    return value


def event_name_filter(query: QueryParams) -> str | None:
    return _text(query, "name")


async def json_body(request: Request) -> dict[str, Any]:
    """A JSON object body (an empty body is {})."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidArgument("body", f"{len(raw)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    if not raw.strip():
        return {}
    value = parse_json(raw, "body")
    if not isinstance(value, dict):
        raise InvalidArgument("body", f"expected a JSON object, got {type(value).__name__}")
    return value


def string_field(body: dict[str, Any] | FormData, field: str, *, required: bool,
                 max_length: int = MAX_NAME_LENGTH) -> str:
    value = body.get(field)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidArgument(field, f"expected a string, got {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise InvalidArgument(field, "is required")
    check_text(value, field, max_length)
    return value


def path_id(request: Request, name: str, max_length: int = MAX_ID_LENGTH) -> str:
    """An id from the URL's path (a run's, a function's)."""
    value: str = request.path_params[name]
    check_text(value, name, max_length)
    return value


def event_record(name: str, data: Any, event_id: str, limit_bytes: int) -> EventRecord:
    """One event to send, checked like EventService.SendEvent checks it. `data` is JSON text
    (a form) or an already parsed value (a JSON body)."""
    check_name(name, "name")
    check_event_id(event_id, "id")
    if data is None or data == "":
        text = "{}"
    elif isinstance(data, str):
        text = json_text(data.encode(), "data", limit_bytes, object_only=True)
    elif isinstance(data, dict):
        text = json_text(json.dumps(data).encode(), "data", limit_bytes)
    else:
        raise InvalidArgument("data", f"expected a JSON object, got {type(data).__name__}")
    return EventRecord(id=event_id or new_id(), name=name, data=text,
                       ts_ms=now_ms())
