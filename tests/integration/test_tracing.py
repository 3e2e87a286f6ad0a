"""OpenTelemetry traces: the span tree of runs and steps on the server and in the worker, one
trace from the sender's span to a user span in the last step (across a sleep), errors and
retries, cancellations, invokes and sent events, and nothing at all when tracing is off."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from stepline import Stepline
from stepline.v1 import common_pb2
from stepline.v1 import event_service_pb2 as es
from stepline.v1 import run_service_pb2 as rs
from stepline.v1.event_service_pb2_grpc import EventServiceStub
from stepline_server.telemetry import traceparent
from tests.harness import ServerThread, WorkerThread, wait_until
from tests.integration.rawworker import RawWorker, function

Spans = Sequence[ReadableSpan]


class _Recorder(SimpleSpanProcessor):
    """Exports only while a test records (the global provider outlives the tests)."""

    recording = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.recording:
            super().on_end(span)


@pytest.fixture(scope="session")
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter, _Recorder]]:
    # The global provider (which the SDK's spans and the user's use) can be set once per
    # process: one for the session, shared with the servers under test.
    exporter = InMemorySpanExporter()
    recorder = _Recorder(exporter)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(recorder)
    trace.set_tracer_provider(tracer_provider)
    assert trace.get_tracer_provider() is tracer_provider, "another global provider was set"
    yield tracer_provider, exporter, recorder
    tracer_provider.shutdown()


@pytest.fixture
def spans(provider: tuple[TracerProvider, InMemorySpanExporter, _Recorder]
          ) -> Iterator[InMemorySpanExporter]:
    _, exporter, recorder = provider
    exporter.clear()
    recorder.recording = True
    yield exporter
    recorder.recording = False
    exporter.clear()


@pytest.fixture
def traced_server(make_server: Callable[..., ServerThread],
                  provider: tuple[TracerProvider, Any, Any]) -> ServerThread:
    return make_server(tracer_provider=provider[0])


tracer = trace.get_tracer("tests")


def named(spans: Spans, name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Spans, name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, f"{len(found)} spans named {name!r} in {[s.name for s in spans]}"
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def wait_spans(exporter: InMemorySpanExporter, *names: str) -> Spans:
    """The finished spans once all of `names` are there (server spans end after commits)."""
    def done() -> bool:
        have = {s.name for s in exporter.get_finished_spans()}
        return all(n in have for n in names)

    wait_until(done, what=f"spans {names}")
    return exporter.get_finished_spans()


WORKER_ID = "tracing-worker"


def start(server: ServerThread, start_worker: Callable[..., WorkerThread], app: Stepline
          ) -> None:
    app.register_sync()
    start_worker(app, worker_id=WORKER_ID)


def test_one_trace_from_the_sender_to_the_last_step_across_a_sleep(
        traced_server: ServerThread, start_worker: Callable[..., WorkerThread],
        spans: InMemorySpanExporter) -> None:
    app = Stepline("traced", url=traced_server.address)

    @app.function(id="traced", trigger="test/traced")
    async def traced(ctx: Any) -> int:
        def fetch() -> int:  # a plain function: runs in the step pool, in the step's context
            with tracer.start_as_current_span("user.fetch"):
                return 1

        async def save(value: int) -> int:
            with tracer.start_as_current_span("user.save"):
                return value + 1

        value = await ctx.step.run("fetch", fetch)
        await ctx.step.sleep("nap", 0.3)
        return await ctx.step.run("save", save, value)  # type: ignore[no-any-return]

    start(traced_server, start_worker, app)
    with tracer.start_as_current_span("sender") as sending:
        app.send_sync("test/traced", {})
    [run_id] = traced_server.run_ids_for("traced:traced")
    assert traced_server.wait_run(run_id).status == rs.RUN_STATUS_COMPLETED
    finished = wait_spans(spans, "stepline.run traced:traced")

    sender, run = one(finished, "sender"), one(finished, "stepline.run traced:traced")
    fetch, nap = one(finished, "stepline.step fetch"), one(finished, "stepline.step nap")
    save = one(finished, "stepline.step save")
    fetch_exec, save_exec = (one(finished, "stepline.execute fetch"),
                             one(finished, "stepline.execute save"))
    user_fetch, user_save = one(finished, "user.fetch"), one(finished, "user.save")
    tree = [sender, run, fetch, nap, save, fetch_exec, save_exec, user_fetch, user_save]
    assert {trace_id(s) for s in tree} == {sending.get_span_context().trace_id}
    assert parent_id(run) == span_id(sender)
    assert [parent_id(s) for s in (fetch, nap, save)] == [span_id(run)] * 3
    assert parent_id(fetch_exec) == span_id(fetch)
    assert parent_id(save_exec) == span_id(save)
    assert parent_id(user_fetch) == span_id(fetch_exec)
    assert parent_id(user_save) == span_id(save_exec)

    assert dict(run.attributes or {}) == {
        "stepline.function.id": "traced:traced", "stepline.run.id": run_id,
        "stepline.run.outcome": "completed"}
    fetch_attributes = dict(fetch.attributes or {})
    assert fetch_attributes.pop("stepline.lease") == 1
    assert fetch_attributes == {
        "stepline.function.id": "traced:traced", "stepline.run.id": run_id,
        "stepline.step.id": "fetch", "stepline.step.name": "fetch", "stepline.step.kind": "run",
        "stepline.step.attempt": 0, "stepline.worker.id": WORKER_ID,
        "stepline.step.outcome": "completed"}
    assert (nap.attributes or {})["stepline.step.kind"] == "sleep"
    assert [(e.name, dict(e.attributes or {})) for e in nap.events] == [
        ("stepline.sleep", {"stepline.sleep.duration_ms": 300})]
    assert (save.attributes or {})["stepline.lease"] == 2  # dispatched again after the nap
    assert dict(save_exec.attributes or {}) == {
        "stepline.function.id": "traced:traced", "stepline.run.id": run_id,
        "stepline.step.id": "save", "stepline.step.name": "save", "stepline.step.attempt": 0,
        "stepline.step.outcome": "completed"}

    def times(span: ReadableSpan) -> tuple[int, int]:
        assert span.start_time is not None and span.end_time is not None
        return span.start_time, span.end_time

    assert times(run)[0] <= times(fetch)[0] <= times(fetch_exec)[0]
    assert times(fetch_exec)[1] <= times(fetch)[1] <= times(nap)[1]
    assert times(save)[0] - times(nap)[1] >= 250_000_000  # the nap, on the server's clock
    assert times(save)[1] <= times(run)[1]


def test_a_failed_attempt_has_an_error_status_and_a_retry_event(
        traced_server: ServerThread, start_worker: Callable[..., WorkerThread],
        spans: InMemorySpanExporter) -> None:
    app = Stepline("flaky", url=traced_server.address)

    @app.function(id="flaky", trigger="test/flaky", retries=1)
    async def flaky(ctx: Any) -> str:
        async def call() -> str:
            if ctx.attempt == 0:
                raise ValueError("the service is down")
            return "ok"

        return await ctx.step.run("call", call)  # type: ignore[no-any-return]

    @app.function(id="doomed", trigger="test/doomed", retries=0)
    async def doomed(ctx: Any) -> None:
        def call() -> None:
            raise RuntimeError("no way")

        await ctx.step.run("call", call)

    start(traced_server, start_worker, app)
    app.send_sync("test/flaky", {})
    app.send_sync("test/doomed", {})
    for function_id in ("flaky:flaky", "flaky:doomed"):
        traced_server.wait_run(traced_server.run_ids_for(function_id)[0])
    finished = wait_spans(spans, "stepline.run flaky:flaky", "stepline.run flaky:doomed")

    flaky_run = one(finished, "stepline.run flaky:flaky")
    attempts = sorted((s for s in named(finished, "stepline.step call")
                       if trace_id(s) == trace_id(flaky_run)),
                      key=lambda s: (s.attributes or {})["stepline.step.attempt"])
    failed, retried = attempts
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: the service is down"
    assert (failed.attributes or {})["stepline.step.outcome"] == "retry"
    events = {e.name: dict(e.attributes or {}) for e in failed.events}
    assert events["exception"]["exception.type"] == "ValueError"
    assert events["exception"]["exception.message"] == "the service is down"
    assert "Traceback" in str(events["exception"]["exception.stacktrace"])
    assert events["stepline.retry"] == {"stepline.retry.attempt": 1}
    assert (retried.attributes or {})["stepline.step.outcome"] == "completed"
    assert (retried.attributes or {})["stepline.step.attempt"] == 1
    assert retried.status.status_code is StatusCode.UNSET
    assert flaky_run.status.status_code is StatusCode.UNSET

    executions = sorted((s for s in named(finished, "stepline.execute call")
                         if trace_id(s) == trace_id(flaky_run)),
                        key=lambda s: (s.attributes or {})["stepline.step.attempt"])
    assert [parent_id(s) for s in executions] == [span_id(failed), span_id(retried)]
    assert executions[0].status.status_code is StatusCode.ERROR
    assert [e.name for e in executions[0].events] == ["exception"]

    doomed_run = one(finished, "stepline.run flaky:doomed")
    assert doomed_run.status.status_code is StatusCode.ERROR
    assert "no way" in str(doomed_run.status.description)
    assert (doomed_run.attributes or {})["stepline.run.outcome"] == "failed"
    body = one(finished, "stepline.body flaky:doomed")  # the StepError escaped the function
    assert parent_id(body) == span_id(doomed_run)
    assert (body.attributes or {})["stepline.step.kind"] == "body"
    assert body.status.status_code is StatusCode.ERROR


def test_a_wait_has_a_wait_event_and_a_cancelled_run_a_cancellation_event(
        traced_server: ServerThread, start_worker: Callable[..., WorkerThread],
        spans: InMemorySpanExporter) -> None:
    app = Stepline("patient", url=traced_server.address)

    @app.function(id="patient", trigger="test/patient")
    async def patient(ctx: Any) -> None:
        await ctx.step.wait_for_event("reply", event="test/reply", timeout="1h",
                                      if_="async.data.to == 'me'")

    start(traced_server, start_worker, app)
    app.send_sync("test/patient", {})
    [run_id] = traced_server.run_ids_for("patient:patient")
    traced_server.wait_run(run_id, statuses={rs.RUN_STATUS_WAITING})
    traced_server.runs.CancelRun(rs.CancelRunRequest(run_id=run_id, reason="not needed"))
    finished = wait_spans(spans, "stepline.run patient:patient")
    wait = one(finished, "stepline.step reply")
    assert (wait.attributes or {})["stepline.step.kind"] == "wait_for_event"
    assert (wait.attributes or {})["stepline.step.outcome"] == "waiting"
    assert [(e.name, dict(e.attributes or {})) for e in wait.events] == [
        ("stepline.wait", {"stepline.wait.event": "test/reply",
                           "stepline.wait.expression": "async.data.to == 'me'",
                           "stepline.wait.timeout_ms": 3_600_000})]
    run = one(finished, "stepline.run patient:patient")
    assert (run.attributes or {})["stepline.run.outcome"] == "cancelled"
    assert [(e.name, dict(e.attributes or {})) for e in run.events] == [
        ("stepline.cancel", {"stepline.cancel.reason": "not needed"})]
    assert run.status.status_code is StatusCode.UNSET


def test_plain_functions_nest_user_spans_too(
        traced_server: ServerThread, start_worker: Callable[..., WorkerThread],
        spans: InMemorySpanExporter) -> None:
    app = Stepline("plain", url=traced_server.address)

    @app.function(id="plain", trigger="test/plain")
    def plain(ctx: Any) -> None:  # runs in the body pool; its steps go through the loop
        def inner() -> None:
            with tracer.start_as_current_span("user.inner"):
                pass

        with tracer.start_as_current_span("user.body"):
            ctx.step.run("inner", inner)

    start(traced_server, start_worker, app)
    app.send_sync("test/plain", {})
    traced_server.wait_run(traced_server.run_ids_for("plain:plain")[0])
    finished = wait_spans(spans, "stepline.run plain:plain")
    run, body = one(finished, "stepline.run plain:plain"), one(finished, "user.body")
    assert parent_id(body) == span_id(run)
    step, execution = one(finished, "stepline.step inner"), one(finished, "stepline.execute inner")
    assert parent_id(step) == span_id(run)
    assert parent_id(execution) == span_id(step)
    assert parent_id(one(finished, "user.inner")) == span_id(execution)


def test_a_send_event_call_traced_by_grpc_metadata_continues_its_trace(
        traced_server: ServerThread, start_worker: Callable[..., WorkerThread],
        spans: InMemorySpanExporter) -> None:
    app = Stepline("metadata", url=traced_server.address)

    @app.function(id="metadata", trigger="test/metadata")
    async def metadata(ctx: Any) -> None:
        pass

    start(traced_server, start_worker, app)
    sender = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with grpc.insecure_channel(traced_server.address) as channel:
        EventServiceStub(channel).SendEvent(
            es.SendEventRequest(events=[common_pb2.Event(name="test/metadata")]),
            metadata=[("traceparent", sender)])
    name = "stepline.run metadata:metadata"
    run = one(wait_spans(spans, name), name)
    assert f"{trace_id(run):032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert parent_id(run) == 0xB7AD6B7169203331


def test_invoked_runs_and_runs_of_sent_events_continue_the_trace(
        traced_server: ServerThread, start_worker: Callable[..., WorkerThread],
        spans: InMemorySpanExporter) -> None:
    app = Stepline("family", url=traced_server.address)

    @app.function(id="child", trigger="test/child")
    async def child(ctx: Any) -> int:
        return await ctx.step.run("work", lambda: 2)  # type: ignore[no-any-return]

    @app.function(id="listener", trigger="test/told")
    async def listener(ctx: Any) -> None:
        await ctx.step.run("hear", lambda: None)

    @app.function(id="parent", trigger="test/parent")
    async def parent(ctx: Any) -> int:
        result = await ctx.step.invoke("ask", function=child)
        await ctx.step.send_event("tell", {"name": "test/told", "data": {}})
        a, b = await asyncio.gather(ctx.step.run("left", lambda: 1),
                                    ctx.step.run("right", lambda: 2))
        return result + a + b  # type: ignore[no-any-return]

    start(traced_server, start_worker, app)
    app.send_sync("test/parent", {})  # no span around it: the parent's trace is its own
    [run_id] = traced_server.run_ids_for("family:parent")
    assert traced_server.wait_run(run_id).status == rs.RUN_STATUS_COMPLETED
    finished = wait_spans(spans, "stepline.run family:parent", "stepline.run family:child",
                          "stepline.run family:listener")
    parent_run = one(finished, "stepline.run family:parent")
    assert parent_run.parent is None
    assert trace_id(parent_run) == traceparent.ulid_value(run_id)  # named by the run id
    ask, tell = one(finished, "stepline.step ask"), one(finished, "stepline.step tell")
    assert (ask.attributes or {})["stepline.step.kind"] == "invoke"
    assert (tell.attributes or {})["stepline.step.kind"] == "send_event"
    child_run, listener_run = (one(finished, "stepline.run family:child"),
                               one(finished, "stepline.run family:listener"))
    assert parent_id(child_run) == span_id(ask)
    assert parent_id(listener_run) == span_id(tell)
    assert parent_id(one(finished, "stepline.step work")) == span_id(child_run)
    assert {trace_id(s) for s in finished} == {trace_id(parent_run)}
    for name in ("left", "right"):  # parallel steps: a dispatch each
        step = one(finished, f"stepline.step {name}")
        assert parent_id(step) == span_id(parent_run)
        assert parent_id(one(finished, f"stepline.execute {name}")) == span_id(step)


def test_tracing_off_registers_nothing_and_emits_no_server_span(
        make_server: Callable[..., ServerThread], start_worker: Callable[..., WorkerThread],
        spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    server = make_server()
    assert server.server.tracing is None
    assert not server.server.engine.observers  # nothing is told (the dashboard is off too)
    app = Stepline("untraced", url=server.address)

    @app.function(id="untraced", trigger="test/untraced")
    async def untraced(ctx: Any) -> None:
        await ctx.step.run("one", lambda: None)

    start(server, start_worker, app)
    app.send_sync("test/untraced", {})
    server.wait_run(server.run_ids_for("untraced:untraced")[0])
    # The worker still traces its steps (this process has an OpenTelemetry SDK); the server
    # records nothing.
    finished = wait_spans(spans, "stepline.execute one")
    assert [s.name for s in finished if s.name.startswith(("stepline.run", "stepline.step"))
            ] == []


def test_an_attempt_whose_worker_is_lost_ends_with_a_lost_span(
        traced_server: ServerThread, spans: InMemorySpanExporter) -> None:
    raw = RawWorker(traced_server.address, [function("fragile", "test/fragile", retries=2)])
    raw.expect("welcome")
    response = EventServiceStub(grpc.insecure_channel(traced_server.address)).SendEvent(
        es.SendEventRequest(events=[common_pb2.Event(name="test/fragile", data=b"{}")]))
    (run_id,) = response.run_ids
    dispatch = raw.expect("dispatch")
    raw.close()  # the worker dies holding the run
    lost = one(wait_spans(spans, "stepline.body raw:fragile"), "stepline.body raw:fragile")

    assert lost.status.status_code is StatusCode.ERROR
    assert lost.status.description is not None
    assert lost.status.description.startswith("WorkerLost: ")
    attributes = dict(lost.attributes or {})
    assert attributes["stepline.step.outcome"] == "lost"
    assert attributes["stepline.run.id"] == run_id
    assert attributes["stepline.lease"] == dispatch.lease
    assert attributes["stepline.worker.id"] == "raw"
    assert parent_id(lost) == traceparent.run_span_id(run_id)
    assert span_id(lost) == traceparent.step_span_id(run_id, "", dispatch.lease)
    # The attempt was used up; the run goes on with its next one.
    run = traced_server.get_run(run_id)
    assert run.attempt == 1 and run.status == rs.RUN_STATUS_RUNNING
