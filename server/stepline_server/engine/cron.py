"""Cron triggers: validating schedules, computing ticks in a time zone (daylight saving time
included), keeping the schedule rows in step with registrations, and the scheduler that fires
each tick exactly once, whatever the number of server processes, and once after a downtime."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from stepline_server.engine import pauses
from stepline_server.engine.starts import RunStart
from stepline_server.engine.timed import TimedLoop
from stepline_server.errors import InvalidArgument
from stepline_server.ids import now_ms
from stepline_server.limits import MAX_ID_LENGTH
from stepline_server.model import CronTrigger, EventRecord, FunctionSpec, policy_from_config
from stepline_server.store import Tx
from stepline_server.store import cron as cron_store
from stepline_server.store import events as event_store

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from stepline_server.engine.core import Engine

log = logging.getLogger(__name__)
activity = logging.getLogger("stepline.runs")

TICK_EVENT = "stepline/cron.tick"
DEFAULT_TIMEZONE = "UTC"
MAX_SCHEDULE_LENGTH = 256  # the columns of cron_schedules
MAX_TIMEZONE_LENGTH = 64
BATCH = 500  # due schedules fired per transaction
UNPAIRED_RUN = "(see flow control)"  # a tick's run when flow control skipped or folded some
CONTENDED_SECONDS = 0.1  # due rows another server is firing: look again this soon
BROKEN_RETRY_MS = 3600_000  # a row whose ticks cannot be computed is retried hourly
_PREFIX = re.compile(r"^(?:CRON_)?TZ=(\S*)(?: (.*))?$")
_ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
# Clocks change by a few hours at most: wall-clock order and time order differ only that close
# to a change, so a search looks that far around its bound.
_CHANGE_WINDOW = timedelta(hours=3)
_MAX_STEPS = 20_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- parsing ------------------------------------------------------------------------------------
def parse_cron(schedule: str, timezone: str, field: str) -> CronTrigger:
    """Validate a cron trigger and return it normalised: a `TZ=Zone ` (or `CRON_TZ=Zone `) prefix
    of the schedule becomes the time zone, blanks are collapsed, no zone means UTC. Errors name
    `<field>.schedule` or `<field>.timezone`."""
    text = " ".join(schedule.split())
    schedule_field, zone_field = f"{field}.schedule", f"{field}.timezone"
    prefix = _PREFIX.match(text)
    if prefix:
        named, text = prefix.group(1), prefix.group(2) or ""
        if not named:
            raise InvalidArgument(schedule_field, "the TZ= prefix names no time zone: expected "
                                                  "e.g. 'TZ=Europe/Paris 0 9 * * MON'")
        if timezone and timezone != named:
            raise InvalidArgument(zone_field, f"{timezone!r} differs from the schedule's "
                                              f"TZ={named} prefix: give the time zone once")
        timezone, zone_field = named, schedule_field
    if not text:
        raise InvalidArgument(schedule_field, "a cron schedule is required, e.g. '0 9 * * MON'")
    if len(text) > MAX_SCHEDULE_LENGTH:
        raise InvalidArgument(schedule_field, f"longer than {MAX_SCHEDULE_LENGTH} characters")
    timezone = timezone or DEFAULT_TIMEZONE
    _check_zone(timezone, zone_field)
    _check_schedule(text, schedule_field)
    return CronTrigger(text, timezone)


def _check_zone(name: str, field: str) -> None:
    expected = "expected an IANA time zone name such as 'Europe/Paris' or 'UTC'"
    if len(name) > MAX_TIMEZONE_LENGTH or name == "localtime":  # localtime: the host's zone
        raise InvalidArgument(field, f"{name[:80]!r} is not a time zone: {expected}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArgument(field, f"unknown time zone {name!r}: {expected}") from None


def _check_schedule(text: str, field: str) -> None:
    count = len(text.split(" "))
    if text.startswith("@"):
        if text.lower() not in _ALIASES:
            raise InvalidArgument(field, f"unknown cron alias {text!r}: expected one of "
                                         f"{', '.join(sorted(_ALIASES))}")
    elif count not in (5, 6):
        raise InvalidArgument(field, f"{text!r} has {count} fields: expected 5 (minute hour "
                                     "day-of-month month day-of-week), or 6 with seconds first")
    try:
        _iterator(text, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise InvalidArgument(field, f"{text!r} never matches a date") from None
    except (CroniterError, ValueError, KeyError, IndexError) as exc:
        raise InvalidArgument(field, f"invalid cron schedule {text!r}: {exc}") from None


def _iterator(schedule: str, start: datetime) -> croniter:
    # Six fields: seconds first, as in Quartz, Spring and most cron libraries with seconds.
    return croniter(schedule, start, ret_type=datetime, second_at_beginning=True)


# -- ticks --------------------------------------------------------------------------------------
def next_tick_ms(trigger: CronTrigger, after_ms: int) -> int:
    """The first tick strictly after `after_ms`."""
    return _search(trigger, after_ms, forward=True)


def last_tick_at_or_before(trigger: CronTrigger, now_ms: int) -> int:
    """The latest tick at or before `now_ms`."""
    return _search(trigger, now_ms, forward=False)


def _search(trigger: CronTrigger, bound_ms: int, *, forward: bool) -> int:
    """Walk the schedule's wall-clock times in the zone and map each to the instants it names.

    Like Vixie cron: a schedule with a wildcard hour follows real time (a repeated wall-clock
    hour runs twice, a skipped one not at all); one at set hours runs once per wall-clock time:
    at the first occurrence when clocks go back, at the change when they skip it.
    """
    zone = ZoneInfo(trigger.timezone)
    bound = _EPOCH + timedelta(milliseconds=bound_ms)
    # Near clocks going back, a wall-clock time before the bound's may still be ahead of it
    # (forward), or one after it already past (backward): start that much further.
    shift = _clock_drop(zone, bound, forward=forward)
    wall = bound.astimezone(zone).replace(tzinfo=None, microsecond=0)
    walls = _iterator(trigger.schedule, wall - shift if forward
                      else wall + shift + timedelta(seconds=1))
    real_time = walls.expanded[1] == ["*"]
    step = walls.get_next if forward else walls.get_prev
    best: datetime | None = None
    for _ in range(_MAX_STEPS):
        try:
            candidate: datetime = step(datetime)
        except CroniterBadDateError:
            break
        if best is not None:
            reach = best.astimezone(zone).replace(tzinfo=None)
            if candidate >= reach + shift if forward else candidate <= reach - shift:
                break
        for instant in _instants(candidate, zone, real_time=real_time):
            in_range = instant > bound if forward else instant <= bound
            closer = best is None or (instant < best if forward else instant > best)
            if in_range and closer:
                best = instant
    if best is None:
        raise ValueError(f"cron {trigger.schedule!r} has no tick "
                         f"{'after' if forward else 'before'} {bound.isoformat()}")
    return (best - _EPOCH) // timedelta(milliseconds=1)


def _clock_drop(zone: ZoneInfo, bound: datetime, *, forward: bool) -> timedelta:
    """How far clocks go back within the window after (forward) or before the bound."""
    other = bound + _CHANGE_WINDOW if forward else bound - _CHANGE_WINDOW
    earlier, later = (bound, other) if forward else (other, bound)
    drop = _offset(zone, earlier) - _offset(zone, later)
    return max(drop, timedelta(0))


def _offset(zone: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def _instants(wall: datetime, zone: ZoneInfo, *, real_time: bool) -> tuple[datetime, ...]:
    """The instants (UTC) a wall-clock time of the zone stands for in this schedule."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return (first,)
    if first.astimezone(zone).replace(tzinfo=None) == wall:  # clocks went back: it happens twice
        return (first, second) if real_time else (first,)
    # Clocks skipped it. Before the change `second` maps to an earlier time, `first` after.
    return () if real_time else (_change(zone, second, first, wall),)


