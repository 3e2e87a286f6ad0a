"""Server spans: one per run and one per step attempt, emitted when they end.

Runs last days and survive restarts, so no live span is kept open across them. Each span is
started and ended in one go when the engine reports its end (an Observer, after the commit),
with explicit start and end times and with identities derived from ids (telemetry/traceparent):

- the run span ("stepline.run {function}"): from the run's creation (its ULID's timestamp) to
  its end (runs_ended); child of the trigger event's traceparent, else a root whose trace id is
  the run id;
- a step attempt span ("stepline.step {name}"): one per step op a worker reports (run, sleep,
  wait_for_event, invoke, send_event), child of the run span, from the dispatch (or, when one
  dispatch runs several steps, the commit of that dispatch's previous report) to the commit of
  the report holding the op: it covers the replay and body code before the step and the
  report's round trip. An op after the first in one report (a sleep reported with the
  preceding step's deferred result) was reached when that one ended: its span is an instant at
  the commit. Its id is derived from (run, step, lease), which is what the worker parents its
  own step span to (the worker's span measures the step's code alone);
- a body attempt span ("stepline.body {function}") for a RunFailed op: the function failed
  outside any step;
- for a dispatch whose worker was lost before reporting (attempts_lost), an error span with
  the outcome "lost", from the dispatch (or its last report) to the loss: the body span, or
  for a parallel step's dispatch that step's span.

Spans go through the TracerProvider's own pipeline (sampler, limits, processors, exporters).
The ids are chosen through the SDK's IdGenerator hook: our tracer (and only ours) gets
`_ChosenIds`, which hands out the ids set in a context variable around each `start_span` and
falls back to the provider's generator otherwise. The trace id of a span with a parent comes
from that parent, as always.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from stepline_server import __version__
from stepline_server.engine import attempts
from stepline_server.engine.observe import Observer, RunEnd
from stepline_server.ids import now_ms
from stepline_server.model import (
    AckAction,
    Dispatch,
    ErrorInfo,
    Invoke,
    Op,
    OpsBatch,
    RunFailed,
    RunStatus,
    SendEvents,
    Sleep,
    StepCompleted,
    StepFailed,
    StepKind,
    WaitForEvent,
)
from stepline_server.telemetry import traceparent as tp

log = logging.getLogger(__name__)

TRACER_NAME = "stepline.server"
# Dispatches remembered until their last report; beyond this the oldest are forgotten (their
# later reports get no span). Far above the slots one server's workers hold.
MAX_OPEN_DISPATCHES = 50_000

# Attribute names (the SDK's worker spans use the same ones).
FUNCTION_ID = "stepline.function.id"
RUN_ID = "stepline.run.id"
RUN_OUTCOME = "stepline.run.outcome"
STEP_ID = "stepline.step.id"
STEP_NAME = "stepline.step.name"
STEP_KIND = "stepline.step.kind"
# The kind of a span of the function's body (not a step): its failures outside steps, or a
# dispatch lost before it reported.
BODY_KIND = "body"
STEP_ATTEMPT = "stepline.step.attempt"  # 0 for the first attempt, as Dispatch.attempt
STEP_OUTCOME = "stepline.step.outcome"
WORKER_ID = "stepline.worker.id"
LEASE = "stepline.lease"

Attributes = dict[str, AttributeValue]
_CHOSEN: ContextVar[tuple[int, int] | None] = ContextVar("stepline_span_ids", default=None)


class _ChosenIds(IdGenerator):
    """The (trace id, span id) set in `_CHOSEN`, else the wrapped generator's."""

    def __init__(self, fallback: IdGenerator) -> None:
        self.fallback = fallback

    def generate_trace_id(self) -> int:
        chosen = _CHOSEN.get()
        return chosen[0] if chosen else self.fallback.generate_trace_id()

    def generate_span_id(self) -> int:
        chosen = _CHOSEN.get()
        return chosen[1] if chosen else self.fallback.generate_span_id()


