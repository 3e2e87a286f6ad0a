"""A background loop that works in rounds and sleeps until its next due time."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from stepline_server.errors import Unavailable

log = logging.getLogger(__name__)


class TimedLoop:
    """Subclasses implement `_round`, which does what is due and returns how long to sleep
    (at most `poll_seconds`, so work scheduled by other servers is seen). `stop()` ends the
    loop at once, even mid-sleep; `wake()` ends the sleep (new work); a failed round is logged
    and retried after the poll."""

    what = "background loop"

    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self.rounds = 0  # rounds ended (failed ones too)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Start the next round now (from the event loop's thread)."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = await self._round()
            except Unavailable as exc:  # an outage: one line per round, not a traceback
                log.warning("%s failed (%s); retrying", self.what, exc)
                delay = self.poll_seconds
            except Exception:
                log.exception("%s failed; retrying", self.what)
                delay = self.poll_seconds
            self.rounds += 1
            if delay > 0 and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            if self._stop.is_set():
                break

    async def _round(self) -> float:
        raise NotImplementedError
