"""Durations ("1h30m", seconds, timedelta) and points in time as the SDK accepts them."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from stepline._config import MAX_DURATION
from stepline.errors import InvalidUsageError

DurationLike = int | float | timedelta | str
"""Seconds (int or float), a timedelta, or a string such as "30s", "1h30m", "500ms", "2d"."""

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*")
_FORMS = ('seconds, a timedelta, or a string of numbers with units ms s m h d w, e.g. "30s", '
          '"1h30m", "500ms"')


def parse_duration(value: DurationLike, what: str, *, allow_zero: bool = False) -> timedelta:
    """`value` as a timedelta; InvalidUsageError (naming `what`) when it is not a valid one.

    Durations count in whole milliseconds, like the server's clock; a zero duration is refused
    unless `allow_zero`.
    """
    if isinstance(value, bool):  # a bool is an int, but never a duration
        raise InvalidUsageError(f"{what}: expected {_FORMS}; got {value!r}")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value, what)
    else:
        raise InvalidUsageError(f"{what}: expected {_FORMS}; got {value!r}")
    if math.isnan(seconds) or seconds < 0:
        raise InvalidUsageError(f"{what}: must not be negative; got {value!r}")
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidUsageError(
            f"{what}: {value!r} is longer than the limit of {MAX_DURATION.days} days")
    result = timedelta(milliseconds=round(seconds * 1000))
    if not allow_zero and not result:
        raise InvalidUsageError(f"{what}: must be at least 1ms; got {value!r}")
    return result


def _parse_text(text: str, what: str) -> float:
    position, seconds = 0, 0.0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position == 0 or position < len(text):
        raise InvalidUsageError(f"{what}: expected {_FORMS}; got {text!r}")
    return seconds


def parse_time(value: datetime | str, what: str) -> datetime:
    """`value` as a timezone-aware datetime: a datetime with a tzinfo, or ISO 8601 with an offset
    or Z. Naive times are refused: they would mean a different instant on each machine."""
    when = value
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidUsageError(
                f"{what}: expected an ISO 8601 time with an offset, e.g. "
                f'"2030-01-31T09:00:00Z"; got {value!r}') from None
    if not isinstance(when, datetime):
        raise InvalidUsageError(
            f"{what}: expected a timezone-aware datetime or an ISO 8601 string; got {value!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidUsageError(
            f"{what}: {value!r} has no time zone; give an aware datetime "
            "(e.g. datetime.now(UTC) + timedelta(hours=1)) or an ISO string with Z or an offset")
    return when


def duration_proto(value: timedelta) -> Duration:
    message = Duration()
    message.FromTimedelta(value)
    return message


def timestamp_proto(value: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(value)
    return message
