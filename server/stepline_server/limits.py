"""Limits on what clients send, and the checks that enforce them, for every edge (the gRPC
services, the worker stream, the HTTP API). Each error names the field that is wrong.

The lengths are those of the columns in store/schema.py, so both backends accept the same input:
PostgreSQL refuses a string longer than its column (and any NUL character) where SQLite stores
it; checking here keeps a client's mistake from reaching the database as an error with SQL in it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from stepline_server.errors import InvalidArgument
from stepline_server.settings import Settings

# Ids of apps and of functions within their app: what fits the columns and reads well in a URL.
# Neither holds ':', the separator of a function's full name "<app_id>:<function_id>"
# (names.py); app ids are slugs.
APP_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FUNCTION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./@-]*$")
MAX_ID_LENGTH = 128
# Names of events, functions and steps (the `name` columns), and worker ids.
MAX_NAME_LENGTH = 256
# Step ids are derived from step names by the SDKs ("name", "name:1", ...): a name of the
# longest kind still gets an id that fits.
MAX_STEP_ID_LENGTH = 300
# Run ids are the server's (32 hex digits); anything longer names no run.
MAX_RUN_ID_LENGTH = 64
# The workers table's `sdk` column: language/version as the worker announces them.
MAX_SDK_LENGTH = 128
# The cron_schedules table's timezone column; IANA names are far shorter.
MAX_TIMEZONE_LENGTH = 64
# A cancellation's reason, as the CLI and the dashboard accept it.
MAX_REASON_LENGTH = 1000
# Durations (timeouts, sleeps): a year is plenty, and keeps due times far from overflow.
MAX_DURATION_MS = 366 * 24 * 3600 * 1000
# Times: google.protobuf.Timestamp's range, 0001-01-01 to 9999-12-31 (UTC). Every time in it
# fits the BIGINT millisecond columns with room to add a year.
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999
# JSON nesting: deeper documents are refused before anything recurses over them (the server's
# JSON and CEL code, the SDK's decoder, the dashboard's renderer all recurse per level).
MAX_JSON_DEPTH = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadLimits:
    """The settings' payload limits, as the edges check them."""

    output_bytes: int  # a step's or a run's output
    event_bytes: int  # an event's data, or its user
    events_per_request: int

    @classmethod
    def of(cls, settings: Settings) -> PayloadLimits:
        return cls(output_bytes=settings.max_payload_bytes,
                   event_bytes=settings.max_event_bytes,
                   events_per_request=settings.max_events_per_request)


def check_text(value: str, field: str, limit: int = MAX_NAME_LENGTH) -> None:
    """Any string that is stored or looked up: at most `limit` characters, and no NUL
    (PostgreSQL cannot store one in a text column)."""
    if len(value) > limit:
        raise InvalidArgument(field, f"longer than {limit} characters")
    if "\x00" in value:
        raise InvalidArgument(field, "contains a NUL character (\\u0000), which is not allowed")


def check_app_id(value: str, field: str) -> None:
    """A required app id."""
    _check_id(value, field, "app id", APP_ID_PATTERN, "_ . -")


def check_function_id(value: str, field: str) -> None:
    """A required function id, as its app declares it (without the app)."""
    _check_id(value, field, "function id", FUNCTION_ID_PATTERN, "_ . / @ -")


def _check_id(value: str, field: str, what: str, pattern: re.Pattern[str], others: str) -> None:
    if not value:
        raise InvalidArgument(field, f"{what} is required")
    if len(value) > MAX_ID_LENGTH or not pattern.match(value):
        raise InvalidArgument(
            field, f"{value[:80]!r} is not a valid {what}: use at most {MAX_ID_LENGTH} letters, "
            f"digits and {others}, starting with a letter or digit")


def check_event_id(value: str, field: str) -> None:
    """An event's id, optional (the server makes one up)."""
    check_text(value, field, MAX_ID_LENGTH)


def check_run_id(value: str, field: str = "run_id") -> None:
    """A required run id to look up."""
    if not value:
        raise InvalidArgument(field, "run id is required")
    check_text(value, field, MAX_RUN_ID_LENGTH)


def check_name(value: str, field: str, what: str = "event name") -> None:
    """A required name: an event's (by default) or a trigger's."""
    if not value:
        raise InvalidArgument(field, f"{what} is required")
    check_text(value, field)


def check_length(value: str, field: str, limit: int = MAX_NAME_LENGTH) -> None:
    """An optional string: see check_text."""
    check_text(value, field, limit)


def check_step_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "step id is required")
    check_text(value, field, MAX_STEP_ID_LENGTH)


def check_time_ms(value_ms: int, field: str) -> int:
    """A time in milliseconds since the epoch, within MIN_TIME_MS..MAX_TIME_MS."""
    if isinstance(value_ms, bool) or not MIN_TIME_MS <= value_ms <= MAX_TIME_MS:
        raise InvalidArgument(field, f"{value_ms} ms is outside the supported times "
                                     "(years 1 to 9999)")
    return value_ms


def json_text(raw: bytes, field: str, limit: int, *, default: str | None = None,
              object_only: bool = False) -> str:
    """Validate a JSON payload of at most `limit` bytes; return it as text, unchanged. Empty:
    `default`, or an error when there is none.

    JSON here is RFC 8259 JSON: NaN and Infinity, which Python's json accepts by default, are
    refused (they are not JSON, and the dashboard and other clients cannot read them back), and
    so are documents nested deeper than MAX_JSON_DEPTH."""
    if not raw:
        if default is None:
            raise InvalidArgument(field, "required JSON payload is empty")
        return default
    if len(raw) > limit:
        raise InvalidArgument(field, f"{len(raw)} bytes exceeds the limit of {limit} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(field, f"malformed JSON ({exc})") from None
    value = parse_json(text, field)
    if object_only and not isinstance(value, dict):
        raise InvalidArgument(field, f"expected a JSON object, got {type(value).__name__}")
    return text


def parse_json(text: str | bytes, field: str) -> Any:
    """Parse RFC 8259 JSON (see json_text) without a size limit; errors name `field`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(field, f"malformed JSON ({exc})") from None
    _check_depth(text, field)
    try:
        return json.loads(text, parse_constant=_not_json)
    except _NotJson as exc:
        raise InvalidArgument(field, f"{exc.args[0]} is not JSON (RFC 8259 has no NaN or "
                                     "Infinity); send a number, null or a string") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(field, f"malformed JSON ({exc})") from None
    except RecursionError:  # not below MAX_JSON_DEPTH; a safety net for the parser's stack
        _too_deep(field)


class _NotJson(ValueError):
    pass


def _not_json(constant: str) -> NoReturn:
    raise _NotJson(constant)


# A whole JSON string (skipped: brackets inside it do not nest), or one bracket.
_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def _check_depth(text: str, field: str) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH before the parser recurses into it. A
    document with few brackets cannot be that deep and is not scanned: the common case costs
    two counts."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return
    depth = 0
    for match in _NESTING.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                _too_deep(field)
        elif char in "]}":
            depth -= 1


def _too_deep(field: str) -> NoReturn:
    raise InvalidArgument(field, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