def _change(zone: ZoneInfo, before: datetime, after: datetime, wall: datetime) -> datetime:
    """The instant clocks jumped over `wall`, between `before` and `after` (to the second)."""
    low, high = int(before.timestamp()), int(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) > wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def tick_event(function_id: str, position: int, trigger: CronTrigger, tick_ms: int
               ) -> EventRecord:
    """The event a tick starts its run with; its id makes a second firing of the tick a repeat."""
    event_id = f"cron:{function_id}:{position}:{tick_ms}"
    if len(event_id) > MAX_ID_LENGTH:
        digest = hashlib.sha256(function_id.encode()).hexdigest()[:40]
        event_id = f"cron:{digest}:{position}:{tick_ms}"
    tick = (_EPOCH + timedelta(milliseconds=tick_ms)).isoformat(timespec="seconds")
    data = {"cron": trigger.schedule, "timezone": trigger.timezone,
            "tick": tick.replace("+00:00", "Z"), "tick_ms": tick_ms}
    return EventRecord(id=event_id, name=TICK_EVENT, data=json.dumps(data), ts_ms=tick_ms)


# -- registration -------------------------------------------------------------------------------
def sync_schedules(conn: Connection, specs: list[FunctionSpec], now_ms: int) -> None:
    """Make the schedule rows of these functions match their cron triggers. A row whose schedule
    and zone are unchanged keeps its next tick, so registering again (each worker does when it
    connects) neither skips nor repeats a tick."""
    wanted = {(spec.id, position): trigger for spec in specs
              for position, trigger in enumerate(spec.triggers)
              if isinstance(trigger, CronTrigger)}
    existing = cron_store.of_functions(conn, [spec.id for spec in specs])
    kept = {(row.function_id, row.position) for row in existing
            if (trigger := wanted.get((row.function_id, row.position))) is not None
            and (row.schedule, row.timezone) == (trigger.schedule, trigger.timezone)}
    cron_store.delete_many(conn, [(row.function_id, row.position) for row in existing
                                  if (row.function_id, row.position) not in wanted])
    next_ticks: dict[CronTrigger, int] = {}  # many functions often share one schedule
    added: list[cron_store.Schedule] = []
    for (function_id, position), trigger in wanted.items():
        if (function_id, position) not in kept:
            if trigger not in next_ticks:
                next_ticks[trigger] = next_tick_ms(trigger, now_ms)
            added.append(cron_store.Schedule(function_id, position, trigger.schedule,
                                             trigger.timezone, next_ticks[trigger]))
    cron_store.upsert(conn, added)


