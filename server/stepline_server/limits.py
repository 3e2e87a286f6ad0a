"""Limits on what clients send, and the checks that enforce them, for every edge (the gRPC
services, the worker stream, the HTTP API). Each error names the field that is wrong."""

from __future__ import annotations

import json
import re

from stepline_server.errors import InvalidArgument

# Ids of apps and of functions within their app: what fits the columns and reads well in a URL.
# Neither holds ':', the separator of a function's full name "<app_id>:<function_id>"
# (names.py); app ids are slugs.
APP_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FUNCTION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./@-]*$")
MAX_ID_LENGTH = 128
# Names of events and functions.
MAX_NAME_LENGTH = 256
# Step ids are derived from step names by the SDKs ("name", "name:1", ...).
MAX_STEP_ID_LENGTH = 300
# Durations (timeouts, sleeps): a year is plenty, and keeps due times far from overflow.
MAX_DURATION_MS = 366 * 24 * 3600 * 1000


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
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"longer than {MAX_ID_LENGTH} characters")


def check_name(value: str, field: str, what: str = "event name") -> None:
    """A required name: an event's (by default) or a trigger's."""
    if not value:
        raise InvalidArgument(field, f"{what} is required")
    check_length(value, field)


def check_length(value: str, field: str, limit: int = MAX_NAME_LENGTH) -> None:
    if len(value) > limit:
        raise InvalidArgument(field, f"longer than {limit} characters")


def check_step_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "step id is required")
    check_length(value, field, MAX_STEP_ID_LENGTH)


def json_text(raw: bytes, field: str, limit: int, *, default: str | None = None,
              object_only: bool = False) -> str:
    """Validate a JSON payload of at most `limit` bytes; return it as text, unchanged. Empty:
    `default`, or an error when there is none."""
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
