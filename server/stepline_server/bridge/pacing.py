"""Turns on the event loop for the bridge's bursts. Hundreds of exchanges become ready in the
same loop iteration (a SendEvent of 500 runs hands them all out at once; a slow app's answers
come back together): run back to back, their requests built and their answers parsed stalled
the loop for 100 ms and more (bench/bridge.py, figure 4). An exchange takes a turn before each
piece of such work; at most `per_iteration` turns are given in one loop iteration, the others
wait in arrival order for the next iterations, so timers and other connections' I/O run in
between. With nothing queued a turn is given at once: a lone request waits for nothing."""

from __future__ import annotations

import asyncio
import collections

# Turns given per loop iteration. Building a request and sending it, or reading an answer and
# handing it to the writer, costs 0.1-0.3 ms on the loop (aiohttp's part the largest), plus the
# connection's callbacks in the next iterations. With 500 requests in flight, 4 kept the lag p99
# lowest (2-16 tried); the 500 requests all go out within a few hundred milliseconds.
TURNS_PER_ITERATION = 4


class Pacer:
    def __init__(self, per_iteration: int = TURNS_PER_ITERATION) -> None:
        if per_iteration < 1:
            raise ValueError(f"per_iteration must be at least 1, not {per_iteration}")
        self.per_iteration = per_iteration
        self._given = 0  # turns given in the current iteration
        self._ticking = False
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def turn(self) -> None:
        """Return when this caller may run its next piece of work (at once when the turns of
        this loop iteration are not used up and no one waits)."""
        if not self._waiting and self._given < self.per_iteration:
            self._given += 1
            self._tick_soon()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)  # a waiter cancelled meanwhile is skipped by _tick
        self._tick_soon()
        await waiter

    def _tick_soon(self) -> None:
        if not self._ticking:
            self._ticking = True
            asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        """A new loop iteration: wake the next waiters. The woken run in the iteration after
        this one, ahead of this tick, which then wakes the next ones."""
        self._ticking = False
        self._given = 0
        while self._waiting and self._given < self.per_iteration:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._given += 1
        if self._given:
            self._tick_soon()
