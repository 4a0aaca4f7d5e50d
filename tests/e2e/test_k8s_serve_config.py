"""The committed RayService's serveConfigV2, deployed the way KubeRay deploys it, serves the demo model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from cluster import ray_session
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import free_port

MANIFEST = REPO_ROOT / "k8s" / "local" / "rayservice.yaml"
SERVE_CLI = str(Path(sys.executable).parent / "serve")
# Ray's start plus the vLLM CPU engine's load on 2 cores (and a first-time conversion of the demo model).
READY_TIMEOUT_S = 420
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass(frozen=True)
class Deployed:
    app_name: str
    base_url: str


def manifest_serve_config() -> dict[str, Any]:
    """spec.serveConfigV2 of the committed RayService, parsed as the KubeRay operator parses it."""
    (service,) = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    assert service["kind"] == "RayService"
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def accepts_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def wait_until_running(app_name: str) -> None:
    from ray import serve

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        app = serve.status().applications.get(app_name)
        if app is not None and app.status == "RUNNING":
            return
        if app is not None and app.status == "DEPLOY_FAILED":
            raise RuntimeError(f"application {app_name} failed to deploy: {app.message}")
        time.sleep(2)
    raise RuntimeError(f"application {app_name} not running after {READY_TIMEOUT_S}s: {serve.status()}")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    import ray
    from ray import serve

    config = manifest_serve_config()
    port = free_port()
    # In the pod the proxy listens on every interface at the Service's target port (8000). On a shared laptop
    # it listens on loopback, at a free port; the rest of the document, the application included, is untouched.
    config["http_options"].update(host="127.0.0.1", port=port)
    path = tmp_path_factory.mktemp("k8s") / "serve-config.yaml"
    path.write_text(yaml.safe_dump(config))

    auth_mode = os.environ.get("RAY_AUTH_MODE")
    gcs_address = ray_session.start_local_ray()
    try:
        # `serve run FILE` takes the path KubeRay's PUT to the dashboard takes: the file is validated as a
        # ServeDeploySchema, Serve starts with its http_options, and the controller deploys its applications.
        submitted = subprocess.run([SERVE_CLI, "run", "--non-blocking", "--address", gcs_address, str(path)],
                                   capture_output=True, text=True, timeout=300)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        (app,) = config["applications"]
        started = time.monotonic()
        wait_until_running(app["name"])
        print(f"\nserveConfigV2 of {MANIFEST.relative_to(REPO_ROOT)} running in {time.monotonic() - started:.0f}s")
        yield Deployed(app["name"], f"http://127.0.0.1:{port}/v1")
        serve.shutdown()
    finally:
        ray.shutdown()
        if auth_mode is None:  # ray.init turned token auth on in this process's environment, for its cluster only
            os.environ.pop("RAY_AUTH_MODE", None)
    # The cluster was this process's own: once it shuts down, neither Ray's GCS nor Serve's proxy may remain.
    leftovers = [address for address in (gcs_address, f"127.0.0.1:{port}") if accepts_connections(address)]
    assert not leftovers, f"still listening after shutdown: {leftovers}"


def test_manifest_application_is_the_llmcluster_builder() -> None:
    config = manifest_serve_config()
    (app,) = config["applications"]
    assert app["import_path"] == "serve_app.builder:build_app"
    assert [model["name"] for model in app["args"]["config"]["models"]] == ["smollm2"]


def test_manifest_application_deploys_router_and_model(deployed: Deployed) -> None:
    from ray import serve

    deployments = serve.status().applications[deployed.app_name].deployments
    assert set(deployments) == {"router", "quota-ledger", "metrics-hub", "model-smollm2"}
    assert all(status.status == "HEALTHY" for status in deployments.values())


def test_manifest_application_answers_a_greedy_chat(deployed: Deployed) -> None:
    client = openai.OpenAI(base_url=deployed.base_url, api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=32)
    assert "Paris" in reply.choices[0].message.content
    assert reply.model == "smollm2"

