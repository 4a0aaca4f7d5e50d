"""`llmcluster status` asks the router first (fast under load), and falls back to joining Ray only when it must."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from cluster import ray_session, status_command
from cluster.cli import app

DOCUMENT = {"source": "router", "application": "llmcluster", "age_s": 0.4, "ready": True, "not_ready": [],
            "reason": "", "dead_nodes": 0,
            "applications": [{"name": "llmcluster", "status": "RUNNING", "message": "", "deployments": [
                {"name": "model-chat", "status": "HEALTHY", "replicas": {"RUNNING": 1}, "message": "",
                 "engine": []}]}],
            "models": [{"name": "chat", "deployment": "model-chat", "min_replicas": 1, "running": 1,
                        "replicas": [{"id": "a", "state": "RUNNING", "node_id": "n", "node_ip": "10.0.0.1"}],
                        "in_flight": 2, "queued": 0}],
            "nodes": [{"id": "n", "address": "10.0.0.1", "alive": True, "resources": {"CPU": 2.0}}]}


class Router(BaseHTTPRequestHandler):
    """Answers /admin/status like the router: 200 to the admin key (or to anyone when `key` is None)."""

    key: str | None = None
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        auth = self.headers.get("Authorization")
        self.seen.append(auth)
        if self.path != "/admin/status":
            self._send(404, {"error": {"message": "not found"}})
        elif self.key is not None and auth != f"Bearer {self.key}":
            self._send(401, {"error": {"message": "missing or invalid API key"}})
        else:
            self._send(200, DOCUMENT)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def router() -> Iterator[str]:
    Router.key, Router.seen = None, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Router)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Records attempts to join Ray, which find no cluster."""
    joins: list[str | None] = []
    monkeypatch.setattr(ray_session, "connect", lambda address: joins.append(address) or False)
    return joins


def test_status_comes_from_the_router_without_joining_ray(router: str, no_ray: list) -> None:
    result = CliRunner().invoke(app, ["status", "--json", "--url", router + "/v1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == DOCUMENT and no_ray == []


def test_the_admin_key_is_sent_from_the_environment(router: str, no_ray: list) -> None:
    Router.key = "sk-ops"
    result = CliRunner().invoke(app, ["status", "--json", "--url", router], env={"LLMCLUSTER_API_KEY": "sk-ops"})
    assert result.exit_code == 0, result.output
    assert Router.seen == ["Bearer sk-ops"]


def test_a_refused_key_says_so_and_falls_back_to_ray(router: str, no_ray: list) -> None:
    Router.key = "sk-ops"
    result = CliRunner().invoke(app, ["status", "--url", router])
    assert "refused the status (401; set LLMCLUSTER_API_KEY" in result.output
    assert no_ray == [None] and result.exit_code == 1 and "no running cluster found" in result.output


def test_an_unreachable_router_falls_back_to_ray(no_ray: list) -> None:
    assert status_command.fetch_from_router("http://127.0.0.1:9", None, timeout_s=2) is None
    result = CliRunner().invoke(app, ["status", "--url", "http://127.0.0.1:9"])
    assert "asking Ray instead" in result.output and no_ray == [None]


def test_load_asks_ray_even_with_a_router(router: str, no_ray: list) -> None:
    CliRunner().invoke(app, ["status", "--load", "--url", router])
    assert Router.seen == [] and no_ray == [None]


def test_the_table_shows_models_replicas_and_nodes(router: str, no_ray: list) -> None:
    result = CliRunner().invoke(app, ["status", "--url", router])
    assert result.exit_code == 0, result.output
    for text in ("ready", "chat", "1 / 1", "running on 10.0.0.1", "model-chat", "nodes: 1 alive (10.0.0.1)"):
        assert text in result.output


def test_a_replica_spanning_nodes_shows_each_node_with_its_gpus() -> None:
    replica = {"id": "a", "state": "RUNNING", "node_id": "n1", "node_ip": "10.0.1.1", "gpus": 16,
               "waiting_for": None, "nodes": [{"id": "n1", "address": "10.0.1.1", "gpus": 8},
                                              {"id": "n2", "address": "10.0.1.2", "gpus": 8}]}
    assert status_command.replica_text(replica) == "running on 10.0.1.1 (8 GPUs) + 10.0.1.2 (8 GPUs)"


def test_a_replica_that_cannot_be_placed_says_what_it_waits_for() -> None:
    replica = {"id": "b", "state": "STARTING", "node_id": None, "node_ip": None, "gpus": 16, "nodes": [],
               "waiting_for": "16 bundles (65 CPU, 16 GPU) on nodes with accelerator_type:H100, node_pool:h100"}
    assert status_command.replica_text(replica) == ("starting, waiting for 16 bundles (65 CPU, 16 GPU) on nodes "
                                                    "with accelerator_type:H100, node_pool:h100")


def test_a_cpu_replica_and_an_older_routers_replica_show_their_node() -> None:
    cpu = {"id": "c", "state": "RUNNING", "node_id": "n", "node_ip": "10.0.0.1", "gpus": 0, "waiting_for": None,
           "nodes": [{"id": "n", "address": "10.0.0.1", "gpus": 0}]}
    older = {"id": "d", "state": "RUNNING", "node_id": "n", "node_ip": "10.0.0.1"}
    assert status_command.replica_text(cpu) == status_command.replica_text(older) == "running on 10.0.0.1"
