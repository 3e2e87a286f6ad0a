"""Cron triggers: parsing and validation, ticks in a time zone across DST, the missed tick."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from stepline_server.engine.cron import (
    TICK_EVENT,
    last_tick_at_or_before,
    next_tick_ms,
    parse_cron,
    tick_event,
)
from stepline_server.errors import InvalidArgument
from stepline_server.model import CronTrigger

FIELD = "functions[0].triggers[1].cron"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def iso(value: int) -> str:
    return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ticks(schedule: str, zone: str, after: str, count: int) -> list[str]:
    """The next `count` ticks after `after`, checking that the backward search agrees."""
    trigger = CronTrigger(schedule, zone)
    found: list[str] = []
    at = ms(after)
    for _ in range(count):
        tick = next_tick_ms(trigger, at)
        assert last_tick_at_or_before(trigger, tick) == tick
        assert last_tick_at_or_before(trigger, tick - 1) <= at
        found.append(iso(tick))
        at = tick
    return found


# -- parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("schedule", "zone", "expected"), [
    ("0 9 * * MON", "", CronTrigger("0 9 * * MON", "UTC")),
    ("  0   9 * *  MON ", "Europe/Paris", CronTrigger("0 9 * * MON", "Europe/Paris")),
    ("TZ=Europe/Paris 0 9 * * MON", "", CronTrigger("0 9 * * MON", "Europe/Paris")),
    ("CRON_TZ=America/New_York 30 8 * * 1-5", "America/New_York",
     CronTrigger("30 8 * * 1-5", "America/New_York")),
    ("* * * * * *", "", CronTrigger("* * * * * *", "UTC")),
    ("*/10 * * * * *", "UTC", CronTrigger("*/10 * * * * *", "UTC")),
    ("@daily", "Asia/Tokyo", CronTrigger("@daily", "Asia/Tokyo")),
    ("0 0 L * *", "", CronTrigger("0 0 L * *", "UTC")),
])
def test_parse_normalises(schedule: str, zone: str, expected: CronTrigger) -> None:
    assert parse_cron(schedule, zone, FIELD) == expected


@pytest.mark.parametrize(("schedule", "zone", "field", "words"), [
    ("61 * * * *", "", "schedule", "out of range"),
    ("0 25 * * *", "", "schedule", "out of range"),
    ("* * *", "", "schedule", "3 fields"),
    ("* * * * * * 2030", "", "schedule", "7 fields"),
    ("0 0 31 2 *", "", "schedule", "never matches"),
    ("", "", "schedule", "required"),
    ("TZ=Europe/Paris", "", "schedule", "required"),
    ("TZ= 0 9 * * MON", "", "schedule", "names no time zone"),
    ("@reboot", "", "schedule", "unknown cron alias"),
    ("H * * * *", "", "schedule", "invalid cron schedule"),
    ("0 9 * * FUNDAY", "", "schedule", "invalid cron schedule"),
    ("x" * 300, "", "schedule", "longer than 256"),
    ("0 9 * * MON", "Mars/Olympus_Mons", "timezone", "unknown time zone 'Mars/Olympus_Mons'"),
    ("0 9 * * MON", "europe/paris", "timezone", "unknown time zone"),
    ("0 9 * * MON", "Europe", "timezone", "unknown time zone"),
    ("0 9 * * MON", "../../etc/passwd", "timezone", "unknown time zone"),
    ("0 9 * * MON", "localtime", "timezone", "not a time zone"),
    ("TZ=Nowhere/Land 0 9 * * MON", "", "schedule", "unknown time zone 'Nowhere/Land'"),
    ("TZ=Europe/Paris 0 9 * * MON", "UTC", "timezone", "differs from the schedule's TZ="),
])
def test_bad_input_names_the_field(schedule: str, zone: str, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_cron(schedule, zone, FIELD)
    assert caught.value.field == f"{FIELD}.{field}"
    assert str(caught.value).startswith(f"{FIELD}.{field}: ")
    assert words in str(caught.value)


def test_prefix_and_same_zone_field_agree() -> None:
    assert parse_cron("TZ=UTC 0 9 * * *", "UTC", FIELD) == CronTrigger("0 9 * * *", "UTC")


# -- ticks ---------------------------------------------------------------------------------------
def test_seconds_field_comes_first() -> None:
    assert ticks("*/20 * * * * *", "UTC", "2024-05-01T12:00:00.500+00:00", 3) == [
        "2024-05-01T12:00:20Z", "2024-05-01T12:00:40Z", "2024-05-01T12:01:00Z"]
    assert ticks("* * * * * *", "UTC", "2024-05-01T12:00:00.999+00:00", 2) == [
        "2024-05-01T12:00:01Z", "2024-05-01T12:00:02Z"]


def test_next_tick_is_strictly_after() -> None:
    trigger = CronTrigger("0 * * * *", "UTC")
    assert iso(next_tick_ms(trigger, ms("2024-05-01T12:00:00+00:00"))) == "2024-05-01T13:00:00Z"
    assert iso(next_tick_ms(trigger, ms("2024-05-01T11:59:59.999+00:00"))) == (
        "2024-05-01T12:00:00Z")


def test_weekly_schedule_follows_the_zone_across_dst() -> None:
    # 09:00 in Paris is 08:00 UTC in winter (CET) and 07:00 UTC in summer (CEST).
    assert ticks("0 9 * * MON", "Europe/Paris", "2024-03-20T00:00:00+00:00", 3) == [
        "2024-03-25T08:00:00Z", "2024-04-01T07:00:00Z", "2024-04-08T07:00:00Z"]
    assert ticks("0 9 * * *", "America/New_York", "2024-11-02T00:00:00+00:00", 2) == [
        "2024-11-02T13:00:00Z", "2024-11-03T14:00:00Z"]


def test_skipped_wall_clock_time_fires_once_at_the_change() -> None:
    # 2024-03-31 in Paris: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 does not exist.
    assert ticks("30 2 * * *", "Europe/Paris", "2024-03-30T00:00:00+00:00", 3) == [
        "2024-03-30T01:30:00Z", "2024-03-31T01:00:00Z", "2024-04-01T00:30:00Z"]
    # Two skipped times collapse into the one instant.
    assert ticks("0,30 2 * * *", "Europe/Paris", "2024-03-30T12:00:00+00:00", 2) == [
        "2024-03-31T01:00:00Z", "2024-04-01T00:00:00Z"]


def test_repeated_wall_clock_time_fires_once_for_set_hours() -> None:
    # 2024-10-27 in Paris: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    assert ticks("30 2 * * *", "Europe/Paris", "2024-10-26T00:00:00+00:00", 3) == [
        "2024-10-26T00:30:00Z", "2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z"]


def test_wildcard_hour_follows_real_time_across_dst() -> None:
    # Every half hour of real time: the repeated hour runs twice, the skipped one not at all.
    assert ticks("*/30 * * * *", "Europe/Paris", "2024-10-26T23:45:00+00:00", 5) == [
        "2024-10-27T00:00:00Z", "2024-10-27T00:30:00Z", "2024-10-27T01:00:00Z",
        "2024-10-27T01:30:00Z", "2024-10-27T02:00:00Z"]
    assert ticks("*/30 * * * *", "Europe/Paris", "2024-03-31T00:15:00+00:00", 3) == [
        "2024-03-31T00:30:00Z", "2024-03-31T01:00:00Z", "2024-03-31T01:30:00Z"]


def test_search_from_inside_the_repeated_hour() -> None:
    every_ten = CronTrigger("*/10 * * * *", "Europe/Paris")
    # 00:50 UTC is 02:50 CEST, the first pass: the next tick is 03:00 CEST... which is 02:00
    # CET, the start of the second pass, 01:00 UTC.
    assert iso(next_tick_ms(every_ten, ms("2024-10-27T00:50:00+00:00"))) == (
        "2024-10-27T01:00:00Z")
    # 01:05 UTC is 02:05 CET, the second pass: the last tick is 02:00 CET, not 02:50 CEST.
    assert iso(last_tick_at_or_before(every_ten, ms("2024-10-27T01:05:00+00:00"))) == (
        "2024-10-27T01:00:00Z")
    daily = CronTrigger("50 2 * * *", "Europe/Paris")
    assert iso(last_tick_at_or_before(daily, ms("2024-10-27T01:55:00+00:00"))) == (
        "2024-10-27T00:50:00Z")


def test_a_long_downtime_yields_only_the_last_missed_tick() -> None:
    trigger = CronTrigger("*/5 * * * *", "UTC")
    due = ms("2024-05-01T12:05:00+00:00")  # the row's next tick when the server went down
    back = ms("2024-05-03T08:17:42+00:00")
    assert iso(last_tick_at_or_before(trigger, back)) == "2024-05-03T08:15:00Z"
    assert last_tick_at_or_before(trigger, back) >= due
    assert iso(next_tick_ms(trigger, back)) == "2024-05-03T08:20:00Z"


@pytest.mark.parametrize("zone", ["Europe/Paris", "America/New_York", "Australia/Lord_Howe"])
@pytest.mark.parametrize("window", [("2024-03-08", "2024-04-09"), ("2024-10-04", "2024-11-05")])
def test_backward_and_forward_agree_across_dst(zone: str, window: tuple[str, str]) -> None:
    for schedule in ("30 2 * * *", "15 1,2,3 * * SUN", "0 */6 * * *", "45 * * * *"):
        trigger = CronTrigger(schedule, zone)
        at = ms(f"{window[0]}T00:00:00+00:00")
        end = ms(f"{window[1]}T00:00:00+00:00")
        while at < end:
            tick = next_tick_ms(trigger, at)
            assert tick > at
            assert last_tick_at_or_before(trigger, tick) == tick
            assert last_tick_at_or_before(trigger, tick - 1) <= at, (schedule, iso(tick))
            at = tick


def test_tick_event() -> None:
    trigger = CronTrigger("0 9 * * MON", "Europe/Paris")
    event = tick_event("report", 1, trigger, ms("2024-04-01T07:00:00+00:00"))
    assert event.id == f"cron:report:1:{ms('2024-04-01T07:00:00+00:00')}"
    assert event.name == TICK_EVENT
    assert event.ts_ms == ms("2024-04-01T07:00:00+00:00")
    assert json.loads(event.data) == {"cron": "0 9 * * MON", "timezone": "Europe/Paris",
                                      "tick": "2024-04-01T07:00:00Z",
                                      "tick_ms": event.ts_ms}
    long = tick_event("f" * 128, 0, trigger, event.ts_ms)
    assert len(long.id) <= 128
    assert long.id != tick_event("f" * 127 + "g", 0, trigger, event.ts_ms).id
