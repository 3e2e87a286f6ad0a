"""Ends runs that outlive their `timeouts` (start: queued too long; finish: running too long)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from stepline_server.engine.core import Engine
from stepline_server.ids import now_ms

log = logging.getLogger(__name__)
BATCH = 500


class DeadlineWatch:
    """One per server. Sleeps until the earliest deadline (or the poll interval, so deadlines
    set by other servers are seen) and fails what is past due, in bounded batches."""

    def __init__(self, engine: Engine, poll_seconds: float) -> None:
        self.engine = engine
        self.poll_seconds = poll_seconds
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = await self._round()
            except Exception:  # the database may be briefly unavailable: keep watching
                log.exception("timeout watch failed; retrying")
                delay = self.poll_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _round(self) -> float:
        while await self.engine.expire_deadlines(BATCH) >= BATCH and not self._stop.is_set():
            pass  # a full batch: there may be more
        deadline = await self.engine.next_deadline_ms()
        if deadline is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(0.0, (deadline - now_ms()) / 1000))
