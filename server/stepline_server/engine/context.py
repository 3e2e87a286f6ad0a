"""What engine logic running inside a write transaction may use besides the connection."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from stepline_server.engine.observe import Observer
from stepline_server.engine.starts import RunStart
from stepline_server.store import Tx


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

    def cancel_after_commit(self, run_id: str, owner: str | None, reason: str) -> None:
        if owner:
            cancelled = self.cancelled
            self.tx.after_commit(lambda: cancelled(run_id, owner, reason))