@dataclass(slots=True)
class _Open:
    """A dispatch whose reports are still coming."""

    function_id: str
    worker_id: str
    trigger: str | None  # the run's trigger traceparent
    mark_ms: int  # the dispatch, then the commit of its latest report
    attempt: int  # of the next step op
    max_attempts: int


@dataclass(slots=True)
class _Span:
    name: str
    span_id: int
    start_ms: int
    end_ms: int
    attributes: Attributes
    events: list[tuple[str, Attributes]] = field(default_factory=list)  # at end_ms
    error: ErrorInfo | None = None


class Tracing(Observer):
    """Registered with `engine.observers` when tracing is on. `provider` must be an
    opentelemetry-sdk TracerProvider; `owned`: shut it down with the server."""

    def __init__(self, provider: TracerProvider, *, owned: bool = False) -> None:
        tracer = provider.get_tracer(TRACER_NAME, __version__)
        if not isinstance(tracer, Tracer):
            raise TypeError("tracing needs an opentelemetry-sdk TracerProvider (got "
                            f"{type(provider).__name__}, whose tracer is {type(tracer).__name__})")
        if not isinstance(tracer.id_generator, _ChosenIds):  # tracers are cached per provider
            tracer.id_generator = _ChosenIds(tracer.id_generator)
        self.provider = provider
        self._tracer = tracer
        self._owned = owned
        self._open: OrderedDict[tuple[str, str, int], _Open] = OrderedDict()
        # Recently ended runs' end times, so that the spans of the report that ended a run (told
        # after its end: store/database.py runs after-commit hooks before the reports' future
        # callbacks) and of reports refused since end no later than the run's span.
        self._ended: OrderedDict[str, int] = OrderedDict()

    def shutdown(self) -> None:
        """Flush and stop the exporters (blocking: call it off the event loop)."""
        if self._owned:
            self.provider.shutdown()

    # -- Observer -------------------------------------------------------------------------------
    def dispatched(self, work: Dispatch, owner: str, worker_id: str) -> None:
        self._open[work.run_id, work.target_step_id, work.lease] = _Open(
            work.function_id, worker_id, work.event.traceparent, now_ms(), work.attempt,
            work.max_attempts)
        if len(self._open) > MAX_OPEN_DISPATCHES:
            self._open.popitem(last=False)

    def ops_committed(self, owner: str, batch: OpsBatch, result: AckAction | BaseException,
                      committed_at_ms: int) -> None:
        key = (batch.run_id, batch.target_step_id, batch.lease)
        dispatch = self._open.get(key)
        if dispatch is None:
            return  # forgotten (see MAX_OPEN_DISPATCHES): its trace context is unknown
        rejected = isinstance(result, BaseException) or result is AckAction.REJECTED
        committed_at_ms = min(committed_at_ms, self._ended.get(batch.run_id, committed_at_ms))
        for op in batch.ops:
            span = (_rejected_span(batch, op, dispatch, result, committed_at_ms) if rejected
                    else _op_span(batch, op, dispatch, committed_at_ms))
            if span is not None:
                self._emit_step(batch.run_id, dispatch.trigger, span)
                # Ops after the first in one report (a suspension after a step's deferred
                # result) were reached at its end: their spans are instants at the commit.
                dispatch.mark_ms = committed_at_ms
        dispatch.mark_ms = committed_at_ms
        if result is not AckAction.CONTINUE:
            self._open.pop(key, None)

    def runs_ended(self, ends: Sequence[RunEnd]) -> None:
        for end in ends:
            self._emit_run(end)
            self._ended[end.run_id] = end.ended_at_ms
            if len(self._ended) > MAX_OPEN_DISPATCHES:
                self._ended.popitem(last=False)

    def attempts_lost(self, dispatches: Sequence[tuple[str, str, int]], lost_at_ms: int
                      ) -> None:
        for run_id, target_step_id, lease in dispatches:
            dispatch = self._open.pop((run_id, target_step_id, lease), None)
            if dispatch is None:
                continue  # dispatched by another server (or forgotten)
            end_ms = min(lost_at_ms, self._ended.get(run_id, lost_at_ms))
            self._emit_step(run_id, dispatch.trigger,
                            _lost_span(run_id, target_step_id, lease, dispatch, end_ms))

    # -- spans ----------------------------------------------------------------------------------
    def _emit_run(self, end: RunEnd) -> None:
        trace_id, _ = tp.run_trace(end.run_id, end.traceparent)
        started = tp.run_created_ms(end.run_id) or end.ended_at_ms
        span = _Span(f"stepline.run {end.function_id}", tp.run_span_id(end.run_id), started,
                     end.ended_at_ms, {FUNCTION_ID: end.function_id, RUN_ID: end.run_id,
                                       RUN_OUTCOME: end.status.value})
        if end.status is RunStatus.FAILED:
            span.error = end.error or ErrorInfo("Error", "the run failed")
        elif end.status is RunStatus.CANCELLED:
            reason = end.error.message if end.error else "cancelled"
            span.events.append(("stepline.cancel", {"stepline.cancel.reason": reason}))
        self._emit(span, trace_id, tp.parse(end.traceparent))

    def _emit_step(self, run_id: str, trigger: str | None, span: _Span) -> None:
        run = tp.run_traceparent(run_id, trigger)
        self._emit(span, run.trace_id, run)

    def _emit(self, span: _Span, trace_id: int, parent: tp.TraceParent | None) -> None:
        context = otel_context.Context()
        if parent is not None:
            context = trace.set_span_in_context(NonRecordingSpan(SpanContext(
                parent.trace_id, parent.span_id, is_remote=True,
                trace_flags=TraceFlags(parent.flags & 0xFF))), context)
        token = _CHOSEN.set((trace_id, span.span_id))
        try:
            otel_span = self._tracer.start_span(span.name, context, attributes=span.attributes,
                                                start_time=span.start_ms * 1_000_000)
        finally:
            _CHOSEN.reset(token)
        if not otel_span.is_recording():
            return
        end_ns = max(span.start_ms, span.end_ms) * 1_000_000
        for name, attributes in span.events:
            otel_span.add_event(name, attributes, timestamp=end_ns)
        if span.error is not None:
            otel_span.set_status(Status(StatusCode.ERROR,
                                        f"{span.error.name}: {span.error.message}"))
            otel_span.add_event("exception", _exception(span.error), timestamp=end_ns)
        otel_span.end(end_time=end_ns)


