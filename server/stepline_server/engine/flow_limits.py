"""Rate limit, idempotency, singleton, throttle and priority at run starts (see flow_starts).
PLACEHOLDER: passes every start through unchanged; to be implemented."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepline_server.engine.flow_starts import Queueing
    from stepline_server.engine.starts import RunStart
    from stepline_server.store import Tx


def skip(tx: Tx, start: RunStart, now: int, call: dict[tuple[str, str], Any]) -> bool:
    """Whether the start is skipped (rate limit, idempotency, singleton skip), recorded."""
    return False


def start_due(tx: Tx, start: RunStart, queueing: Queueing, now: int,
              call: dict[tuple[str, str], Any]) -> Queueing:
    """The start's due time and hold reason under throttle and priority."""
    return queueing
