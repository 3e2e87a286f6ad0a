"""An HTTP app as the dispatcher sees it: a virtual connection per app per server, whose slots
are its cap on requests in flight. It claims, holds and frees leases exactly like a worker
stream; handing it work starts an exchange (bridge.py) instead of sending a message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from stepline_server.dispatch.dispatcher import WorkerConnection
from stepline_server.engine.ops import sent_output
from stepline_server.model import (
    AppEndpoint,
    Dispatch,
    MemoStep,
    OpsBatch,
    SendEvents,
    StepCompleted,
    StepFailed,
)

Exchange = Callable[["HttpConnection", Dispatch], Coroutine[Any, Any, None]]


def _no_exchange(conn: HttpConnection, work: Dispatch) -> Coroutine[Any, Any, None]:
    raise RuntimeError("an HttpConnection needs an exchange")


@dataclass(eq=False)
class HttpConnection(WorkerConnection):
    kind: ClassVar[str] = "http"
    endpoint: AppEndpoint = field(default_factory=lambda: AppEndpoint(
        app_id="", url="", protocol=""))
    exchange: Exchange = _no_exchange
    # The exchanges under way (one per leased item), and the HTTP request each is waiting on,
    # by (run_id, target_step_id): a cancelled run's request is abandoned.
    exchanges: set[asyncio.Task[None]] = field(default_factory=set)
    requests: dict[tuple[str, str], asyncio.Future[Any]] = field(default_factory=dict)

    def dispatch(self, work: Dispatch) -> None:
        task = asyncio.get_running_loop().create_task(
            self.exchange(self, work), name=f"stepline-bridge-{work.run_id}")
        self.exchanges.add(task)
        task.add_done_callback(self.exchanges.discard)

    def cancel(self, run_id: str, reason: str) -> None:
        for key, request in list(self.requests.items()):
            if key[0] == run_id:
                request.cancel()


def next_dispatch(work: Dispatch, batch: OpsBatch) -> Dispatch:
    """The dispatch that follows `work` once `batch` was acknowledged CONTINUE: the same lease,
    with the steps it recorded added to the memo (no database read). The next step starts at
    attempt 0."""
    steps = list(work.steps)
    for op in batch.ops:
        if isinstance(op, StepCompleted):
            steps.append(MemoStep(step_id=op.step_id, output=op.output, error=None))
        elif isinstance(op, SendEvents):
            steps.append(MemoStep(step_id=op.step_id, output=sent_output(op), error=None))
        elif isinstance(op, StepFailed):  # failed for good, or the ack would be RELEASE
            steps.append(MemoStep(step_id=op.step_id, output=None, error=op.error))
    return replace(work, attempt=0, steps=tuple(steps))
