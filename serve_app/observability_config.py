"""Config sections for failures and visibility: engine health checks, log format, and request tracing."""

from __future__ import annotations

from importlib.util import find_spec
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What tracing needs beyond vLLM's own dependencies; named in the error when one is missing.
_TRACING_MODULES = {"opentelemetry.sdk": "opentelemetry-sdk",
                    "opentelemetry.exporter.otlp.proto.grpc": "opentelemetry-exporter-otlp-proto-grpc",
                    "opentelemetry.exporter.otlp.proto.http": "opentelemetry-exporter-otlp-proto-http"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthConfig(_Section):
    check_period_s: float = Field(10.0, gt=0, description="How often Serve asks each replica of the model for "
                                                          "its health; three failures in a row replace it.")
    check_timeout_s: float = Field(30.0, gt=0, description="How long one health check may take before it "
                                                           "counts as failed.")
    stall_timeout_s: float = Field(
        120.0, gt=0, description="A replica whose engine has requests in flight but has finished no engine step "
                                 "for this long is hung and fails its health check, so Serve replaces it. Set it "
                                 "above the longest single engine step (a long prefill chunk, a first compile).")


class LoggingSettings(_Section):
    format: Literal["text", "json"] = Field(
        "text", description="Log line format of llmcluster's own loggers in the CLI and every replica: text, or "
                            "json (one object per line: time, level, logger, message, request_id). json also "
                            "switches Serve's own log files to JSON.")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level logged by llmcluster's loggers in the replicas.")


class TracingSettings(_Section):
    otlp_endpoint: str | None = Field(
        None, description="OpenTelemetry collector to send traces to (e.g. http://otel-collector:4317); unset: "
                          "no tracing, and it costs nothing. Each request gets a router span and a model replica "
                          "span (Ray Serve's, with its request id) and an engine span with vLLM's request id.")
    protocol: Literal["grpc", "http/protobuf"] = Field(
        "grpc", description="OTLP transport of the endpoint: grpc (port 4317) or http/protobuf (port 4318).")
    sampling_ratio: float = Field(1.0, ge=0, le=1, description="Share of requests traced (0 to 1).")

    @model_validator(mode="after")
    def _sdk_installed(self) -> TracingSettings:
        if self.otlp_endpoint is None:
            return self
        missing = [package for module, package in _TRACING_MODULES.items() if not _importable(module)]
        if missing:
            raise ValueError(f"router.tracing.otlp_endpoint needs the OpenTelemetry SDK and OTLP exporter: "
                             f"pip install {' '.join(missing)} (or unset otlp_endpoint)")
        return self

    @property
    def enabled(self) -> bool:
        return self.otlp_endpoint is not None


def _importable(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
