"""Runs started and awaited from app code (RunService.InvokeFunction and WaitRun).

A run started here is what `step.invoke` starts, without a parent: its trigger event, named
"stepline/function.invoked", carries the caller's data and is stored like any event (its id is
the idempotency key: a repeat answers with the run the first call started).

A wait ends when the run ends. This server learns of the runs it ends from the `runs_ended`
observer, at once; a run ended by another replica of the same database is seen by re-reading
its status, ever less often (up to every POLL_SECONDS). Each wait is bounded by its timeout
(at most MAX_WAIT_SECONDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stepline_server.engine import lifecycle
from stepline_server.engine.observe import Observer, RunEnd
from stepline_server.engine.starts import RunStart
from stepline_server.errors import FailedPrecondition, NotFound
from stepline_server.ids import now_ms
from stepline_server.model import EventRecord, RunRecord, RunStatus
from stepline_server.store import Tx
from stepline_server.store import events as event_store
from stepline_server.store import flow_skips as skip_store
from stepline_server.store import functions as function_store
from stepline_server.store import pauses as pause_store
from stepline_server.store import runs as run_store

if TYPE_CHECKING:
    from stepline_server.engine.core import Engine, Starter

INVOKED_EVENT = lifecycle.FUNCTION_INVOKED
MAX_WAIT_SECONDS = 60.0
# How often a wait re-reads its run's status, for ends committed by another server on the
# database: first after FIRST_POLL_SECONDS, then twice as long each time, up to POLL_SECONDS.
FIRST_POLL_SECONDS = 0.05
POLL_SECONDS = 1.0
ENDED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


@dataclass(frozen=True, slots=True, kw_only=True)
class Invocation:
    run_id: str
    event_id: str
    started: bool  # False: a repeated id, run_id is the first call's run
    # No run: flow control skipped the start (recorded in flow_skips): (reason, key value).
    skipped: tuple[str, str] | None = None

    def refusal(self, function_id: str) -> FailedPrecondition:
        """The error a caller gets for a skipped start (once the skip is committed)."""
        assert self.skipped is not None
        reason, key = self.skipped
        return FailedPrecondition(
            f"function_id: the flow control of function {function_id!r} started no run for "
            f"event {self.event_id!r}: {reason}" + (f" (key {key!r})" if key else "") +
            "; the skip is recorded (stepline skips)")


async def invoke_function(engine: Engine, function_id: str, event: EventRecord) -> Invocation:
    """Start a run of `function_id` (a full name) for `event` (named INVOKED_EVENT)."""
    def job(tx: Tx, start: Starter) -> Invocation:
        conn = tx.conn
        policy = function_store.policies(conn, [function_id]).get(function_id)
        if policy is None:
            raise NotFound(f"function_id: no function {function_id!r} is registered (or it "
                           "is archived)")
        if pause_store.paused(conn, [function_id]):
            raise FailedPrecondition(f"function_id: function {function_id!r} is paused; "
                                     "resume it to invoke it")
        fresh = event_store.insert(conn, [event], now_ms(), engine.dedup_ms)
        if fresh[0]:
            started = start([RunStart(function_id=function_id, policy=policy, event=event,
                                      direct=True)])
            if not started:  # a rate limit, idempotency or singleton skip, recorded
                return Invocation(run_id="", event_id=event.id, started=False,
                                  skipped=skip_store.reason_of(conn, event.id, function_id))
            [run_id] = started
            return Invocation(run_id=run_id, event_id=event.id, started=True)
        earlier = run_store.run_ids_by_event(conn, [event.id]).get(event.id, [])
        if not earlier:
            raise FailedPrecondition(f"id: event {event.id!r} was already received and "
                                     "started no run; use another id")
        return Invocation(run_id=earlier[0], event_id=event.id, started=False)

    return await engine.write_with_starts(job)


class RunWaiters(Observer):
    """Wakes the waits of runs this server ends (registered with the engine's observers at the
    first wait, so that servers nobody waits on pay nothing)."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._closed = False

    def close(self) -> None:
        """The server is stopping: every wait answers now (its run unfinished, unless it
        ended), within the shutdown's grace, and new waits do not wait."""
        self._closed = True
        for waits in self._waiting.values():
            for woken in waits:
                woken.set()

    def runs_ended(self, ends: Sequence[RunEnd]) -> None:
        for end in ends:
            for woken in self._waiting.get(end.run_id, ()):
                woken.set()

    async def wait(self, engine: Engine, run_id: str, timeout_s: float) -> RunRecord:
        """The run once it has ended, or as it is when `timeout_s` has passed."""
        deadline = time.monotonic() + min(timeout_s, MAX_WAIT_SECONDS)
        woken = asyncio.Event()
        self._waiting.setdefault(run_id, set()).add(woken)
        try:
            run = await engine.get_run(run_id)
            if run.status not in ENDED and not self._closed:
                await self._until_ended(engine, run_id, woken, deadline)
                run = await engine.get_run(run_id)
            return run
        finally:
            waiting = self._waiting.get(run_id)
            if waiting is not None:
                waiting.discard(woken)
                if not waiting:
                    del self._waiting[run_id]

    @staticmethod
    async def _until_ended(engine: Engine, run_id: str, woken: asyncio.Event,
                           deadline: float) -> None:
        """Until this server ends the run (`woken`), its status read says it ended (another
        server ended it: read after FIRST_POLL_SECONDS, then ever less often, up to every
        POLL_SECONDS), or the deadline."""
        pause = FIRST_POLL_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(left, pause))
            if woken.is_set():
                return
            status = await engine.db.read(lambda conn: run_store.status_of(conn, run_id))
            if status is None or status in ENDED:
                return
            pause = min(pause * 2, POLL_SECONDS)
