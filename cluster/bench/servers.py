"""The systems under test: raw `vllm serve` with a model's engine arguments, and `llmcluster serve` of a config."""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import yaml

from cluster.bench.processes import Child

HOST = "127.0.0.1"
# Cold start on 2 cores: Ray (~10 s), a first-time model conversion (~40 s), the engine (~40 s); GPUs load more.
START_TIMEOUT_S = 900.0
# A draining llmcluster waits for in-flight requests; there are none when it is stopped between runs.
STOP_GRACE_S = 120.0


class Kind(StrEnum):
    VLLM = "vllm"
    LLMCLUSTER = "llmcluster"


@dataclass(frozen=True)
class System:
    """A server to measure: `kind` serving `model` of `config`; `label` names it in the results."""

    label: str
    kind: Kind
    config: Path


def parse_systems(text: str, config: Path) -> list[System]:
    """`vllm,llmcluster` or `llmcluster:a.yaml,llmcluster:b.yaml`: a kind, optionally with its own config."""
    systems = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, own_config = item.partition(":")
        if kind not in {k.value for k in Kind}:
            raise ValueError(f"unknown system {kind!r} in --systems: use vllm or llmcluster[:CONFIG]")
        path = Path(own_config) if own_config else config
        label = kind if not own_config else f"{kind}:{path.stem}"
        systems.append(System(label, Kind(kind), path))
    labels = [system.label for system in systems]
    if not systems or len(set(labels)) != len(labels):
        raise ValueError(f"--systems needs one or more distinct systems, got {labels}")
    return systems


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A started server: its process tree and where it answers."""

    system: System
    child: Child
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        # vLLM's /health is 200 once the engine runs; llmcluster's /ready once every model has a replica.
        path = "/health" if self.system.kind is Kind.VLLM else "/ready"
        self.child.wait_until(lambda: _answers(self.base_url + path), timeout_s, f"{self.system.label} server")

    def stop(self) -> list[str]:
        return self.child.stop(STOP_GRACE_S)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):  # refused while starting, or an error status
        return False


def start_server(system: System, model: str, folder: Path) -> Server:
    """Start `system` serving `model` on a free port, its log and files in `folder`; not yet ready."""
    port = free_port()
    log = folder / "logs" / f"{system.label.replace(':', '-')}-server.log"
    if system.kind is Kind.VLLM:
        command, env = vllm_serve_command(system.config, model, folder, port)
    else:
        command, env = [sys.executable, "-m", "cluster.cli", "serve", str(system.config), "--port", str(port)], {}
    # Each starts a Ray of its own when it needs one (vLLM's Ray executor too), never joins one running here.
    env = {key: value for key, value in {**os.environ, **env}.items() if key != "RAY_ADDRESS"}
    return Server(system, Child(command, log, env=env), port)


def vllm_serve_command(config: Path, model: str, folder: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """`vllm serve` with the engine arguments an llmcluster replica of `model` gives its engine, written as a vLLM
    config file, and the environment it adds (CPU binding); run through the adapter, as the CPU build's `vllm`
    script is broken."""
    from serve_app.config import load_config
    from serve_app.llm_server import engine_spec
    from serve_app.model_source import resolve_source
    from serve_app.vllm_adapter import cpu_binding_env, serve_options

    model_config = load_config(config).model(model)
    spec = engine_spec(model_config, resolve_source(model_config.source))
    options = folder / "vllm-serve.yaml"
    options.write_text(yaml.safe_dump(serve_options(spec), sort_keys=False))
    command = [sys.executable, "-m", "serve_app.vllm_adapter", "serve", "--config", str(options),
               "--host", HOST, "--port", str(port)]
    return command, cpu_binding_env(spec)
