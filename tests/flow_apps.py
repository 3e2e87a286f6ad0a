"""What the steps of flow control tests record (integration and e2e tests, in the test's
process or in worker processes): when each step execution started and ended, per key, and the
most that overlapped."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable


def mark(log: str, kind: str, key: str, run_id: str) -> None:
    """One line "<kind> <key> <run_id> <wall clock ms> <pid>": O_APPEND writes of one short
    line are atomic across processes."""
    with open(log, "a") as out:
        out.write(f"{kind} {key} {run_id} {time.time() * 1000:.3f} {os.getpid()}\n")


def record_step(log: str, key: str, run_id: str, seconds: float) -> None:
    """A step that takes `seconds`, writing its start and end to `log`."""
    mark(log, "start", key, run_id)
    time.sleep(seconds)
    mark(log, "end", key, run_id)


def intervals(lines: Iterable[str]) -> dict[str, list[tuple[float, float]]]:
    """Per key, the (start, end) of every step execution recorded by `record_step`; a start
    without an end (its process was killed in the step) is left out."""
    starts: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in lines:
        kind, key, run_id, at, pid = line.split()
        if kind == "start":
            starts[key, run_id, pid].append(float(at))
        else:
            out[key].append((starts[key, run_id, pid].pop(0), float(at)))
    return out


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant (an end at t closes before a start at t opens)."""
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans],
                    key=lambda p: (p[0], p[1]))
    open_, most = 0, 0
    for _, change in points:
        open_ += change
        most = max(most, open_)
    return most
