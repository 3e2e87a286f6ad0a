"""Tracing in the worker: a span around each step execution, child of the server's span for that
step attempt, and the traceparent that events sent from the app carry.

Only opentelemetry-api is used: with no OpenTelemetry SDK configured in the process, spans are
no-ops and nothing is recorded. The server's step attempt span is not sent to the worker; its id
is derived from (run id, step id, lease) with the server's formula (the server's
telemetry/traceparent.py; tests/unit/test_traceparent.py keeps both equal), under the trace of
the dispatch's traceparent (the run span).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from stepline.v1 import common_pb2, worker_service_pb2

_tracer = trace.get_tracer("stepline")  # follows the global provider, even one set later
_propagator = TraceContextTextMapPropagator()


def step_span_id(run_id: str, step_id: str, lease: int) -> int:
    """The span id the server gives `step_id`'s attempt under `lease`."""
    digest = hashlib.sha256(f"{run_id}\0{step_id}\0{lease}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def header(span: SpanContext) -> str:
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags):02x}"


def parse(traceparent: str) -> SpanContext | None:
    if not traceparent:
        return None
    context = _propagator.extract({"traceparent": traceparent})
    span = trace.get_current_span(context).get_span_context()
    return span if span.is_valid else None


def current_traceparent() -> str:
    """The active span's traceparent, or "" when there is none."""
    span = trace.get_current_span().get_span_context()
    return header(span) if span.is_valid else ""


def stamp(events: Iterable[common_pb2.Event]) -> None:
    """Events sent inside a traced request continue its trace (runs they start nest under it)."""
    traceparent = current_traceparent()
    if traceparent:
        for event in events:
            if not event.traceparent:
                event.traceparent = traceparent


class RunTrace:
    """The trace context of one dispatch, for its body and its steps."""

    def __init__(self, dispatch: worker_service_pb2.Dispatch, *, function_id: str) -> None:
        self.run_id = dispatch.run_id
        # The full name, as the server's spans have it (Dispatch has the id within the app).
        self.function_id = function_id
        self.lease = dispatch.lease
        # The run span (or, for one parallel step, that step's attempt span).
        self.parent = parse(dispatch.traceparent)
        # Dispatch.attempt counts attempts of the first step this dispatch executes; a later
        # step in the same dispatch is on its first attempt.
        self._attempt = dispatch.attempt

    def body_context(self) -> otel_context.Context | None:
        """What the function body runs in: user spans outside steps nest under the run span."""
        if self.parent is None:
            return None
        return trace.set_span_in_context(NonRecordingSpan(self.parent))

    def _step_attempt(self, step_id: str) -> SpanContext | None:
        if self.parent is None:
            return None
        return SpanContext(self.parent.trace_id, step_span_id(self.run_id, step_id, self.lease),
                           is_remote=True, trace_flags=TraceFlags(self.parent.trace_flags))

    @contextmanager
    def step_span(self, step_id: str, name: str) -> Iterator[None]:
        """The span of one step execution; user spans inside the step nest under it."""
        attempt, self._attempt = self._attempt, 0
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            yield  # no OpenTelemetry SDK in this process (yet): spans would be no-ops
            return
        parent = self._step_attempt(step_id)
        context = None if parent is None else trace.set_span_in_context(NonRecordingSpan(parent))
        span = _tracer.start_span(f"stepline.execute {name}", context, attributes={
            "stepline.function.id": self.function_id, "stepline.run.id": self.run_id,
            "stepline.step.id": step_id, "stepline.step.name": name,
            "stepline.step.attempt": attempt})
        with trace.use_span(span, end_on_exit=True, record_exception=False,
                            set_status_on_exception=False):
            try:
                yield
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                span.set_attribute("stepline.step.outcome", "failed")
                raise
            span.set_attribute("stepline.step.outcome", "completed")

    def event_traceparent(self, step_id: str) -> str:
        """For events of a send_event step: the span the user opened around it, else the
        server's span of that step (so the runs they start nest under it)."""
        current = trace.get_current_span().get_span_context()
        if current.is_valid and (self.parent is None or current.span_id != self.parent.span_id):
            return header(current)
        step = self._step_attempt(step_id)
        return "" if step is None else header(step)
