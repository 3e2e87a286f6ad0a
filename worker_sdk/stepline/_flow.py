"""Flow control options of `@app.function(...)` (concurrency, throttle, rate_limit, debounce,
priority, batch_events, idempotency, singleton): read, checked at decoration time with the
server's bounds (kept here because the SDK never imports the server), sent as FunctionConfig
fields 8-15."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Any, Literal, TypeVar

from stepline._durations import DurationLike, duration_proto, parse_duration
from stepline.errors import InvalidUsageError
from stepline.v1 import common_pb2

# The server's bounds (server/stepline_server/flow.py); the README documents them.
MAX_CONCURRENCY_LIMITS = 2
MAX_LIMIT = 100_000
MAX_THROTTLE_PERIOD = timedelta(days=7)
MAX_RATE_LIMIT_PERIOD = timedelta(days=1)
MIN_DEBOUNCE = timedelta(seconds=1)
MAX_DEBOUNCE = timedelta(days=7)
MAX_BATCH_SIZE = 1000
MIN_BATCH_TIMEOUT = timedelta(seconds=1)
MAX_BATCH_TIMEOUT = timedelta(minutes=10)
MAX_KEY_EXPRESSION = 1024
SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class Concurrency:
    """At most `limit` steps of the runs sharing a `key` (CEL over `event`) execute at once;
    sleeping and waiting runs hold no slot. `scope` "env" or "account" (the same here: one
    environment per server) shares the slots with every function using the same key value,
    and needs a key."""

    limit: int
    key: str | None = None
    scope: Literal["fn", "env", "account"] = "fn"


@dataclass(frozen=True)
class Throttle:
    """At most `limit` run starts per `period` per `key` (GCRA): `burst` more may start at once
    beyond the steady rate; the excess waits in order, nothing is dropped."""

    limit: int
    period: DurationLike
    burst: int = 1
    key: str | None = None


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` runs start per `period` per `key`; the events over it start none and are
    recorded as skips (`stepline skips`, the dashboard)."""

    limit: int
    period: DurationLike
    key: str | None = None


@dataclass(frozen=True)
class Debounce:
    """One run once the events of a `key` stop for `period`, with the last event; `timeout`
    caps the delay since the first."""

    period: DurationLike
    key: str | None = None
    timeout: DurationLike | None = None


@dataclass(frozen=True)
class Batch:
    """One run receives up to `max_size` events of a `key` (`ctx.events`), started when full or
    `timeout` after its first event."""

    max_size: int
    timeout: DurationLike
    key: str | None = None


@dataclass(frozen=True)
class Singleton:
    """One unfinished run per `key`: a new event starts nothing ("skip") or cancels the run in
    progress and starts a new one ("cancel")."""

    mode: Literal["skip", "cancel"] = "skip"
    key: str | None = None


@dataclass(frozen=True)
class Priority:
    """`run`: CEL over `event` giving seconds; the run is queued as if enqueued that much
    earlier (negative: later), clamped to +-600."""

    run: str


ConcurrencyLike = int | Concurrency | Mapping[str, Any]
PriorityLike = str | Priority


@dataclass(frozen=True)
class FlowOptions:
    """The checked flow control options of one function (durations as timedeltas)."""

    concurrency: tuple[Concurrency, ...] = ()
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    priority: str | None = None
    batch_events: Batch | None = None
    idempotency: str | None = None
    singleton: Singleton | None = None

    def add_to(self, config: common_pb2.FunctionConfig) -> None:
        """Set FunctionConfig fields 8-15."""
        for c in self.concurrency:
            config.concurrency.add(limit=c.limit, key=c.key or "", scope=_SCOPES[c.scope])
        if self.throttle is not None:
            t = self.throttle
            config.throttle.CopyFrom(common_pb2.Throttle(
                limit=t.limit, period=_proto(t.period), burst=t.burst, key=t.key or ""))
        if self.rate_limit is not None:
            r = self.rate_limit
            config.rate_limit.CopyFrom(common_pb2.RateLimit(
                limit=r.limit, period=_proto(r.period), key=r.key or ""))
        if self.debounce is not None:
            d = self.debounce
            config.debounce.CopyFrom(common_pb2.Debounce(period=_proto(d.period),
                                                         key=d.key or ""))
            if d.timeout is not None:
                config.debounce.timeout.CopyFrom(_proto(d.timeout))
        if self.priority:
            config.priority.run = self.priority
        if self.batch_events is not None:
            b = self.batch_events
            config.batch_events.CopyFrom(common_pb2.Batching(
                max_size=b.max_size, timeout=_proto(b.timeout), key=b.key or ""))
        if self.idempotency:
            config.idempotency = self.idempotency
        if self.singleton is not None:
            config.singleton.CopyFrom(common_pb2.Singleton(
                mode=_MODES[self.singleton.mode], key=self.singleton.key or ""))