def _exception(error: ErrorInfo) -> Attributes:
    attributes: Attributes = {"exception.type": error.name, "exception.message": error.message}
    if error.stack:
        attributes["exception.stacktrace"] = error.stack
    return attributes


def _step_span(batch: OpsBatch, step_id: str, name: str, kind: str, dispatch: _Open,
               end_ms: int, outcome: str) -> _Span:
    attributes: Attributes = {
        FUNCTION_ID: batch.function_id, RUN_ID: batch.run_id, STEP_ID: step_id,
        STEP_NAME: name, STEP_KIND: str(kind), STEP_ATTEMPT: dispatch.attempt,
        WORKER_ID: dispatch.worker_id, LEASE: batch.lease, STEP_OUTCOME: outcome}
    return _Span(f"stepline.step {name}", tp.step_span_id(batch.run_id, step_id, batch.lease),
                 dispatch.mark_ms, end_ms, attributes)


def _op_span(batch: OpsBatch, op: Op, dispatch: _Open, end_ms: int) -> _Span | None:
    """The span of one committed op (None for ops that are not attempts: plans, the run's
    completion, which its run span shows)."""
    if isinstance(op, StepCompleted):
        span = _step_span(batch, op.step_id, op.name, StepKind.RUN, dispatch, end_ms,
                          "completed")
        dispatch.attempt = 0
        return span
    if isinstance(op, StepFailed | RunFailed):
        final = attempts.is_last(dispatch.attempt, dispatch.max_attempts,
                                 non_retriable=op.non_retriable)
        outcome = "failed" if final else "retry"
        if isinstance(op, StepFailed):
            span = _step_span(batch, op.step_id, op.name, StepKind.RUN, dispatch, end_ms,
                              outcome)
        else:
            span = _step_span(batch, "", batch.function_id, BODY_KIND, dispatch, end_ms, outcome)
            span.name = f"stepline.body {batch.function_id}"
            del span.attributes[STEP_ID]
        span.error = op.error
        if not final:
            retry: Attributes = {"stepline.retry.attempt": dispatch.attempt + 1}
            if op.retry_after_ms is not None:
                retry["stepline.retry.after_ms"] = op.retry_after_ms
            span.events.append(("stepline.retry", retry))
        dispatch.attempt = 0
        return span
    if isinstance(op, Sleep):
        span = _step_span(batch, op.step_id, op.name, StepKind.SLEEP, dispatch, end_ms,
                          "sleeping")
        span.events.append(("stepline.sleep", {"stepline.sleep.until_ms": op.until_ms} if
                            op.until_ms is not None else
                            {"stepline.sleep.duration_ms": op.duration_ms or 0}))
        return span
    if isinstance(op, WaitForEvent):
        span = _step_span(batch, op.step_id, op.name, StepKind.WAIT_FOR_EVENT, dispatch, end_ms,
                          "waiting")
        span.events.append(("stepline.wait", {
            "stepline.wait.event": op.event, "stepline.wait.expression": op.expression,
            "stepline.wait.timeout_ms": op.timeout_ms}))
        return span
    if isinstance(op, Invoke):
        span = _step_span(batch, op.step_id, op.name, StepKind.INVOKE, dispatch, end_ms,
                          "invoking")
        span.attributes["stepline.invoke.function.id"] = op.function_id
        return span
    if isinstance(op, SendEvents):
        span = _step_span(batch, op.step_id, op.name, StepKind.SEND_EVENT, dispatch, end_ms,
                          "sent")
        span.attributes["stepline.send_event.count"] = len(op.events)
        return span
    return None


