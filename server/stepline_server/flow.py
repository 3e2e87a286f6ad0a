"""Flow control settings of a function: what it declares, checked once at registration, stored
in its config JSON, read back into every run start (RunPolicy.flow). Shared by wire (the
proto), the bridge (Inngest apps' config) and the engine, which enforces them (engine/flow*.py).

Every key, the priority and the idempotency key are CEL over `event`, the run's trigger. Times
are in milliseconds. The bounds below are the ones the README documents.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from stepline_server.errors import InvalidArgument

SECOND_MS = 1000
DAY_MS = 86_400_000
MAX_CONCURRENCY_LIMITS = 2
MAX_CONCURRENCY = 100_000
MAX_THROTTLE_PERIOD_MS = 7 * DAY_MS
MAX_RATE_LIMIT_PERIOD_MS = DAY_MS
MIN_DEBOUNCE_MS = SECOND_MS
MAX_DEBOUNCE_MS = 7 * DAY_MS
MAX_BATCH_SIZE = 1000
MIN_BATCH_TIMEOUT_MS = SECOND_MS
MAX_BATCH_TIMEOUT_MS = 10 * 60 * SECOND_MS
MAX_PRIORITY_SECONDS = 600
IDEMPOTENCY_WINDOW_MS = DAY_MS
MAX_KEY_EXPRESSION = 1024


class Scope(enum.StrEnum):
    FN = "fn"  # the function's own runs
    ENV = "env"  # every function of the server using the same key value
    ACCOUNT = "account"  # the same as env: one environment per server


class SingletonMode(enum.StrEnum):
    SKIP = "skip"  # a new event while a run of its key is unfinished starts nothing
    CANCEL = "cancel"  # it cancels that run and starts a new one


class SkipReason(enum.StrEnum):
    RATE_LIMIT = "rate_limit"
    IDEMPOTENCY = "idempotency"
    SINGLETON = "singleton"


@dataclass(frozen=True, slots=True, kw_only=True)
class Concurrency:
    limit: int
    key: str = ""
    scope: Scope = Scope.FN


@dataclass(frozen=True, slots=True, kw_only=True)
class Throttle:
    limit: int
    period_ms: int
    burst: int = 1
    key: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    limit: int
    period_ms: int
    key: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Debounce:
    period_ms: int
    key: str = ""
    timeout_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Batching:
    max_size: int
    timeout_ms: int
    key: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Singleton:
    mode: SingletonMode
    key: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowControl:
    concurrency: tuple[Concurrency, ...] = ()
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    priority: str = ""  # CEL -> seconds, clamped to +-MAX_PRIORITY_SECONDS
    batching: Batching | None = None
    idempotency: str = ""  # CEL -> key; at most one run per key per IDEMPOTENCY_WINDOW_MS
    singleton: Singleton | None = None

    def __bool__(self) -> bool:
        return bool(self.concurrency or self.throttle or self.rate_limit or self.debounce
                    or self.priority or self.batching or self.idempotency or self.singleton)

    # -- the stored form (the "flow" member of a function's config JSON) -------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.concurrency:
            out["concurrency"] = [{"limit": c.limit, "key": c.key, "scope": c.scope.value}
                                  for c in self.concurrency]
        if self.throttle:
            t = self.throttle
            out["throttle"] = {"limit": t.limit, "period_ms": t.period_ms, "burst": t.burst,
                               "key": t.key}
        if self.rate_limit:
            r = self.rate_limit
            out["rate_limit"] = {"limit": r.limit, "period_ms": r.period_ms, "key": r.key}
        if self.debounce:
            d = self.debounce
            out["debounce"] = {"period_ms": d.period_ms, "key": d.key,
                               "timeout_ms": d.timeout_ms}
        if self.priority:
            out["priority"] = self.priority
        if self.batching:
            b = self.batching
            out["batching"] = {"max_size": b.max_size, "timeout_ms": b.timeout_ms, "key": b.key}
        if self.idempotency:
            out["idempotency"] = self.idempotency
        if self.singleton:
            out["singleton"] = {"mode": self.singleton.mode.value, "key": self.singleton.key}
        return out

    @staticmethod
    def from_json(data: dict[str, Any] | None) -> FlowControl:
        if not data:
            return NO_FLOW
        throttle = data.get("throttle")
        rate = data.get("rate_limit")
        debounce = data.get("debounce")
        batching = data.get("batching")
        singleton = data.get("singleton")
        return FlowControl(
            concurrency=tuple(Concurrency(limit=int(c["limit"]), key=c.get("key") or "",
                                          scope=Scope(c.get("scope") or "fn"))
                              for c in data.get("concurrency") or ()),
            throttle=None if not throttle else Throttle(
                limit=int(throttle["limit"]), period_ms=int(throttle["period_ms"]),
                burst=int(throttle.get("burst", 1)), key=throttle.get("key") or ""),
            rate_limit=None if not rate else RateLimit(
                limit=int(rate["limit"]), period_ms=int(rate["period_ms"]),
                key=rate.get("key") or ""),
            debounce=None if not debounce else Debounce(
                period_ms=int(debounce["period_ms"]), key=debounce.get("key") or "",
                timeout_ms=debounce.get("timeout_ms")),
            priority=data.get("priority") or "",
            batching=None if not batching else Batching(
                max_size=int(batching["max_size"]), timeout_ms=int(batching["timeout_ms"]),
                key=batching.get("key") or ""),
            idempotency=data.get("idempotency") or "",
            singleton=None if not singleton else Singleton(
                mode=SingletonMode(singleton["mode"]), key=singleton.get("key") or ""),
        )

    def describe(self) -> list[str]:
        """One line per setting, for listings (CLI, dashboard)."""
        lines: list[str] = []
        for c in self.concurrency:
            lines.append(f"concurrency {c.limit}" + _keyed(c.key)
                         + ("" if c.scope is Scope.FN else f" (scope {c.scope.value})"))
        if self.throttle:
            t = self.throttle
            lines.append(f"throttle {t.limit} per {_duration(t.period_ms)}, burst {t.burst}"
                         + _keyed(t.key))
        if self.rate_limit:
            r = self.rate_limit
            lines.append(f"rate limit {r.limit} per {_duration(r.period_ms)}" + _keyed(r.key))
        if self.debounce:
            d = self.debounce
            lines.append(f"debounce {_duration(d.period_ms)}" + _keyed(d.key)
                         + ("" if d.timeout_ms is None
                            else f", timeout {_duration(d.timeout_ms)}"))
        if self.priority:
            lines.append(f"priority {self.priority}")
        if self.batching:
            b = self.batching
            lines.append(f"batch {b.max_size} events or {_duration(b.timeout_ms)}"
                         + _keyed(b.key))
        if self.idempotency:
            lines.append(f"idempotency {self.idempotency}")
        if self.singleton:
            lines.append(f"singleton ({self.singleton.mode.value})" + _keyed(self.singleton.key))
        return lines


NO_FLOW = FlowControl()


def _keyed(key: str) -> str:
    return f" by {key}" if key else ""


def _duration(ms: int) -> str:
    for unit, size in (("d", DAY_MS), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


# -- checks at registration (the same for every source: proto, Inngest config) ------------------
def check(flow: FlowControl, path: str, *, has_cancel_on: bool = False) -> FlowControl:
    """Refuse invalid values and combinations with InvalidArgument naming the field
    (`path` + "." + the proto field name). CEL is compiled by wire.check_flow_control."""
    if len(flow.concurrency) > MAX_CONCURRENCY_LIMITS:
        raise InvalidArgument(f"{path}.concurrency",
                              f"at most {MAX_CONCURRENCY_LIMITS} limits, got "
                              f"{len(flow.concurrency)}")
    for i, c in enumerate(flow.concurrency):
        field = f"{path}.concurrency[{i}]"
        _between(c.limit, 1, MAX_CONCURRENCY, f"{field}.limit")
        if c.scope is not Scope.FN and not c.key:
            raise InvalidArgument(f"{field}.key",
                                  f"a key is required with scope {c.scope.value}")
    _check_rates(flow, path)
    if flow.debounce is not None:
        d = flow.debounce
        _duration_between(d.period_ms, MIN_DEBOUNCE_MS, MAX_DEBOUNCE_MS,
                          f"{path}.debounce.period")
        if d.timeout_ms is not None:
            _duration_between(d.timeout_ms, d.period_ms, MAX_DEBOUNCE_MS,
                              f"{path}.debounce.timeout")
    if flow.batching is not None:
        _check_batching(flow, flow.batching, path, has_cancel_on=has_cancel_on)
    return flow


def _check_rates(flow: FlowControl, path: str) -> None:
    if flow.throttle is not None:
        t = flow.throttle
        _between(t.limit, 1, MAX_CONCURRENCY, f"{path}.throttle.limit")
        _duration_between(t.period_ms, SECOND_MS, MAX_THROTTLE_PERIOD_MS,
                          f"{path}.throttle.period")
        _between(t.burst, 0, MAX_CONCURRENCY, f"{path}.throttle.burst")
    if flow.rate_limit is not None:
        r = flow.rate_limit
        _between(r.limit, 1, MAX_CONCURRENCY, f"{path}.rate_limit.limit")
        _duration_between(r.period_ms, SECOND_MS, MAX_RATE_LIMIT_PERIOD_MS,
                          f"{path}.rate_limit.period")


def _check_batching(flow: FlowControl, b: Batching, path: str, *, has_cancel_on: bool) -> None:
    field = f"{path}.batch_events"
    _between(b.max_size, 2, MAX_BATCH_SIZE, f"{field}.max_size")
    _duration_between(b.timeout_ms, MIN_BATCH_TIMEOUT_MS, MAX_BATCH_TIMEOUT_MS,
                      f"{field}.timeout")
    for other, present in (("debounce", flow.debounce is not None),
                           ("priority", bool(flow.priority)),
                           ("singleton", flow.singleton is not None),
                           ("cancel_on", has_cancel_on)):
        if present:
            raise InvalidArgument(field, f"batching cannot be combined with {other}")


def _between(value: int, low: int, high: int, field: str) -> None:
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high}, got {value}")


def _duration_between(value: int, low: int, high: int, field: str) -> None:
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {_duration(low)} and {_duration(high)}, "
                                     f"got {value} ms")


def expressions_of(flow: FlowControl, path: str) -> list[tuple[str, str]]:
    """(CEL source, field) of every expression in the settings, for the compiler."""
    found: list[tuple[str, str]] = []
    for i, c in enumerate(flow.concurrency):
        found.append((c.key, f"{path}.concurrency[{i}].key"))
    for name, setting in (("throttle", flow.throttle), ("rate_limit", flow.rate_limit),
                          ("debounce", flow.debounce), ("batch_events", flow.batching),
                          ("singleton", flow.singleton)):
        if setting is not None:
            found.append((setting.key, f"{path}.{name}.key"))
    found.append((flow.priority, f"{path}.priority.run"))
    found.append((flow.idempotency, f"{path}.idempotency"))
    return [(source, field) for source, field in found if source]
