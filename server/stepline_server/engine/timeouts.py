"""Ends runs that outlive their `timeouts` (start: queued too long; finish: running too long)."""

from __future__ import annotations

from stepline_server.engine.core import Engine
from stepline_server.engine.timed import TimedLoop
from stepline_server.ids import now_ms

BATCH = 500


class DeadlineWatch(TimedLoop):
    """One per server. Sleeps until the earliest deadline (or the poll interval, so deadlines
    set by other servers are seen) and fails what is past due, in bounded batches."""

    what = "timeout watch"

    def __init__(self, engine: Engine, poll_seconds: float) -> None:
        super().__init__(poll_seconds)
        self.engine = engine

    async def _round(self) -> float:
        while await self.engine.expire_deadlines(BATCH) >= BATCH and not self.stopping:
            pass  # a full batch: there may be more
        deadline = await self.engine.next_deadline_ms()
        if deadline is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(0.0, (deadline - now_ms()) / 1000))
