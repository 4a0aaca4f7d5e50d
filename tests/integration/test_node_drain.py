"""Draining a worker node on a real Ray cluster, as a stopping worker pod's preStop does (`llmcluster drain-node`):
Serve starts the model's replica on another node, the old one finishes the request it is serving, and the
command returns once no replica is left on the drained node."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from serve_app.builder import build_application
from serve_app.config import parse_config
from tests.e2e.conftest import free_port
from tests.engine_fakes import SlowAnswerEngine

APP = "drain-test"
DEPLOYMENT = "model-fake"
POOL = "node_pool:pool"
DEADLINE_S = 60
# Every node is as small as Ray allows: the fake engine needs no memory.
NODE_ARGS = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}


def config(port: int):  # noqa: ANN201 - a ClusterConfig
    return parse_config({
        "cluster": {"name": APP},
        # One attempt: a request whose replica were killed must fail here, not be answered again elsewhere.
        "router": {"port": port, "cpus": 0.5, "max_attempts": 1},
        "models": [{
            "name": "fake", "source": "fake-org/fake-model",
            "resources": {"cpus_per_worker": 1, "node_pool": "pool"},
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "drain_timeout_s": 20,
        }],
    })


@dataclass
class Stack:
    cluster: Any
    url: str
    dashboard: str
    drained_node: Any


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    port, dashboard_port = free_port(), free_port()
    # The head has no pool resource, so the model replica can only run on a pool node; Serve's REST API, which
    # the drain command reads, is served by the head's dashboard.
    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE_ARGS, "include_dashboard": True, "dashboard_port": dashboard_port})
    try:
        first = cluster.add_node(**NODE_ARGS, resources={POOL: 1000})
        ray.init(address=cluster.address, log_to_driver=False)
        # Every node shares this machine's address, so only the head can run an HTTP proxy on the port.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(config(port), engine_cls=SlowAnswerEngine), name=APP, route_prefix="/")
        cluster.add_node(**NODE_ARGS, resources={POOL: 1000})  # where the replica can move to
        yield Stack(cluster, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", first)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def model_replicas() -> list[dict[str, Any]]:
    from serve_app.serve_internals import serve_details

    return serve_details()["applications"][APP]["deployments"][DEPLOYMENT]["replicas"]


def test_a_drained_node_hands_its_replica_over_and_finishes_its_request(stack: Stack) -> None:
    drained = stack.drained_node.node_id
    (old,) = model_replicas()
    assert old["node_id"] == drained
    answer: dict[str, Any] = {}

    def ask() -> None:
        answer["status"] = httpx.post(f"{stack.url}/v1/chat/completions", timeout=60, json={
            "model": "fake", "messages": [{"role": "user", "content": "hi"}]}).status_code
        answer["at"] = time.monotonic()

    asking = threading.Thread(target=ask)
    asked_at = time.monotonic()
    asking.start()
    time.sleep(1.5)  # the request is on the replica now; it takes SlowAnswerEngine.answer_delay_s
    drain = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "drain-node", "--dashboard", stack.dashboard, "--deadline-s",
         str(DEADLINE_S), "--node-id", drained, "--address", stack.cluster.address],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stopping_in_flight = False  # was the old replica seen stopping while its request was still running?
    while drain.poll() is None and time.monotonic() - asked_at < DEADLINE_S + 30:
        states = {r["replica_id"]: r["state"] for r in model_replicas()}
        stopping_in_flight |= states.get(old["replica_id"]) == "STOPPING" and "at" not in answer
        time.sleep(0.5)
    drained_at = time.monotonic()
    output = drain.communicate(timeout=30)[0]
    asking.join(30)
    print(f"\ndrain: request answered {answer['at'] - asked_at:.1f}s after it was sent, drain-node returned "
          f"{drained_at - asked_at:.1f}s after; old replica stopping while in flight: {stopping_in_flight}\n"
          f"{output[-800:]}")
    assert drain.returncode == 0, output
    assert answer["status"] == 200  # served whole by the replica being moved: with one attempt, no retry
    assert stopping_in_flight and drained_at >= answer["at"]
    running = [replica for replica in model_replicas() if replica["state"] == "RUNNING"]
    assert len(running) == 1 and running[0]["node_id"] not in (None, drained)
    assert all(replica["node_id"] != drained for replica in model_replicas())
