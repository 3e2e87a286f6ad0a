"""An Inngest function config's flow control fields (`concurrency`, `throttle`, `rateLimit`,
`debounce`, `priority`, `batchEvents`, `idempotency`, `singleton`) as Stepline's own settings
(flow.FlowControl), checked like every other source (wire.check_flow_control) with the field
named in the SDKs' spelling.

Inngest's bounds that differ from Stepline's follow flow.py (the README lists them): e.g. the
priority is clamped to +-600 s, not Inngest's +-12 h, and a batch may wait up to 10 minutes.
"""

from __future__ import annotations

from typing import Any

from stepline_server import flow, wire
from stepline_server.bridge.inngest_wire import duration_ms
from stepline_server.errors import InvalidArgument

# flow.check names fields as the proto does; the SDKs' names for the same fields.
_SPELLING = (("rate_limit", "rateLimit"), ("batch_events", "batchEvents"),
             ("max_size", "maxSize"))
# A batch's timeout when the app gives none: Inngest's default.
BATCH_TIMEOUT = "60s"


def flow_control(fn: dict[str, Any], path: str, *, has_cancel_on: bool) -> flow.FlowControl:
    """The settings of one function config, or InvalidArgument naming the field."""
    settings = flow.FlowControl(
        concurrency=_concurrency(fn.get("concurrency"), f"{path}.concurrency"),
        throttle=_throttle(fn.get("throttle"), f"{path}.throttle"),
        rate_limit=_rate_limit(fn.get("rateLimit"), f"{path}.rateLimit"),
        debounce=_debounce(fn.get("debounce"), f"{path}.debounce"),
        priority=_text(_member(fn.get("priority"), f"{path}.priority").get("run"),
                       f"{path}.priority.run"),
        batching=_batching(fn.get("batchEvents"), f"{path}.batchEvents"),
        idempotency=_text(fn.get("idempotency"), f"{path}.idempotency"),
        singleton=_singleton(fn.get("singleton"), f"{path}.singleton"))
    try:
        return wire.check_flow_control(settings, path, has_cancel_on=has_cancel_on)
    except InvalidArgument as exc:
        field = exc.field
        for ours, theirs in _SPELLING:
            field = field.replace(f".{ours}", f".{theirs}")
        problem = str(exc)[len(exc.field) + 2:].replace("with cancel_on", "with cancel")
        raise InvalidArgument(field, problem) from None


def _member(raw: Any, field: str) -> dict[str, Any]:
    """An optional object setting ({} when absent)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument(field, f"expected an object, got {raw!r}")
    return raw


def _int(raw: dict[str, Any], name: str, field: str, default: int | None = None) -> int:
    value = raw.get(name, default)
    if value is None and default is not None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{field}.{name}", f"expected an integer, got {value!r}")
    return value


def _text(raw: Any, field: str) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise InvalidArgument(field, f"expected a CEL expression (a string), got {raw!r}")
    return raw


def _period(raw: dict[str, Any], name: str, field: str, default: str | None = None) -> int:
    """A duration string ("1m", "30s", "1h30m") in milliseconds; the Python SDK sends whole
    seconds with the largest unit, the TypeScript one what the app wrote."""
    value = raw.get(name) or default
    ms = duration_ms(value) if isinstance(value, str) else None
    if ms is None:
        raise InvalidArgument(f"{field}.{name}",
                              f"expected a duration such as '30s', '1m' or '1h', got {value!r}")
    return ms


def _concurrency(raw: Any, field: str) -> tuple[flow.Concurrency, ...]:
    """A number (one limit for the function), one {limit, key?, scope?} or a list of them."""
    if raw is None:
        return ()
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [{"limit": raw}]
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise InvalidArgument(field, f"expected a number, a limit or a list of limits, got "
                                     f"{raw!r}")
    limits = []
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        item = _member(item, where)
        scope = item.get("scope") or "fn"
        if scope not in {s.value for s in flow.Scope}:
            raise InvalidArgument(f"{where}.scope",
                                  f"expected 'fn', 'env' or 'account', got {scope!r}")
        limits.append(flow.Concurrency(limit=_int(item, "limit", where),
                                       key=_text(item.get("key"), f"{where}.key"),
                                       scope=flow.Scope(scope)))
    return tuple(limits)


def _throttle(raw: Any, field: str) -> flow.Throttle | None:
    if raw is None:
        return None
    raw = _member(raw, field)
    return flow.Throttle(limit=_int(raw, "limit", field),
                         period_ms=_period(raw, "period", field),
                         burst=_int(raw, "burst", field, default=1),
                         key=_text(raw.get("key"), f"{field}.key"))


def _rate_limit(raw: Any, field: str) -> flow.RateLimit | None:
    if raw is None:
        return None
    raw = _member(raw, field)
    return flow.RateLimit(limit=_int(raw, "limit", field),
                          period_ms=_period(raw, "period", field),
                          key=_text(raw.get("key"), f"{field}.key"))


def _debounce(raw: Any, field: str) -> flow.Debounce | None:
    if raw is None:
        return None
    raw = _member(raw, field)
    return flow.Debounce(period_ms=_period(raw, "period", field),
                         key=_text(raw.get("key"), f"{field}.key"),
                         timeout_ms=None if raw.get("timeout") is None
                         else _period(raw, "timeout", field))


def _batching(raw: Any, field: str) -> flow.Batching | None:
    if raw is None:
        return None
    raw = _member(raw, field)
    if raw.get("if"):
        raise InvalidArgument(f"{field}.if", "conditional batching is not supported by "
                                             "Stepline; remove `if`")
    return flow.Batching(max_size=_int(raw, "maxSize", field),
                         timeout_ms=_period(raw, "timeout", field, BATCH_TIMEOUT),
                         key=_text(raw.get("key"), f"{field}.key"))


def _singleton(raw: Any, field: str) -> flow.Singleton | None:
    if raw is None:
        return None
    raw = _member(raw, field)
    mode = raw.get("mode")
    if mode not in {m.value for m in flow.SingletonMode}:
        raise InvalidArgument(f"{field}.mode", f"expected 'skip' or 'cancel', got {mode!r}")
    return flow.Singleton(mode=flow.SingletonMode(mode), key=_text(raw.get("key"),
                                                                   f"{field}.key"))
