"""Debounce and batching at run starts (see flow_starts).
PLACEHOLDER: starts every run at once; to be implemented."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stepline_server.engine.flow_starts import PLAIN

if TYPE_CHECKING:
    from stepline_server.engine.flow_starts import Queueing
    from stepline_server.engine.starts import RunStart
    from stepline_server.store import Tx


def defer(tx: Tx, start: RunStart, now: int, new_id: Callable[[], str],
          call: dict[tuple[str, str], Any]) -> Queueing | None:
    """How the start's run is queued; None when the start was folded into a queued run."""
    return PLAIN
