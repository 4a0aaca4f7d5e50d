"""Tracing: off costs nothing; on, Serve's spans get an engine child span with vLLM's request id, exported by OTLP."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve_app.config import ConfigError, parse_config
from serve_app.observability_config import TracingSettings
from serve_app.tracing import (ENDPOINT_ENV, EXPORTER_IMPORT_PATH, PROTOCOL_ENV, engine_span, exporter_env,
                               otlp_span_processors, serve_tracing_config)

ON = TracingSettings(otlp_endpoint="http://collector:4317", sampling_ratio=0.5)


def test_off_by_default_with_nothing_for_serve() -> None:
    settings = parse_config({"models": [{"name": "m", "source": "org/m"}]}).router.tracing
    assert not settings.enabled
    assert serve_tracing_config(settings) is None and exporter_env(settings) == {}


def test_on_turns_on_serves_tracing_with_llmclusters_exporter() -> None:
    assert serve_tracing_config(ON) == {"enabled": True, "exporter_import_path": EXPORTER_IMPORT_PATH,
                                        "sampling_ratio": 0.5}
    assert exporter_env(ON) == {ENDPOINT_ENV: "http://collector:4317", PROTOCOL_ENV: "grpc"}


def test_a_missing_sdk_is_a_config_error_naming_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serve_app.observability_config._importable", lambda module: module != "opentelemetry.sdk")
    with pytest.raises(ConfigError, match="router.tracing.*pip install opentelemetry-sdk"):
        parse_config({"router": {"tracing": {"otlp_endpoint": "http://c:4317"}},
                      "models": [{"name": "m", "source": "org/m"}]})


def test_the_engine_span_is_a_child_of_the_replica_span_with_both_request_ids() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("serve").start_as_current_span("replica_handle_request model-chat generate"):
        with engine_span("req-1", "chatcmpl-req-1", tracer_provider=provider):
            pass
    engine, replica = exporter.get_finished_spans()
    assert engine.name == "vllm.request" and engine.parent.span_id == replica.context.span_id
    assert engine.attributes == {"llmcluster.request_id": "req-1", "vllm.request_id": "chatcmpl-req-1"}


def test_without_a_recording_span_no_span_is_made() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with engine_span("req-1", "cmpl-req-1", tracer_provider=provider):
        pass
    assert exporter.get_finished_spans() == ()


def test_serves_exporter_hook_exports_where_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    assert otlp_span_processors("replica_tracing.json") == []
    monkeypatch.setenv(ENDPOINT_ENV, "http://collector:4318/v1/traces")
    monkeypatch.setenv(PROTOCOL_ENV, "http/protobuf")
    (processor,) = otlp_span_processors("replica_tracing.json")
    assert isinstance(processor, BatchSpanProcessor)
    assert type(processor.span_exporter).__module__.endswith("proto.http.trace_exporter")
    processor.shutdown()
