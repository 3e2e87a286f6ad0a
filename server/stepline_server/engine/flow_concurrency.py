"""Concurrency limits by key (see flow_starts and the claim).
PLACEHOLDER: no keys; to be implemented."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepline_server.engine.flow_starts import Queueing
    from stepline_server.engine.starts import RunStart
    from stepline_server.store import Tx


def place(tx: Tx, start: RunStart, queueing: Queueing, now: int,
          call: dict[tuple[str, str], Any]) -> Queueing:
    """The run's concurrency keys; parked when a key has no free slot."""
    return queueing
