"""Request tracing on Ray Serve's own tracing: OTLP export, and an engine span carrying vLLM's request id.

Serve makes the spans and carries their context from its proxy to the router replica and on through the
deployment handle to the model replica (each span holds the request id). llmcluster turns it on when
`router.tracing.otlp_endpoint` is set, points its exporter at the collector, and adds one span of its own
around the engine request. With tracing off, Serve makes no span and `engine_span` only looks at the current one."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from serve_app.observability_config import TracingSettings

# Where Serve finds the exporter: it calls it in each of its processes (proxy, replicas).
EXPORTER_IMPORT_PATH = "serve_app.tracing:otlp_span_processors"
# OpenTelemetry's standard variables: how the collector's address reaches each of Serve's processes.
ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
PROTOCOL_ENV = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
# Ray 2.60's proxy never receives serve.start's tracing_config (ray-project/ray PR 65437 would pass it on):
# it reads these variables instead, so without them the proxy neither traces nor passes a client's trace on.
SERVE_EXPORTER_ENV = "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"
SERVE_SAMPLING_ENV = "RAY_SERVE_TRACING_SAMPLING_RATIO"
TRACER_NAME = "llmcluster"


def serve_tracing_config(settings: TracingSettings) -> dict[str, Any] | None:
    """Serve's `tracing_config` (serve.start, and the RayService's serveConfigV2); None when tracing is off."""
    if not settings.enabled:
        return None
    return {"enabled": True, "exporter_import_path": EXPORTER_IMPORT_PATH,
            "sampling_ratio": settings.sampling_ratio}


def exporter_env(settings: TracingSettings) -> dict[str, str]:
    """The environment the exporter (and Serve's proxy) reads in every process of Serve; empty when off."""
    if not settings.enabled:
        return {}
    return {ENDPOINT_ENV: str(settings.otlp_endpoint), PROTOCOL_ENV: settings.protocol,
            SERVE_EXPORTER_ENV: EXPORTER_IMPORT_PATH, SERVE_SAMPLING_ENV: str(settings.sampling_ratio)}


def otlp_span_processors() -> list[Any]:
    """Serve's exporter hook (Serve calls it with no arguments): batch-export the spans of requests to the
    collector the environment names; none if it names none.

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
    return [_request_spans_only(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))]


def _request_spans_only(processor: Any) -> Any:
    """`processor`, passed only the spans of requests: Serve also traces every call the cluster makes to its
    own helper deployments (each replica pushes metrics every few seconds), which would bury the requests."""
    from opentelemetry.sdk.trace import SpanProcessor

    from serve_app.names import MODEL_DEPLOYMENT_PREFIX, ROUTER_DEPLOYMENT

    class RequestSpansOnly(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            processor.on_start(span, parent_context=parent_context)

        def on_end(self, span: Any) -> None:
            deployment = (span.attributes or {}).get("deployment")
            if deployment in (None, ROUTER_DEPLOYMENT) or str(deployment).startswith(MODEL_DEPLOYMENT_PREFIX):
                processor.on_end(span)

        def shutdown(self) -> None:
            processor.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return processor.force_flush(timeout_millis)

    return RequestSpansOnly()


class EngineSpan:
    """The span of one engine request, a child of the model replica's span; does nothing when not traced."""

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def current(self) -> AbstractContextManager[Any]:
        """The span as the current one while vLLM takes the request."""
        if self._span is None:
            return nullcontext()
        from opentelemetry import trace

        return trace.use_span(self._span, end_on_exit=False)

    def end(self) -> None:
        if self._span is not None:
            self._span.end()

    def ending_with(self, stream: AsyncIterator[str]) -> AsyncIterator[str]:
        """`stream`, and the span ends when it does: a streamed request lasts until its last chunk."""
        return stream if self._span is None else self._ended_after(stream)

    async def _ended_after(self, stream: AsyncIterator[str]) -> AsyncIterator[str]:
        try:
            async for chunk in stream:
                yield chunk
        finally:
            self.end()


NOT_TRACED = EngineSpan()


def engine_span(request_id: str, engine_request_id: str, tracer_provider: Any = None) -> EngineSpan:
    """The engine request's span, started when the replica's current span is being recorded.

    Free when tracing is off: one context lookup, and no import (a span can only be recording where something
    has loaded OpenTelemetry; Serve's replicas load it whether tracing is on or off)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None or not trace.get_current_span().is_recording():
        return NOT_TRACED
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
    return EngineSpan(tracer.start_span("vllm.request", attributes={
        "llmcluster.request_id": request_id, "vllm.request_id": engine_request_id}))
