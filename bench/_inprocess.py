"""Serving an app from a worker inside the benchmark's own event loop, so probes share its clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from stepline import Stepline

CONNECT_TIMEOUT = 15.0
STOP_TIMEOUT = 35.0


async def wait_for(predicate: Callable[[], bool], within: float, what: str,
                   task: asyncio.Task[Any] | None = None) -> None:
    """Poll `predicate` every 10 ms; raise when `task` ends first or after `within` seconds.

    A poll, because the state it reads has no event to wait on: the worker's connection is
    that of whichever session it is on, and it starts a new one on each reconnect.
    """
    deadline = time.monotonic() + within
    while not predicate():
        if task is not None and task.done():
            task.result()
            raise RuntimeError(f"stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def serving(app: Stepline, slots: int) -> AsyncIterator[None]:
    """Run `app.worker(slots=slots)` in this loop until the block ends; then stop it and close
    the app's channels."""
    worker = app.worker(slots=slots)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.serve(stop), name=f"{app.app_id}-worker")
    try:
        await wait_for(lambda: worker.session is not None and worker.session.welcomed.is_set(),
                       CONNECT_TIMEOUT, f"in-process worker of {app.app_id!r} to connect", task)
        yield
    finally:
        stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, STOP_TIMEOUT)
        await app.close()
