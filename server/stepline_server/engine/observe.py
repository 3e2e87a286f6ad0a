"""Hooks for telemetry (traces, metrics): what happened, told after it was committed.

The engine and dispatch call every registered Observer on the event loop, after the commit that
made it true, and never wait for them: an observer must be quick and must not raise (errors are
logged and dropped). No observer sees uncommitted work.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stepline_server.model import (
    AckAction,
    Dispatch,
    ErrorInfo,
    EventRecord,
    OpsBatch,
    RunStatus,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEnd:
    run_id: str
    function_id: str
    status: RunStatus
    error: ErrorInfo | None
    ended_at_ms: int
    traceparent: str | None


class Observer:
    """Override what you need; the defaults do nothing."""

    def events_accepted(self, records: Sequence[EventRecord], run_ids: Sequence[str]) -> None:
        """New events committed (repeats of known ids excluded), and the runs they started."""

    def dispatched(self, work: Dispatch, owner: str, worker_id: str) -> None:
        """A run (or one of its parallel steps: work.target_step_id) was handed to a worker."""

    def ops_committed(self, owner: str, batch: OpsBatch, result: AckAction | BaseException,
                      committed_at_ms: int) -> None:
        """A worker's report was applied (`result` is the ack) or refused (the error)."""

    def runs_ended(self, ends: Sequence[RunEnd]) -> None:
        """Runs ended: completed, failed (after their retries), cancelled or timed out."""

    def attempts_lost(self, dispatches: Sequence[tuple[str, str, int]], lost_at_ms: int
                      ) -> None:
        """Dispatches, as (run_id, target_step_id, lease), whose worker was lost (its stream
        broke) before it reported how they ended."""

    def rows_pruned(self, counts: Mapping[str, int], seconds: float) -> None:
        """One pruning transaction deleted these rows (by table), in `seconds` (from its
        submission to its commit)."""

    def filter_skipped(self, kind: str) -> None:
        """A CEL filter over its cost budget was not evaluated on an event (no match). `kind`:
        trigger, wait_for_event or cancel."""

    def flow_skipped(self, function_id: str, reason: str) -> None:
        """An event started no run of the function because of its flow control (`reason`: a
        flow.SkipReason value)."""


class Observers(Observer):
    """Fans out to the registered observers, isolating their failures."""

    def __init__(self) -> None:
        self._all: list[Observer] = []

    def add(self, observer: Observer) -> None:
        self._all.append(observer)

    def __bool__(self) -> bool:
        return bool(self._all)

    def events_accepted(self, records: Sequence[EventRecord], run_ids: Sequence[str]) -> None:
        for o in self._all:
            _guard(o.events_accepted, records, run_ids)

    def dispatched(self, work: Dispatch, owner: str, worker_id: str) -> None:
        for o in self._all:
            _guard(o.dispatched, work, owner, worker_id)

    def ops_committed(self, owner: str, batch: OpsBatch, result: AckAction | BaseException,
                      committed_at_ms: int) -> None:
        for o in self._all:
            _guard(o.ops_committed, owner, batch, result, committed_at_ms)

    def runs_ended(self, ends: Sequence[RunEnd]) -> None:
        for o in self._all:
            _guard(o.runs_ended, ends)

    def attempts_lost(self, dispatches: Sequence[tuple[str, str, int]], lost_at_ms: int
                      ) -> None:
        for o in self._all:
            _guard(o.attempts_lost, dispatches, lost_at_ms)

    def rows_pruned(self, counts: Mapping[str, int], seconds: float) -> None:
        for o in self._all:
            _guard(o.rows_pruned, counts, seconds)

    def filter_skipped(self, kind: str) -> None:
        for o in self._all:
            _guard(o.filter_skipped, kind)

    def flow_skipped(self, function_id: str, reason: str) -> None:
        for o in self._all:
            _guard(o.flow_skipped, function_id, reason)


def _guard(method: object, *args: object) -> None:
    try:
        method(*args)  # type: ignore[operator]
    except Exception:
        log.exception("telemetry observer failed")
