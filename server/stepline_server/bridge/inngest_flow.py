"""An Inngest function config's flow control as Stepline's settings (flow.py), for the fields
Stepline enforces for Inngest apps: `debounce` and `batchEvents`. The other flow fields stay
stored and named as not enforced (inngest_register.py).

Keys are CEL over `event` in both systems; durations are Inngest's strings ("5s", "1m").
"""

from __future__ import annotations

from typing import Any

from stepline_server import flow
from stepline_server.bridge.inngest_wire import duration_ms
from stepline_server.errors import InvalidArgument

ENFORCED = ("debounce", "batchEvents")


def flow_control(fn: dict[str, Any], path: str) -> flow.FlowControl:
    """The enforced settings of one function config (unchecked: see wire.check_flow_control)."""
    return flow.FlowControl(debounce=_debounce(fn.get("debounce"), f"{path}.debounce"),
                            batching=_batching(fn.get("batchEvents"), f"{path}.batchEvents"))


def _debounce(raw: Any, path: str) -> flow.Debounce | None:
    if raw is None:
        return None
    _object(raw, path)
    timeout = raw.get("timeout")
    return flow.Debounce(period_ms=_duration(raw.get("period"), f"{path}.period"),
                         key=_key(raw, path),
                         timeout_ms=None if timeout is None
                         else _duration(timeout, f"{path}.timeout"))


def _batching(raw: Any, path: str) -> flow.Batching | None:
    if raw is None:
        return None
    _object(raw, path)
    if raw.get("if"):
        # Events that do not match would run unbatched: not implemented, refused rather than
        # batching every event.
        raise InvalidArgument(f"{path}.if", "is not supported by Stepline")
    size = raw.get("maxSize")
    if isinstance(size, bool) or not isinstance(size, int):
        raise InvalidArgument(f"{path}.maxSize", f"expected an integer, got {size!r}")
    return flow.Batching(max_size=size, timeout_ms=_duration(raw.get("timeout"),
                                                             f"{path}.timeout"),
                         key=_key(raw, path))


def _object(raw: Any, path: str) -> None:
    if not isinstance(raw, dict):
        raise InvalidArgument(path, f"expected an object, got {raw!r}")


def _key(raw: dict[str, Any], path: str) -> str:
    key = raw.get("key") or ""
    if not isinstance(key, str):
        raise InvalidArgument(f"{path}.key", f"expected a CEL expression, got {key!r}")
    return key


def _duration(raw: Any, path: str) -> int:
    value = duration_ms(raw) if isinstance(raw, str) else None
    if value is None:
        raise InvalidArgument(path, f"expected a duration such as '5s' or '1m', got {raw!r}")
    return value