_SCOPES = {"fn": common_pb2.Concurrency.SCOPE_FN, "env": common_pb2.Concurrency.SCOPE_ENV,
           "account": common_pb2.Concurrency.SCOPE_ACCOUNT}
_MODES = {"skip": common_pb2.Singleton.MODE_SKIP, "cancel": common_pb2.Singleton.MODE_CANCEL}


def _proto(value: DurationLike) -> Any:
    assert isinstance(value, timedelta)  # parse_flow made every duration a timedelta
    return duration_proto(value)


# -- reading and checking the options -----------------------------------------------------------
def parse_flow(*, concurrency: ConcurrencyLike | Sequence[ConcurrencyLike] | None,
               throttle: Throttle | Mapping[str, Any] | None,
               rate_limit: RateLimit | Mapping[str, Any] | None,
               debounce: Debounce | Mapping[str, Any] | None,
               priority: PriorityLike | Mapping[str, Any] | None,
               batch_events: Batch | Mapping[str, Any] | None,
               idempotency: str | None,
               singleton: Singleton | Mapping[str, Any] | None,
               has_cancel_on: bool, where: str) -> FlowOptions:
    """The options checked like the server checks them (flow.check): InvalidUsageError naming
    the option and its field."""
    options = FlowOptions(
        concurrency=_concurrency(concurrency, f"{where}: concurrency"),
        throttle=_throttle(throttle, f"{where}: throttle"),
        rate_limit=_rate_limit(rate_limit, f"{where}: rate_limit"),
        debounce=_debounce(debounce, f"{where}: debounce"),
        priority=_priority(priority, f"{where}: priority"),
        batch_events=_batch(batch_events, f"{where}: batch_events"),
        idempotency=_key(idempotency, f"{where}: idempotency"),
        singleton=_singleton(singleton, f"{where}: singleton"),
    )
    if options.batch_events is not None:
        for other, present in (("debounce", options.debounce is not None),
                               ("priority", options.priority is not None),
                               ("singleton", options.singleton is not None),
                               ("cancel_on", has_cancel_on)):
            if present:
                raise InvalidUsageError(
                    f"{where}: batch_events cannot be combined with {other}")
    return options


T = TypeVar("T")


def _record(value: Any, kind: type[T], what: str) -> T | None:
    """`value` as a `kind` instance: None, an instance, or a dict of its fields."""
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        allowed = {f.name for f in fields(kind)}  # type: ignore[arg-type]
        unknown = set(value) - allowed
        if unknown:
            raise InvalidUsageError(f"{what}: unknown key(s) {sorted(unknown)}; expected keys "
                                    f"among {sorted(allowed)}")
        try:
            return kind(**value)
        except TypeError:
            raise InvalidUsageError(f"{what}: missing a required key among "
                                    f"{sorted(allowed)}; got {dict(value)!r}") from None
    raise InvalidUsageError(f"{what}: expected stepline.{kind.__name__}(...) or a dict; got "
                            f"{value!r}")


