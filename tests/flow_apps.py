"""Concurrency limits declared on SDK functions for tests, and what the steps under them record.

The SDK's own options for flow control come separately; until then a test declares a limit by
adding it to the FunctionConfig the function registers with (the server sees the same message).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable

from stepline._function import Function
from stepline.v1 import common_pb2

SCOPES = {"fn": common_pb2.Concurrency.SCOPE_FN, "env": common_pb2.Concurrency.SCOPE_ENV,
          "account": common_pb2.Concurrency.SCOPE_ACCOUNT}


def limited(function: Function, *limits: tuple[int, str, str]) -> Function:
    """`function` registered with these concurrency limits, each (limit, CEL key, scope)."""
    plain = function.to_proto

    def to_proto() -> common_pb2.FunctionConfig:
        config = plain()
        for limit, key, scope in limits:
            config.concurrency.add(limit=limit, key=key, scope=SCOPES[scope])
        return config

    object.__setattr__(function, "to_proto", to_proto)
    return function


def record_step(log: str, key: str, run_id: str, seconds: float) -> None:
    """A step that takes `seconds`, writing its start and end (wall clock, ms) to `log`: one
    short O_APPEND line each, atomic across processes."""
    with open(log, "a") as out:
        out.write(f"start {key} {run_id} {time.time() * 1000:.3f} {os.getpid()}\n")
    time.sleep(seconds)
    with open(log, "a") as out:
        out.write(f"end {key} {run_id} {time.time() * 1000:.3f} {os.getpid()}\n")


def intervals(lines: Iterable[str]) -> dict[str, list[tuple[float, float]]]:
    """Per key, the (start, end) of every step execution recorded by `record_step`."""
    starts: dict[tuple[str, str], list[float]] = defaultdict(list)
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in lines:
        kind, key, run_id, at, _ = line.split()
        if kind == "start":
            starts[key, run_id].append(float(at))
        else:
            out[key].append((starts[key, run_id].pop(0), float(at)))
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