def _rejected_span(batch: OpsBatch, op: Op, dispatch: _Open, result: AckAction | BaseException,
                   end_ms: int) -> _Span | None:
    """A refused report still ends its step attempts (the worker's spans hang under them)."""
    if not isinstance(op, StepCompleted | StepFailed | Sleep | WaitForEvent | Invoke
                      | SendEvents):
        return None
    span = _step_span(batch, op.step_id, op.name, _KINDS[type(op)], dispatch, end_ms,
                      "rejected")
    reason = str(result) if isinstance(result, BaseException) else "the report was rejected"
    span.error = ErrorInfo("Rejected", reason)
    return span


def _lost_span(run_id: str, target_step_id: str, lease: int, dispatch: _Open, end_ms: int
               ) -> _Span:
    """A dispatch whose worker was lost before reporting: from its dispatch (or last report)
    to the loss. For a parallel step's dispatch it is that step's attempt (the worker's spans
    of the step hang under it); otherwise the function's body, the step being unknown."""
    attributes: Attributes = {
        FUNCTION_ID: dispatch.function_id, RUN_ID: run_id, STEP_ATTEMPT: dispatch.attempt,
        WORKER_ID: dispatch.worker_id, LEASE: lease, STEP_OUTCOME: "lost"}
    if target_step_id:
        attributes |= {STEP_ID: target_step_id, STEP_NAME: target_step_id,
                       STEP_KIND: StepKind.RUN.value}
        name = f"stepline.step {target_step_id}"
    else:
        attributes |= {STEP_NAME: dispatch.function_id, STEP_KIND: BODY_KIND}
        name = f"stepline.body {dispatch.function_id}"
    span = _Span(name, tp.step_span_id(run_id, target_step_id, lease), dispatch.mark_ms,
                 end_ms, attributes)
    span.error = ErrorInfo("WorkerLost", "the worker was lost (crash, kill or broken "
                           "connection) before it reported")
    return span


_KINDS: dict[type, StepKind] = {StepCompleted: StepKind.RUN, StepFailed: StepKind.RUN,
                                Sleep: StepKind.SLEEP, WaitForEvent: StepKind.WAIT_FOR_EVENT,
                                Invoke: StepKind.INVOKE, SendEvents: StepKind.SEND_EVENT}
