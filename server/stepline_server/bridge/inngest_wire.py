"""Small facts of the Inngest wire that the call protocol, the event API and the register route
share: JCS bytes, duration strings, function slugs, the event shape.

Read from the shipped SDKs (PyPI `inngest` 0.5.19, npm `inngest` 4.24.0); see
INNGEST-PROTOCOL.md in the shared notes.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import rfc8785

from stepline_server.model import EventRecord

# Go's time.ParseDuration units plus the SDKs' d and w ("1d", "2h30m", "500ms", "1.5h").
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
# Sleeps and waits longer than this are refused, as Inngest does.
MAX_DURATION_MS = 366 * 86_400_000


def canonical(value: Any) -> bytes:
    """JCS (RFC 8785) bytes: the Python SDK canonicalises what it receives before it checks the
    signature, so the signed bytes must already be canonical."""
    return rfc8785.dumps(value)


def duration_ms(text: str) -> int | None:
    """Milliseconds of a duration string ("30s", "1h30m", "7d"), or None when it is not one."""
    if not isinstance(text, str) or not _DURATION.match(text.strip()):
        return None
    return int(sum(float(n) * _UNIT_MS[unit] for n, unit in _PART.findall(text.strip())))


def instant_ms(text: str) -> int | None:
    """Milliseconds since the epoch of an ISO-8601 time ("2026-11-30T03:00:00Z"), or None."""
    if not isinstance(text, str) or not text or not text[0].isdigit():
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def slug(app_id: str, function_id: str) -> str:
    """An Inngest function's fully qualified id: `<app>-<fn>`."""
    return f"{app_id}-{function_id}"


def local_function_id(app_id: str, fully_qualified: str) -> str:
    """The function id within its app of an Inngest slug (`<app>-<fn>` -> `<fn>`)."""
    prefix = f"{app_id}-"
    return fully_qualified[len(prefix):] if fully_qualified.startswith(prefix) else fully_qualified


def event_json(record: EventRecord) -> dict[str, Any]:
    """A stored event as the SDKs read it (`ts` in milliseconds, `user` an object)."""
    return {"id": record.id, "name": record.name, "data": json.loads(record.data),
            "ts": record.ts_ms, "user": json.loads(record.user) if record.user else {}}
