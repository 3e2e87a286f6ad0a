"""Trace context derived from ids (the server's and the SDK's formulas agree), traceparent
parsing, and the exporters chosen by OTEL_* variables."""

from __future__ import annotations

import os

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from stepline import _tracing
from stepline.v1 import worker_service_pb2
from stepline_server.ids import new_id, now_ms
from stepline_server.model import Dispatch, EventRecord
from stepline_server.telemetry import exporters, tracing_from_env
from stepline_server.telemetry import traceparent as tp

SENDER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_sdk_derives_the_servers_step_attempt_span_ids() -> None:
    for run_id, step_id, lease in [("any-run", "fetch", 1),
                                   (new_id(), "save:2", 17), (new_id(), "", 3)]:
        assert _tracing.step_span_id(run_id, step_id, lease) == tp.step_span_id(
            run_id, step_id, lease)


def test_traceparent_parsing() -> None:
    parsed = tp.parse(SENDER)
    assert parsed == tp.TraceParent(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1)
    assert parsed.header() == SENDER
    assert tp.normalize(SENDER.upper()) == SENDER
    for bad in ("", "garbage", SENDER[:-1], "ff" + SENDER[2:], SENDER + "-extra",
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"):
        assert tp.parse(bad) is None, bad
    assert tp.parse("01" + SENDER[2:] + "-future") is not None  # later versions may extend it
    assert tp.from_metadata([("user-agent", "x"), ("traceparent", SENDER)]) == SENDER
    assert tp.from_metadata(None) is None


def test_a_run_without_a_traced_trigger_has_a_trace_named_by_its_id() -> None:
    run_id = new_id()
    trace_id, flags = tp.run_trace(run_id, None)
    assert trace_id == tp.ulid_value(run_id) and flags == tp.SAMPLED
    assert abs(tp.run_created_ms(run_id) - now_ms()) < 1000  # type: ignore[operator]
    assert tp.run_trace(run_id, SENDER) == (0x0AF7651916CD43DD8448EB211C80319C, 1)
    assert tp.run_trace("not-a-ulid", None)[0] > 0
    assert tp.run_created_ms("not-a-ulid") is None


def test_the_dispatch_carries_the_run_span_or_the_parallel_steps_attempt_span() -> None:
    run_id = new_id()
    event = EventRecord(id="e1", name="test/e", data="{}", ts_ms=0, traceparent=SENDER)
    work = Dispatch(run_id=run_id, function_id="f", lease=4, attempt=0, max_attempts=1,
                    event=event, steps=())
    assert tp.for_dispatch(work) == tp.run_traceparent(run_id, SENDER).header()
    parallel = Dispatch(run_id=run_id, function_id="f", lease=2, attempt=0, max_attempts=1,
                        event=event, steps=(), target_step_id="left")
    header = tp.for_dispatch(parallel)
    span_id = tp.step_span_id(run_id, "left", 2)
    assert header == f"00-0af7651916cd43dd8448eb211c80319c-{span_id:016x}-01"
    # The SDK puts its step spans under the same span.
    trace = _tracing.RunTrace(worker_service_pb2.Dispatch(
        run_id=run_id, function_id="f", lease=2, traceparent=header), function_id="app:f")
    assert trace.parent is not None
    assert _tracing.header(trace.parent) == header


@pytest.mark.parametrize(("env", "exporter"), [
    ({"OTEL_TRACES_EXPORTER": "console"}, ConsoleSpanExporter),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, GrpcExporter),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     HttpExporter),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
      "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, GrpcExporter),
])
def test_exporters_follow_the_otel_variables(env: dict[str, str], exporter: type) -> None:
    names = exporters.exporter_names(env)
    assert isinstance(exporters._exporter(names[0], env), exporter)


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    for env in ({}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": " "},
                {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}):
        assert tracing_from_env(env=env) is None
    tracing = tracing_from_env(env={"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None
    expected = os.environ.get("OTEL_SERVICE_NAME") or "stepline-server"
    assert tracing.provider.resource.attributes["service.name"] == expected
    tracing.shutdown()


def test_an_unknown_exporter_or_protocol_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="no exporter 'zipkin' is installed"):
        exporters._exporter("zipkin", {})
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL='carrier-pigeon'"):
        exporters._exporter("otlp", {"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})
