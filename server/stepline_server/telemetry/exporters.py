"""A TracerProvider configured the standard way: OTEL_TRACES_EXPORTER (otlp, console, or any
installed exporter's entry point name), OTEL_EXPORTER_OTLP_PROTOCOL (grpc, http/protobuf),
OTEL_EXPORTER_OTLP_ENDPOINT and friends (read by the exporters), OTEL_SERVICE_NAME, and the
sampler (OTEL_TRACES_SAMPLER) and batching (OTEL_BSP_*) variables read by opentelemetry-sdk."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

DEFAULT_SERVICE_NAME = "stepline-server"
# "otlp" by protocol; opentelemetry-sdk's own default is gRPC, and so is ours.
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters asked for ([] when tracing is off: unset, "none", or the SDK disabled)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    return [n for n in names if n and n != "none"]


def provider_from_env(names: list[str], env: Mapping[str, str]) -> TracerProvider:
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    return provider


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "otlp":
        protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip()
        if protocol not in _OTLP_BY_PROTOCOL:
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected one of "
                             f"{sorted(_OTLP_BY_PROTOCOL)}")
        name = _OTLP_BY_PROTOCOL[protocol]
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        known = sorted({"otlp", *(e.name for e in entry_points(
            group="opentelemetry_traces_exporter"))})
        raise ValueError(f"OTEL_TRACES_EXPORTER: no exporter {name!r} is installed; "
                         f"expected one of {known} or none")
    exporter_class = next(iter(found)).load()
    exporter: SpanExporter = exporter_class()
    return exporter
