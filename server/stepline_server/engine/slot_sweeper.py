"""The safety net of concurrency limits: parked runs get the slots nobody handed on."""

from __future__ import annotations

from stepline_server.engine.core import Engine
from stepline_server.engine.timed import TimedLoop

KEYS_PER_ROUND = 200
SWEEP_SECONDS = 1.0


class SlotSweeper(TimedLoop):
    """One per server. Slots free without a hand-over when a lease expires (a server died),
    when a limit is raised, or when another server removed a function's limits: every second,
    the keys with parked items are promoted (flow_concurrency.sweep), a bounded number of keys
    per transaction."""

    what = "concurrency sweep"

    def __init__(self, engine: Engine, poll_seconds: float = SWEEP_SECONDS) -> None:
        super().__init__(poll_seconds)
        self.engine = engine

    async def _round(self) -> float:
        after = ""
        while not self.stopping:
            after, _ = await self.engine.sweep_parked(after, KEYS_PER_ROUND)
            if not after:
                break
        return self.poll_seconds
