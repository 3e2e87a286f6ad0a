"""What engine logic running inside a write transaction may use besides the connection."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from stepline_server.engine.observe import Observer
from stepline_server.engine.starts import RunStart
from stepline_server.model import EventRecord
from stepline_server.store import Tx

log = logging.getLogger(__name__)
_warned: dict[str, float] = {}  # kind -> when the next skip may be logged (monotonic)


@dataclass(frozen=True, slots=True)
class TxContext:
    tx: Tx
    now: int
    # Starts runs in this transaction; returns their ids.
    start: Callable[[list[RunStart]], list[str]]
    dedup_ms: int
    # Tells the worker holding a run that it was cancelled, and why: (run_id, owner, reason);
    # called after the commit.
    cancelled: Callable[[str, str, str], None]
    # Which system events (stepline/function.*) some function listens to; cached by the engine.
    system_listeners: Callable[[Connection], frozenset[str]]
    # Told after the commit (telemetry).
    observers: Observer
    # The most a CEL filter may be estimated to cost on one event (engine/cel_cost.py).
    filter_budget_ns: int = 5_000_000

    def filter_skipped(self, kind: str, what: str, event: EventRecord) -> None:
        """A filter was not evaluated on `event`: over the budget. Counted as no match; logged
        and told to telemetry, so a filter that never fires can be found out."""
        now = time.monotonic()
        if now >= _warned.get(kind, 0.0):  # once a minute per kind: events may come in floods
            _warned[kind] = now + 60
            log.warning("%s: the CEL filter was not evaluated on event %s (%s): its estimated "
                        "cost is over the budget of %.1f ms; counted as no match (counted in "
                        "stepline_filters_skipped_total; this warning is repeated at most once "
                        "a minute)", what, event.id, event.name, self.filter_budget_ns / 1e6)
        observers = self.observers
        self.tx.after_commit(lambda: observers.filter_skipped(kind))

    def cancel_after_commit(self, run_id: str, owner: str | None, reason: str) -> None:
        if owner:
            cancelled = self.cancelled
            self.tx.after_commit(lambda: cancelled(run_id, owner, reason))
