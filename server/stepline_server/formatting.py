"""How durations and times read, the same in the CLI and the dashboard (standard library only:
the CLI's client commands run without the server's dependencies)."""

from __future__ import annotations

from datetime import UTC, datetime

# A due time without a timeout (an invoke): model.NEVER_MS, repeated to keep this module bare.
_NEVER_MS = 2**62


def duration(ms: int | float | None) -> str:
    """850 ms, 1.25 s, 12.5 s, 3 min 04 s, 2 h 05 min, 3 d 4 h; "" for None."""
    if ms is None:
        return ""
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms} ms"
    if ms < 10_000:
        return f"{ms / 1000:.2f} s"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def retention(ms: int) -> str:
    """A retention: "forever" for 0, "30 d", "12 h", else as a duration."""
    if ms <= 0:
        return "forever"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size} {unit}"
    return duration(ms)


def iso(ms: int | None) -> str | None:
    """ISO 8601 in UTC, to the millisecond; None for no time or "never"."""
    if ms is None or ms >= _NEVER_MS:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
