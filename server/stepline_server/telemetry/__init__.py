"""OpenTelemetry traces of runs and steps (tracing.py), the trace context they share with
workers and events (traceparent.py), and exporters chosen by the standard OTEL_* variables
(exporters.py). Off unless OTEL_TRACES_EXPORTER names an exporter or a provider is passed in;
when off, opentelemetry-sdk is not even imported."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from stepline_server.telemetry.tracing import Tracing


def tracing_from_env(tracer_provider: TracerProvider | None = None,
                     env: Mapping[str, str] | None = None) -> Tracing | None:
    """The tracing observer for a server: on `tracer_provider` (an opentelemetry-sdk
    TracerProvider, owned by the caller) if given, else on a provider built from OTEL_*
    variables (owned by the server); None when tracing is off."""
    if tracer_provider is not None:
        from stepline_server.telemetry.tracing import Tracing

        return Tracing(tracer_provider)
    from stepline_server.telemetry.exporters import exporter_names

    names = exporter_names(os.environ if env is None else env)
    if not names:
        return None
    from stepline_server.telemetry.exporters import provider_from_env
    from stepline_server.telemetry.tracing import Tracing

    return Tracing(provider_from_env(names, os.environ if env is None else env), owned=True)