def _int(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidUsageError(f"{what}: must be an integer between {low} and {high}; got "
                                f"{value!r}")
    return value


def _span(value: Any, low: timedelta, high: timedelta, what: str) -> timedelta:
    result = parse_duration(value, what)
    if not low <= result <= high:
        raise InvalidUsageError(f"{what}: must be between {_shown(low)} and {_shown(high)}; "
                                f"got {value!r}")
    return result


def _shown(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _key(value: Any, what: str) -> str | None:
    """A CEL expression over `event` (the server compiles it at registration)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidUsageError(f"{what}: expected a CEL expression over event, e.g. "
                                f'"event.data.customer_id"; got {value!r}')
    if len(value) > MAX_KEY_EXPRESSION:
        raise InvalidUsageError(f"{what}: at most {MAX_KEY_EXPRESSION} characters; got "
                                f"{len(value)}")
    return value


def _concurrency(value: Any, what: str) -> tuple[Concurrency, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(items) > MAX_CONCURRENCY_LIMITS:
        raise InvalidUsageError(f"{what}: at most {MAX_CONCURRENCY_LIMITS} limits; got "
                                f"{len(items)}")
    result = []
    for i, item in enumerate(items):
        where = what if len(items) == 1 and item is value else f"{what}[{i}]"
        if isinstance(item, int) and not isinstance(item, bool):
            item = Concurrency(item)
        c = _record(item, Concurrency, where)
        assert c is not None
        if c.scope not in _SCOPES:
            raise InvalidUsageError(f'{where}.scope: expected "fn", "env" or "account"; got '
                                    f"{c.scope!r}")
        key = _key(c.key, f"{where}.key")
        if c.scope != "fn" and key is None:
            raise InvalidUsageError(f"{where}.key: a key is required with scope {c.scope!r}")
        result.append(Concurrency(_int(c.limit, 1, MAX_LIMIT, f"{where}.limit"), key, c.scope))
    return tuple(result)


def _throttle(value: Any, what: str) -> Throttle | None:
    t = _record(value, Throttle, what)
    if t is None:
        return None
    return Throttle(_int(t.limit, 1, MAX_LIMIT, f"{what}.limit"),
                    _span(t.period, SECOND, MAX_THROTTLE_PERIOD, f"{what}.period"),
                    _int(t.burst, 0, MAX_LIMIT, f"{what}.burst"), _key(t.key, f"{what}.key"))


def _rate_limit(value: Any, what: str) -> RateLimit | None:
    r = _record(value, RateLimit, what)
    if r is None:
        return None
    return RateLimit(_int(r.limit, 1, MAX_LIMIT, f"{what}.limit"),
                     _span(r.period, SECOND, MAX_RATE_LIMIT_PERIOD, f"{what}.period"),
                     _key(r.key, f"{what}.key"))


def _debounce(value: Any, what: str) -> Debounce | None:
    d = _record(value, Debounce, what)
    if d is None:
        return None
    period = _span(d.period, MIN_DEBOUNCE, MAX_DEBOUNCE, f"{what}.period")
    timeout = (None if d.timeout is None
               else _span(d.timeout, period, MAX_DEBOUNCE, f"{what}.timeout"))
    return Debounce(period, _key(d.key, f"{what}.key"), timeout)


def _priority(value: Any, what: str) -> str | None:
    if isinstance(value, Mapping):
        value = _record(value, Priority, what)
    if isinstance(value, Priority):
        return _key(value.run, f"{what}.run")
    return _key(value, what)


def _batch(value: Any, what: str) -> Batch | None:
    b = _record(value, Batch, what)
    if b is None:
        return None
    return Batch(_int(b.max_size, 2, MAX_BATCH_SIZE, f"{what}.max_size"),
                 _span(b.timeout, MIN_BATCH_TIMEOUT, MAX_BATCH_TIMEOUT, f"{what}.timeout"),
                 _key(b.key, f"{what}.key"))


def _singleton(value: Any, what: str) -> Singleton | None:
    s = _record(value, Singleton, what)
    if s is None:
        return None
    if s.mode not in _MODES:
        raise InvalidUsageError(f'{what}.mode: expected "skip" or "cancel"; got {s.mode!r}')
    return replace(s, key=_key(s.key, f"{what}.key"))
