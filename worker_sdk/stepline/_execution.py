"""Executes one dispatched run: replays the function with memoized steps, reports ops."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeAlias

from opentelemetry import context as otel_context

from stepline._events import Event, event_from_proto
from stepline._function import Function
from stepline._step import (
    Released,
    Step,
    StepIds,
    SyncStep,
    encode_json,
    failure_fields,
)
from stepline._tracing import RunTrace
from stepline.errors import NonDeterminismError, NonRetriableError
from stepline.v1 import common_pb2, worker_service_pb2

if TYPE_CHECKING:
    # A default lets a bare `Context` mean Context[Step]. typing.TypeVar takes one from Python
    # 3.13 only; type checkers read typing_extensions' at any version, and the code does not
    # need it at run time.
    from typing_extensions import TypeVar

    StepT = TypeVar("StepT", Step, SyncStep, default=Step)
else:
    from typing import TypeVar

    StepT = TypeVar("StepT", Step, SyncStep)

log = logging.getLogger("stepline.worker")
DEFER_SECONDS = 0.02
# A parallel step's dispatch: how long other new steps wait for the target to be reached before
# the replay is judged to have diverged from the code that planned it.
TARGET_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Context(Generic[StepT]):
    """What a function receives: its trigger event, its run, and the step tools.

    `ctx.step` is a Step (awaitable tools) for `async def` functions: annotate them
    `ctx: Context`. Plain `def` functions get a SyncStep: annotate them `ctx: SyncContext`.
    """

    event: Event
    run_id: str
    function_id: str
    attempt: int
    step: StepT
    # Every event of a batched run (`batch_events`), oldest first, `event` being the first;
    # (event,) for any other run.
    events: tuple[Event, ...] = ()


SyncContext: TypeAlias = Context[SyncStep]
"""The Context of a plain (sync) function: the same, with `step` a SyncStep."""


class OpsSink(Protocol):
    """Where a run's reports go and where their acks come from: the worker stream's session,
    or one HTTP request of the serve() handlers (which acks them itself and answers them all)."""

    def send_ops(self, ops: worker_service_pb2.Ops) -> asyncio.Future[worker_service_pb2.Ack]:
        ...


class RunExecution:
    """One dispatch of a run on this worker: the replay state and the reports to the server."""

    def __init__(
        self,
        session: OpsSink,
        dispatch: worker_service_pb2.Dispatch,
        function: Function,
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
        self.trace = RunTrace(dispatch, function_id=function.full_name)
        # Step ids reached by this replay; a new step reached while memoized ones are not means
        # the code changed between attempts.
        self.visited: set[str] = set()
        self.nondeterminism: NonDeterminismError | None = None
        # Set once the run is no longer ours; siblings of a parallel step's target wait on it.
        self._released = asyncio.Event()
        self._pending: asyncio.Future[worker_service_pb2.Ack] | None = None
        # A completed step's checkpoint waits for the next boundary (next step, or the run's
        # end) so that the last step and the run's result share one report and one commit.
        self._deferred: list[worker_service_pb2.Op] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        # Parallel steps: the one step this dispatch executes (if set); new steps reached in the
        # same turn of the event loop (candidates for a plan); the outcome of reporting a plan.
        self.target_step_id = dispatch.target_step_id
        self._target_reached = asyncio.Event()
        self._target_failed = False
        self._arrivals: list[tuple[str, str]] = []
        self._planned: asyncio.Future[None] | None = None

    @property
    def released(self) -> bool:
        """The run is no longer ours to execute (suspended, ended, rejected, cancelled, or its
        stream is gone): user code unwinds at its next step."""
        return self._released.is_set()

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
            run_id=self.run_id, lease=self.lease, function_id=self.function.id, ops=ops,
            target_step_id=self.target_step_id))
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
        await self._acknowledged()

    async def report(self, ops: list[worker_service_pb2.Op]) -> worker_service_pb2.Ack:
        """Once earlier reports are acknowledged, send `ops` with the deferred checkpoints (so
        they share one commit) and return the ack."""
        await self._acknowledged()
        return await self.send(ops)

    async def _acknowledged(self) -> None:
        while (pending := self._pending) is not None:
            ack = await pending
            if ack.action != worker_service_pb2.ACK_ACTION_CONTINUE:
                self.release(ack)
                raise Released()
            if self._pending is pending:  # nothing was sent while we waited
                return

    def release(self, ack: worker_service_pb2.Ack) -> None:
        """The server answered RELEASE or REJECTED: the run is no longer ours to execute."""
        self._released.set()
        if ack.action == worker_service_pb2.ACK_ACTION_REJECTED:
            log.warning("run %s: server rejected ops: %s", self.run_id, ack.error_message)

    def cancel(self) -> None:
        self._released.set()

    def check_size(self, text: str, what: str) -> None:
        size = len(text.encode())
        if size > self.max_payload_bytes:
            raise NonRetriableError(
                f"{what} is {size} bytes, over the server's limit of {self.max_payload_bytes}")

    # -- replay ----------------------------------------------------------------------------------
    def next_step(self, name: str) -> tuple[str, common_pb2.StepResult | None]:
        """Take the id of the next step called `name` (marking it reached by this replay), with
        its memoized result if it has one."""
        if self.nondeterminism is not None:
            raise self.nondeterminism
        step_id = self.ids.next(name)
        self.visited.add(step_id)
        return step_id, self.memo.get(step_id)

    async def check_new_step(self, step_id: str) -> None:
        """Before a new step does anything: raise NonDeterminismError if memoized steps were
        not reached first. The run then fails whatever the function does with the error."""
        if self.visited.issuperset(self.memo):
            return
        # Branches awaited together (asyncio.gather) reach their memoized steps in turn: let
        # them run before judging.
        await asyncio.sleep(0)
        unvisited = [step_id for step_id in self.memo if step_id not in self.visited]
        if unvisited:
            self.nondeterminism = NonDeterminismError(self.run_id, step_id, unvisited)
            raise self.nondeterminism

    async def gate(self, step_id: str, name: str) -> None:
        """Decide where a new step executes. Returns if it executes here and now; raises
        Released if it runs elsewhere: as one of several steps awaited together (reported as a
        plan, each dispatched on its own), or as a sibling of the parallel step this dispatch
        executes."""
        if self.target_step_id:
            if step_id == self.target_step_id:
                self._target_reached.set()
                return
            await self._wait_for_target()
        self._arrivals.append((step_id, name))
        await asyncio.sleep(0)  # let steps awaited together (asyncio.gather) arrive too
        group, leader = self._arrivals, self._arrivals[0][0]
        if len(group) == 1:
            self._arrivals = []
            return
        if step_id != leader:
            if self._planned is None:
                self._planned = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._planned)
            raise Released()
        self._arrivals = []
        if self._planned is None:
            self._planned = asyncio.get_running_loop().create_future()
        try:
            ack = await self.report([worker_service_pb2.Op(planned=worker_service_pb2.Planned(
                steps=[worker_service_pb2.PlannedStep(step_id=s, name=n) for s, n in group]))])
            self.release(ack)
        finally:
            if not self._planned.done():
                self._planned.set_result(None)
        raise Released()

    async def _wait_for_target(self) -> None:
        """A new step that is not this dispatch's target: it runs in another dispatch. Wait
        until this dispatch ends (its target reported, or the run taken away), then unwind; if
        the target is never reached, the code changed."""
        try:
            await asyncio.wait_for(self._target_reached.wait(), TARGET_WAIT_SECONDS)
        except TimeoutError:
            if not self.released:
                await self._fail_target(self._target_not_reached())
        await self._released.wait()
        raise Released()

    def _target_not_reached(self) -> NonDeterminismError:
        return NonDeterminismError(
            self.run_id, self.target_step_id, [],
            f"parallel step {self.target_step_id!r} was not reached on replay; the function's "
            "code may have changed since the steps were planned")

    async def _fail_target(self, error: Exception) -> None:
        """Report the target step failed, once: siblings that give up on it together (or the
        body's end) must not report it again: the server refuses a step reported twice."""
        if self._target_failed:
            return
        self._target_failed = True
        op = worker_service_pb2.Op(step_failed=worker_service_pb2.StepFailed(
            step_id=self.target_step_id, name=self.target_step_id, **failure_fields(error)))
        self.release(await self.send([op]))

    # -- running the function ------------------------------------------------------------------
    def new_step(self) -> Step:
        """The step tools the function gets (stepline.testing gives its own, which answer
        stubbed steps)."""
        return Step(self)

    def _context(self, step: StepT) -> Context[StepT]:
        event = event_from_proto(self.dispatch.event)
        events = tuple(event_from_proto(e) for e in self.dispatch.events) or (event,)
        return Context(event=event, run_id=self.run_id, function_id=self.function.id,
                       attempt=self.dispatch.attempt, step=step, events=events)

    async def execute(self) -> None:
        body_context = self.trace.body_context()  # user spans outside steps nest under the run
        token = None if body_context is None else otel_context.attach(body_context)
        try:
            await self._execute()
        finally:
            if token is not None:
                otel_context.detach(token)

    async def _execute(self) -> None:
        loop = asyncio.get_running_loop()
        step = self.new_step()
        ctx = self._context(step) if self.function.is_async else self._context(
            SyncStep(step, loop))
        try:
            if self.function.is_async:
                output = await self.function.handler(ctx)
            else:
                output = await loop.run_in_executor(
                    self.body_pool, contextvars.copy_context().run, self.function.handler, ctx)
            text = encode_json(output, "function output")
            self.check_size(text, "function output")
            op = worker_service_pb2.Op(
                run_completed=worker_service_pb2.RunCompleted(output=text.encode()))
        except Released:
            return
        except Exception as exc:
            op = worker_service_pb2.Op(
                run_failed=worker_service_pb2.RunFailed(**failure_fields(exc)))
        if self.nondeterminism is not None:  # even if the function caught it
            op = worker_service_pb2.Op(run_failed=worker_service_pb2.RunFailed(
                **failure_fields(self.nondeterminism)))
        if self.released:
            return
        if self.target_step_id:  # the body ended without reaching the step to execute
            await self._fail_target(self._target_not_reached())
            return
        ack = await self.send([op])
        self.release(ack)
