"""Starts the real stack (`llmcluster serve`: Ray Serve, router, vLLM on CPU) once for the e2e tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.otlp_collector import OtlpCollector

CLI = str(Path(sys.executable).parent / "llmcluster")
# Cold start on 2 cores: Ray (~10 s), a first-time GGUF conversion (~40 s), the engine (~40 s).
START_TIMEOUT_S = 420
STOP_TIMEOUT_S = 90
# The session stack serves an embedding model beside the demo chat model: the demo weights on vLLM's pooling
# runner (last-token pooling), told they are Matryoshka-trained so that `dimensions` can be checked too.
EMBED_MODEL = "smollm2-embed"
EMBED_MODEL_CONFIG = {
    "name": EMBED_MODEL, "source": "builtin:smollm2-135m-instruct", "task": "embed",
    "engine": {"dtype": "float32", "max_model_len": 2048, "enforce_eager": True,
               "kv_cache_memory_bytes": 128 * 1024**2, "hf_overrides": {"is_matryoshka": True}},
    # Half a core: with the demo model's one and the router's quarter, it fits a 2-core machine.
    "resources": {"device": "cpu", "cpus_per_worker": 0.5},
    "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
# Serve's exporters send their batch every second instead of every 5 s: a test waits less for its spans.
QUICK_EXPORT_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "1000"}
# Ray's driver merges log lines of one pattern that come from several processes (two engines both log
# "Added request <id>") into "[repeated Nx]": the tests that look for one request's lines need every line.
EVERY_LOG_LINE_ENV = {"RAY_DEDUP_LOGS": "0"}


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(config: Path, log: Path, extra_env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = ()) -> Server:
    port = free_port()
    env = {**os.environ, **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    with log.open("wb") as out:
        process = subprocess.Popen([CLI, "serve", str(config), "--port", str(port), *extra_args], cwd=REPO_ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(process, port, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llmcluster serve exited with {process.returncode}:\n{server.log_tail()}")
        if "ready in" in log.read_text(errors="replace"):
            return server
        time.sleep(2)
    stop_server(server)
    raise RuntimeError(f"llmcluster serve not ready after {START_TIMEOUT_S}s:\n{server.log_tail()}")


def stop_server(server: Server) -> int:
    """SIGTERM, as a service manager sends it; returns the exit code."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        raise


def cli_status(*extra: str, server: Server | None = None) -> dict:
    """`llmcluster status --json`: asks `server`'s router (else the stack recorded last) and, failing that, Ray."""
    return timed_cli_status(*extra, server=server)[0]


def timed_cli_status(*extra: str, server: Server | None = None) -> tuple[dict, float]:
    """The status document and the seconds the command took, start-up included."""
    url = ("--url", server.base_url) if server else ()
    started = time.monotonic()
    result = subprocess.run([CLI, "status", "--json", *url, *extra], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout), seconds


def traced_config(config: Path, collector: OtlpCollector, folder: Path, *extra_models: dict) -> Path:
    """A copy of `config` in `folder` whose requests are traced to `collector`, serving `extra_models` too."""
    data = yaml.safe_load(config.read_text())
    data.setdefault("router", {})["tracing"] = {"otlp_endpoint": collector.endpoint}
    data["models"].extend(extra_models)
    traced = folder / config.name
    traced.write_text(yaml.safe_dump(data))
    return traced


@pytest.fixture(scope="session")
def collector() -> Iterator[OtlpCollector]:
    """The OpenTelemetry collector the session's stack sends its traces to (OTLP over gRPC, the default)."""
    running = OtlpCollector()
    running.start_grpc()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, collector: OtlpCollector) -> Iterator[Server]:
    """The demo config as shipped plus the embedding model, with tracing on: every request of the tests on it is
    traced as well."""
    folder = tmp_path_factory.mktemp("serve")
    config = traced_config(REPO_ROOT / "configs" / "local.yaml", collector, folder, EMBED_MODEL_CONFIG)
    started = time.monotonic()
    running = start_server(config, folder / "serve.log", extra_env=QUICK_EXPORT_ENV | EVERY_LOG_LINE_ENV)
    print(f"\nllmcluster serve ready in {time.monotonic() - started:.0f}s on port {running.port}")
    yield running
    assert stop_server(running) == 0, running.log_tail()


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client
