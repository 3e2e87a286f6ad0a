"""Flow control keys: a setting's CEL key evaluated over a run's trigger event, and the id its
state row (store flow_keys) and the queue's concurrency columns use.

A key's value is the string form of what the expression returns: a string as it is, other
JSON values as compact JSON (`42`, `true`). An expression that fails on an event (a missing
field, a type error) gives "", the same key for every such event: a bad payload is limited
with the others rather than escaping its limit. The id is `<owner>\\x1f<sha256 of value, 32 hex>`
with owner the function's full name, or "*" for concurrency shared by scope env/account, so
ids are short and fixed-size whatever the value.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from stepline_server.engine import expressions
from stepline_server.flow import MAX_PRIORITY_SECONDS
from stepline_server.model import EventRecord

SHARED_OWNER = "*"
SEPARATOR = "\x1f"
MAX_VALUE_SHOWN = 200  # flow_keys.value keeps this much of a key's value, for listings


def evaluate(source: str, variables: dict[str, Any]) -> Any:
    """The value of a stored (checked) CEL expression, or None when it fails on this event."""
    return expressions.compiled(source).value(variables)


def variables_of(event: EventRecord) -> dict[str, Any]:
    return {"event": expressions.event_variables(event)}


def key_value(source: str, event: EventRecord, variables: dict[str, Any] | None = None) -> str:
    """The key of `event` for a setting keyed by `source` ("" when the setting has no key)."""
    if not source:
        return ""
    value = evaluate(source, variables if variables is not None else variables_of(event))
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(_plain(value), separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        return str(value)


def key_id(owner: str, value: str) -> str:
    digest = hashlib.sha256(value.encode()).hexdigest()[:32]
    return f"{owner}{SEPARATOR}{digest}"


def shown(value: str) -> str:
    return value if len(value) <= MAX_VALUE_SHOWN else value[:MAX_VALUE_SHOWN - 1] + "…"


def priority_seconds(source: str, event: EventRecord,
                     variables: dict[str, Any] | None = None) -> int:
    """A run's priority factor: the expression's integer value clamped to +-600; 0 when it
    fails or is not a number."""
    if not source:
        return 0
    value = evaluate(source, variables if variables is not None else variables_of(event))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return max(-MAX_PRIORITY_SECONDS, min(MAX_PRIORITY_SECONDS, int(value)))


def _plain(value: Any) -> Any:
    """CEL results (maps, lists, bytes) as JSON-able values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
