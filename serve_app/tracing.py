"""Request tracing on Ray Serve's own tracing: OTLP export, and an engine span carrying vLLM's request id.

Serve makes the spans and carries their context from its proxy to the router replica and on through the
deployment handle to the model replica (each span holds the request id). llmcluster turns it on when
`router.tracing.otlp_endpoint` is set, points its exporter at the collector, and adds one span of its own
around the engine call. With tracing off, Serve makes no span and `engine_span` only looks at the current one."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from serve_app.observability_config import TracingSettings

# Where Serve finds the exporter: it calls it in each of its processes (proxy, replicas).
EXPORTER_IMPORT_PATH = "serve_app.tracing:otlp_span_processors"
# OpenTelemetry's standard variables: how the collector's address reaches each of Serve's processes.
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
PROTOCOL_ENV = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
TRACER_NAME = "llmcluster"


def serve_tracing_config(settings: TracingSettings) -> dict[str, Any] | None:
    """Serve's `tracing_config` (serve.start, and the RayService's serveConfigV2); None when tracing is off."""
    if not settings.enabled:
        return None
    return {"enabled": True, "exporter_import_path": EXPORTER_IMPORT_PATH,
            "sampling_ratio": settings.sampling_ratio}


def exporter_env(settings: TracingSettings) -> dict[str, str]:
    """The environment the exporter reads in every process of Serve; empty when tracing is off."""
    if not settings.enabled:
        return {}
    return {ENDPOINT_ENV: str(settings.otlp_endpoint), PROTOCOL_ENV: settings.protocol}


def otlp_span_processors(tracing_file_name: str) -> list[Any]:
    """Serve's exporter hook: batch-export to the collector the environment names; none if it names none.

    A process without the variable (a proxy on a cluster set up elsewhere) still passes the trace context on;
    only its own span is not exported."""
    endpoint = os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        return []
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if os.environ.get(PROTOCOL_ENV) == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    return [BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))]


def engine_span(request_id: str, engine_request_id: str,
                tracer_provider: Any = None) -> AbstractContextManager[Any]:
    """A child span of the replica's current one around the engine call, when that one is being recorded.

    Free when tracing is off: one context lookup, and opentelemetry is imported only where vLLM already has."""
    try:
        from opentelemetry import trace
    except ImportError:
        return nullcontext()
    if not trace.get_current_span().is_recording():
        return nullcontext()
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
    return tracer.start_as_current_span("vllm.request", attributes={
        "llmcluster.request_id": request_id, "vllm.request_id": engine_request_id})
