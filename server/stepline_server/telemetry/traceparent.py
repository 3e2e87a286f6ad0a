"""W3C trace context for runs and step attempts, computed from ids alone (no OpenTelemetry).

Runs outlive processes, so their spans' identities are derived, never remembered:
- a run's trace is its trigger event's trace (Event.traceparent); without one, the run id's own
  128 bits (a ULID), so a trace id read in a tracing backend names its run;
- the run span's id is the first 8 bytes of sha256("run", run id);
- a step attempt's span id is the first 8 bytes of sha256(run id, step id, lease): the step as
  executed by the dispatch that held `lease`. The Python SDK derives the same id
  (stepline/_tracing.py) to parent its step spans; tests/unit/test_traceparent.py keeps the two
  formulas equal.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from stepline_server.model import Dispatch, EventRecord

SAMPLED = 0x01
_HEADER = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
# Crockford's base32 digits to the ones int(..., 32) reads.
_ULID_DIGITS = str.maketrans("ABCDEFGHJKMNPQRSTVWXYZ", "ABCDEFGHIJKLMNOPQRSTUV")


@dataclass(frozen=True, slots=True)
class TraceParent:
    trace_id: int
    span_id: int
    flags: int = SAMPLED

    def header(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)


def parse(header: str | None) -> TraceParent | None:
    """A valid W3C traceparent header, or None (absent, malformed, or all-zero ids)."""
    if not header:
        return None
    match = _HEADER.match(header.strip().lower())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return TraceParent(trace_id, span_id, int(flags_hex, 16))


def normalize(header: str | None) -> str | None:
    """What is stored for an incoming traceparent: its canonical form, or None if invalid."""
    parsed = parse(header)
    return None if parsed is None else parsed.header()


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The traceparent of a gRPC call's metadata (set by OpenTelemetry-instrumented clients)."""
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            return normalize(value)
    return None


def with_default(records: Sequence[EventRecord], header: str | None) -> list[EventRecord]:
    """Events without a traceparent of their own take `header` (the request's)."""
    if header is None:
        return list(records)
    return [r if r.traceparent else replace(r, traceparent=header) for r in records]


# -- derived identities -------------------------------------------------------------------------
def _hash64(*parts: object) -> int:
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def ulid_value(run_id: str) -> int | None:
    """The 128-bit value of a ULID, or None if `run_id` is not one."""
    if not _ULID.match(run_id):
        return None
    return int(run_id.translate(_ULID_DIGITS), 32) or None


def run_created_ms(run_id: str) -> int | None:
    """When the run was created: a ULID's first 48 bits are its creation time in ms."""
    value = ulid_value(run_id)
    return None if value is None else value >> 80


def run_span_id(run_id: str) -> int:
    return _hash64("run", run_id)


def step_span_id(run_id: str, step_id: str, lease: int) -> int:
    """The span of `step_id` executed under `lease` ("" for the function body itself)."""
    return _hash64(run_id, step_id, lease)


def run_trace(run_id: str, trigger: str | None) -> tuple[int, int]:
    """(trace id, flags) of a run: its trigger event's trace, else one named by the run id."""
    parent = parse(trigger)
    if parent is not None:
        return parent.trace_id, parent.flags
    trace_id = ulid_value(run_id)
    if trace_id is None:
        trace_id = int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:16], "big") or 1
    return trace_id, SAMPLED


def run_traceparent(run_id: str, trigger: str | None) -> TraceParent:
    trace_id, flags = run_trace(run_id, trigger)
    return TraceParent(trace_id, run_span_id(run_id), flags)


def step_traceparent(run_id: str, trigger: str | None, step_id: str, lease: int) -> TraceParent:
    trace_id, flags = run_trace(run_id, trigger)
    return TraceParent(trace_id, step_span_id(run_id, step_id, lease), flags)


def for_dispatch(work: Dispatch) -> str:
    """Dispatch.traceparent: the parallel step's attempt span for a dispatch of one step, else
    the run span (the worker derives each step's attempt span from it, see module docstring)."""
    trigger = work.event.traceparent
    if work.target_step_id:
        return step_traceparent(work.run_id, trigger, work.target_step_id, work.lease).header()
    return run_traceparent(work.run_id, trigger).header()
