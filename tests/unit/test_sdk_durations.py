"""The SDK's durations ("1h30m", seconds, timedelta) and points in time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from stepline import InvalidUsageError, NonRetriableError
from stepline._durations import duration_proto, parse_duration, parse_time, timestamp_proto


@pytest.mark.parametrize(("value", "expected"), [
    ("30s", timedelta(seconds=30)),
    ("24h", timedelta(hours=24)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("500ms", timedelta(milliseconds=500)),
    ("2d", timedelta(days=2)),
    ("1w", timedelta(weeks=1)),
    (" 1h 30m 15s ", timedelta(hours=1, minutes=30, seconds=15)),
    ("1m500ms", timedelta(minutes=1, milliseconds=500)),
    ("1.5h", timedelta(minutes=90)),
    (30, timedelta(seconds=30)),
    (0.25, timedelta(milliseconds=250)),
    (timedelta(minutes=5), timedelta(minutes=5)),
])
def test_duration_forms(value: Any, expected: timedelta) -> None:
    assert parse_duration(value, "timeout") == expected


@pytest.mark.parametrize("value", [
    "", "soon", "5", "5 parsecs", "-5s", "1h-30m", "h", "1H", "5s later", True, None, [5],
    float("nan"), -1, timedelta(seconds=-1),
])
def test_bad_durations_name_the_argument_and_the_value(value: Any) -> None:
    with pytest.raises(InvalidUsageError) as info:
        parse_duration(value, "step 'nap': duration")
    message = str(info.value)
    assert message.startswith("step 'nap': duration: ")
    assert repr(value) in message


def test_invalid_usage_is_non_retriable_and_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_duration("soon", "timeout")
    assert issubclass(InvalidUsageError, NonRetriableError)


def test_zero_is_only_allowed_where_asked() -> None:
    assert parse_duration(0, "duration", allow_zero=True) == timedelta(0)
    assert parse_duration("0s", "duration", allow_zero=True) == timedelta(0)
    with pytest.raises(InvalidUsageError, match=r"^timeout: must be at least 1ms; got 0$"):
        parse_duration(0, "timeout")
    with pytest.raises(InvalidUsageError, match="at least 1ms"):
        parse_duration(0.0001, "timeout")  # rounds to 0 ms


def test_durations_longer_than_the_servers_limit_are_refused() -> None:
    assert parse_duration("52w", "d") == timedelta(weeks=52)
    with pytest.raises(InvalidUsageError, match="longer than the limit of 366 days"):
        parse_duration("53w", "d")
    with pytest.raises(InvalidUsageError, match="longer than"):
        parse_duration(float("inf"), "d")


def test_duration_proto_in_milliseconds() -> None:
    assert duration_proto(parse_duration("1m500ms", "d")).ToMilliseconds() == 60_500


def test_times_must_be_aware() -> None:
    paris = timezone(timedelta(hours=1))
    aware = datetime(2030, 1, 31, 9, 0, tzinfo=paris)
    assert parse_time(aware, "when") == aware
    assert parse_time("2030-01-31T08:00:00Z", "when") == aware
    assert parse_time("2030-01-31T09:00:00+01:00", "when") == aware
    assert timestamp_proto(aware).ToDatetime(tzinfo=UTC) == aware
    with pytest.raises(InvalidUsageError, match=r"^when: .*has no time zone"):
        parse_time(datetime(2030, 1, 31, 9, 0), "when")
    with pytest.raises(InvalidUsageError, match=r"^when: '2030-01-31T09:00:00' has no time zone"):
        parse_time("2030-01-31T09:00:00", "when")
    with pytest.raises(InvalidUsageError, match=r"^when: expected an ISO 8601 .*got 'tomorrow'"):
        parse_time("tomorrow", "when")
    with pytest.raises(InvalidUsageError, match=r"^when: expected a timezone-aware"):
        parse_time(1234567890, "when")  # type: ignore[arg-type]