def remove_schedules(conn: Connection, function_ids: list[str]) -> None:
    """Archived functions tick no more."""
    cron_store.delete_of_functions(conn, function_ids)


# -- the scheduler ------------------------------------------------------------------------------
@dataclass(slots=True)
class _Round:
    """What one transaction fired: (function id, position, tick, run id or None if a repeat)."""

    fired: list[tuple[str, int, int, str | None]] = field(default_factory=list)
    full: bool = False


class CronScheduler(TimedLoop):
    """One per server. Sleeps until the earliest next tick (at most `poll_seconds`, so schedules
    registered through other servers are seen) and fires what is due, one transaction a round.

    A round reads one index entry when nothing is due, whatever the number of schedules. A due
    row is locked while fired (other servers skip it) and moved to its next tick in the same
    transaction; the tick's event id is deterministic, so a tick never starts two runs. After a
    downtime only the last missed tick fires."""

    what = "cron scheduler round"

    def __init__(self, engine: Engine, poll_seconds: float) -> None:
        super().__init__(poll_seconds)
        self.engine = engine
        self._dedup_ms = int(engine.settings.event_dedup_seconds * 1000)

    async def _round(self) -> float:
        """Fire what is due; return how long to sleep."""
        next_tick = await self.engine.db.read(cron_store.next_tick)
        if next_tick is not None and next_tick <= now_ms():
            fired = await self.engine.write_with_starts(self._fire)
            _log_fired(fired)
            if fired.full:
                return 0.0
            next_tick = await self.engine.db.read(cron_store.next_tick)
        if next_tick is None:
            return self.poll_seconds
        delay = (next_tick - now_ms()) / 1000
        # Still due after firing: another server holds those rows right now.
        return CONTENDED_SECONDS if delay <= 0 else min(self.poll_seconds, delay)

    def _fire(self, tx: Tx, start: Callable[[list[RunStart]], list[str]]) -> _Round:
        now = now_ms()
        rows = cron_store.due(tx.conn, now, BATCH)
        archived: list[tuple[str, int]] = []
        next_ticks: dict[tuple[str, int], int] = {}
        ticks: list[tuple[cron_store.DueSchedule, EventRecord]] = []
        for row in rows:
            key = (row.function_id, row.position)
            if row.archived:
                archived.append(key)
                continue
            trigger = CronTrigger(row.schedule, row.timezone)
            try:
                tick = last_tick_at_or_before(trigger, now)
                next_ticks[key] = next_tick_ms(trigger, now)
            except (ValueError, KeyError, OSError):  # e.g. a zone missing from this host
                log.exception("cron %s[%d]: cannot compute the ticks of %r in %s; retrying in "
                              "an hour", row.function_id, row.position, row.schedule,
                              row.timezone)
                next_ticks[key] = now + BROKEN_RETRY_MS
                continue
            ticks.append((row, tick_event(row.function_id, row.position, trigger, tick)))
        cron_store.delete_many(tx.conn, archived)
        cron_store.advance(tx.conn, next_ticks)
        paused = pauses.skip_ticks(tx.conn, [row.function_id for row, _ in ticks])
        ticks = [(row, event) for row, event in ticks if row.function_id not in paused]
        events = [event for _, event in ticks]
        fresh = event_store.insert(tx.conn, events, now, self._dedup_ms) if events else []
        starts = [RunStart(function_id=row.function_id, policy=policy_from_config(row.config),
                           event=event)
                  for (row, event), new in zip(ticks, fresh, strict=True) if new]
        started = start(starts) if starts else []
        # Flow control may skip ticks or fold them into a queued run: then the runs no longer
        # pair with the ticks (the skips are recorded by flow control).
        run_ids = iter(started if len(started) == len(starts)
                       else [UNPAIRED_RUN] * len(starts))
        result = _Round(full=len(rows) >= BATCH)
        for (row, event), new in zip(ticks, fresh, strict=True):
            result.fired.append((row.function_id, row.position, event.ts_ms,
                                 next(run_ids) if new else None))
        return result


def _log_fired(fired: _Round) -> None:
    for function_id, position, tick_ms, run_id in fired.fired:
        tick = (_EPOCH + timedelta(milliseconds=tick_ms)).isoformat(timespec="seconds")
        if run_id is None:
            log.debug("cron %s[%d] tick %s already fired", function_id, position, tick)
        else:
            activity.info("cron %s[%d] tick %s: run %s", function_id, position, tick, run_id)
