"""Executes one dispatched run: replays the function with memoized steps, reports ops."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stepline._function import FunctionDef
from stepline._step import (
    Released,
    Step,
    StepIds,
    SyncStep,
    encode_json,
    failure_fields,
)
from stepline.errors import NonRetriableError
from stepline.v1 import common_pb2, worker_service_pb2

if TYPE_CHECKING:
    from stepline._worker import Session

log = logging.getLogger("stepline.worker")
DEFER_SECONDS = 0.02


@dataclass(frozen=True)
class Event:
    """An event as a function receives it."""

    name: str
    data: Any
    id: str = ""
    ts: datetime | None = None
    user: Any = None


@dataclass(frozen=True)
class Context:
    """What a function receives: its trigger event, its run, and the step tools."""

    event: Event
    run_id: str
    function_id: str
    attempt: int
    step: Any  # Step for async functions, SyncStep for sync ones


def event_from_proto(message: common_pb2.Event) -> Event:
    ts = None
    if message.HasField("ts"):
        ts = datetime.fromtimestamp(message.ts.ToMilliseconds() / 1000, tz=UTC)
    return Event(
        name=message.name,
        data=json.loads(message.data) if message.data else {},
        id=message.id,
        ts=ts,
        user=json.loads(message.user) if message.user else None,
    )


class RunExecution:
    def __init__(
        self,
        session: Session,
        dispatch: worker_service_pb2.Dispatch,
        function: FunctionDef,
        *,
        step_pool: Executor,
        body_pool: Executor,
        max_payload_bytes: int,
    ) -> None:
        self.session = session
        self.run_id = dispatch.run_id
        self.lease = dispatch.lease
        self.dispatch = dispatch
        self.function = function
        self.step_pool = step_pool
        self.body_pool = body_pool
        self.max_payload_bytes = max_payload_bytes
        self.ids = StepIds()
        self.memo: dict[str, common_pb2.StepResult] = {s.step_id: s for s in dispatch.steps}
        self.released = False
        self._pending: asyncio.Future[worker_service_pb2.Ack] | None = None
        # A completed step's checkpoint waits for the next boundary (next step, or the run's
        # end) so that the last step and the run's result share one report and one commit.
        self._deferred: list[worker_service_pb2.Op] = []
        self._flush_timer: asyncio.TimerHandle | None = None

    # -- talking to the server -----------------------------------------------------------------
    def send(self, ops: list[worker_service_pb2.Op]) -> asyncio.Future[worker_service_pb2.Ack]:
        """Report deferred checkpoints and `ops` in one message; the future gives its ack."""
        if self.released:
            raise Released()
        ops, self._deferred = self._deferred + ops, []
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        future = self.session.send_ops(worker_service_pb2.Ops(
            run_id=self.run_id, lease=self.lease, function_id=self.function.id, ops=ops))
        self._pending = future
        return future

    def defer(self, op: worker_service_pb2.Op) -> None:
        self._deferred.append(op)
        if self._flush_timer is None:
            # Code that dawdles before its next step must not leave the result uncommitted.
            self._flush_timer = asyncio.get_running_loop().call_later(
                DEFER_SECONDS, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        if self._deferred and not self.released:
            self.send([])

    async def settle(self) -> None:
        """Commit what is deferred and wait for it; unwind if the run is no longer ours."""
        if self.released:
            raise Released()
        if self._deferred:
            self.send([])
        if self._pending is None:
            return
        ack = await self._pending
        if ack.action != worker_service_pb2.ACK_ACTION_CONTINUE:
            self._release(ack)
            raise Released()

    def _release(self, ack: worker_service_pb2.Ack) -> None:
        self.released = True
        if ack.action == worker_service_pb2.ACK_ACTION_REJECTED:
            log.warning("run %s: server rejected ops: %s", self.run_id, ack.error_message)

    def cancel(self) -> None:
        self.released = True

    def check_size(self, text: str, what: str) -> None:
        size = len(text.encode())
        if size > self.max_payload_bytes:
            raise NonRetriableError(
                f"{what} is {size} bytes, over the server's limit of {self.max_payload_bytes}")

    # -- running the function ------------------------------------------------------------------
    async def execute(self) -> None:
        loop = asyncio.get_running_loop()
        step = Step(self)
        ctx = Context(
            event=event_from_proto(self.dispatch.event),
            run_id=self.run_id,
            function_id=self.function.id,
            attempt=self.dispatch.attempt,
            step=step if self.function.is_async else SyncStep(step, loop),
        )
        try:
            if self.function.is_async:
                output = await self.function.handler(ctx)
            else:
                output = await loop.run_in_executor(self.body_pool, self.function.handler, ctx)
            text = encode_json(output, "function output")
            self.check_size(text, "function output")
            op = worker_service_pb2.Op(
                run_completed=worker_service_pb2.RunCompleted(output=text.encode()))
        except Released:
            return
        except Exception as exc:
            op = worker_service_pb2.Op(
                run_failed=worker_service_pb2.RunFailed(**failure_fields(exc)))
        if self.released:
            return
        ack = await self.send([op])
        self._release(ack)
