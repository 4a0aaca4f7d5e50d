"""Tracing: off costs nothing; on, Serve's spans get an engine child span with vLLM's request id, exported by OTLP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve_app.config import ConfigError, parse_config
from serve_app.observability_config import TracingSettings
from serve_app.tracing import (ENDPOINT_ENV, EXPORTER_IMPORT_PATH, PROTOCOL_ENV, SERVE_EXPORTER_ENV,
                               SERVE_SAMPLING_ENV, engine_span, exporter_env, otlp_span_processors,
                               serve_tracing_config)
from tests.conftest import REPO_ROOT
from tests.otlp_collector import OtlpCollector

ON = TracingSettings(otlp_endpoint="http://collector:4317", sampling_ratio=0.5)


@pytest.fixture
def exported() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def collector() -> Iterator[OtlpCollector]:
    running = OtlpCollector()
    yield running
    running.stop()


def test_off_by_default_with_nothing_for_serve() -> None:
    settings = parse_config({"models": [{"name": "m", "source": "org/m"}]}).router.tracing
    assert not settings.enabled
    assert serve_tracing_config(settings) is None and exporter_env(settings) == {}


def test_on_turns_on_serves_tracing_with_llmclusters_exporter_in_the_replicas_and_the_proxy() -> None:
    assert serve_tracing_config(ON) == {"enabled": True, "exporter_import_path": EXPORTER_IMPORT_PATH,
                                        "sampling_ratio": 0.5}
    # Serve's proxy reads its exporter and sampling from the environment, not from serve.start.
    assert exporter_env(ON) == {ENDPOINT_ENV: "http://collector:4317", PROTOCOL_ENV: "grpc",
                                SERVE_EXPORTER_ENV: EXPORTER_IMPORT_PATH, SERVE_SAMPLING_ENV: "0.5"}


def test_a_missing_sdk_is_a_config_error_naming_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serve_app.observability_config._importable", lambda module: module != "opentelemetry.sdk")
    with pytest.raises(ConfigError, match="router.tracing.*pip install opentelemetry-sdk"):
        parse_config({"router": {"tracing": {"otlp_endpoint": "http://c:4317"}},
                      "models": [{"name": "m", "source": "org/m"}]})


def test_the_engine_span_is_a_child_of_the_replica_span_with_both_request_ids(exported) -> None:  # noqa: ANN001
    provider, exporter = exported
    with provider.get_tracer("serve").start_as_current_span("replica_handle_request model-chat generate"):
        span = engine_span("req-1", "chatcmpl-req-1", tracer_provider=provider)
        with span.current():
            pass
        span.end()
    engine, replica = exporter.get_finished_spans()
    assert engine.name == "vllm.request" and engine.parent.span_id == replica.context.span_id
    assert engine.attributes == {"llmcluster.request_id": "req-1", "vllm.request_id": "chatcmpl-req-1"}


def test_a_streamed_requests_span_lasts_until_its_last_chunk(exported) -> None:  # noqa: ANN001
    provider, exporter = exported

    async def chunks() -> AsyncIterator[str]:
        for chunk in ("data: a\n\n", "data: [DONE]\n\n"):
            await asyncio.sleep(0.05)
            yield chunk

    async def consume() -> list[str]:
        with provider.get_tracer("serve").start_as_current_span("replica"):
            stream = engine_span("req-1", "cmpl-req-1", tracer_provider=provider).ending_with(chunks())
        assert exporter.get_finished_spans()[0].name == "replica"  # the engine span is still open
        return [chunk async for chunk in stream]

    assert asyncio.run(consume()) == ["data: a\n\n", "data: [DONE]\n\n"]
    replica, engine = exporter.get_finished_spans()
    assert engine.name == "vllm.request" and (engine.end_time - engine.start_time) / 1e9 >= 0.1


def test_without_a_recording_span_no_span_is_made(exported) -> None:  # noqa: ANN001
    provider, exporter = exported
    span = engine_span("req-1", "cmpl-req-1", tracer_provider=provider)
    stream = object()
    assert span.ending_with(stream) is stream  # type: ignore[arg-type] - passed through untouched
    with span.current():
        span.end()
    assert exporter.get_finished_spans() == ()


def test_off_the_engine_call_imports_and_starts_nothing_of_opentelemetry() -> None:
    # A fresh interpreter: what the request path loads and starts with tracing off, nothing else around.
    probe = textwrap.dedent("""
        import sys, threading, timeit
        from serve_app.tracing import NOT_TRACED, engine_span
        threads = threading.active_count()
        span = engine_span("req-1", "cmpl-req-1")
        with span.current():
            span.end()
        assert span is NOT_TRACED, span
        assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported opentelemetry"
        assert threading.active_count() == threads
        import opentelemetry.trace  # as in a Serve replica, which loads it whether tracing is on or off
        assert engine_span("req-1", "cmpl-req-1") is NOT_TRACED
        assert type(opentelemetry.trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"  # none set
        assert not [m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))]
        print(min(timeit.repeat(lambda: engine_span("r", "e"), number=10000, repeat=5)) / 10000 * 1e6)
    """)
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    print(f"\nengine_span with tracing off: {float(result.stdout):.2f} µs per request")


def test_serve_accepts_the_exporter_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve._private.tracing_utils import _load_span_processors

    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:1")
    (processor,) = _load_span_processors(EXPORTER_IMPORT_PATH, "replica_tracing.json")
    processor.shutdown()
    monkeypatch.delenv(ENDPOINT_ENV)
    assert otlp_span_processors() == []


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_the_exporter_sends_request_spans_to_a_collector(monkeypatch: pytest.MonkeyPatch, collector: OtlpCollector,
                                                         protocol: str) -> None:
    endpoint = collector.start_grpc() if protocol == "grpc" else collector.start_http()
    monkeypatch.setenv(ENDPOINT_ENV, endpoint)
    monkeypatch.setenv(PROTOCOL_ENV, protocol)
    provider = TracerProvider()
    for processor in otlp_span_processors():
        provider.add_span_processor(processor)
    tracer = provider.get_tracer("serve")
    with tracer.start_as_current_span("replica_handle_request router __call__", attributes={"deployment": "router"}):
        with tracer.start_as_current_span("route_to_replica model-chat generate",
                                          attributes={"deployment": "model-chat"}):
            engine_span("req-1", "chatcmpl-req-1", tracer_provider=provider).end()
    # The cluster's own calls to its helper deployments are not requests: left out.
    tracer.start_span("route_to_replica metrics-hub push", attributes={"deployment": "metrics-hub"}).end()
    provider.shutdown()  # flushes the batch
    spans = {span.name: span for span in collector.spans()}
    assert set(spans) == {"replica_handle_request router __call__", "route_to_replica model-chat generate",
                          "vllm.request"}
    engine, route = spans["vllm.request"], spans["route_to_replica model-chat generate"]
    assert engine.parent_span_id == route.span_id and engine.trace_id == route.trace_id
    assert engine.attributes == {"llmcluster.request_id": "req-1", "vllm.request_id": "chatcmpl-req-1"}
