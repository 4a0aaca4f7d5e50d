"""Several Ray nodes on one machine: replicas land only on their node pool and survive the loss of a node."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from serve_app.placement import NODE_POOL_RESOURCE
from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.load import Traffic

POOL, OTHER_POOL = "cpu-a", "cpu-b"
REPLICA_CLASS = "ServeReplica:llmcluster:model-tiny-random"
# A node advertises plenty of its pool's resource: replicas ask a marker amount of it, never run it out.
POOL_AMOUNT = 1000
RECOVERY_TIMEOUT_S = 300
CONFIG = {
    # Every node of this test shares one address, so only the head may bind the router's port.
    "router": {"cpus": 0, "proxy_location": "HeadOnly"},
    "models": [{
        "name": "tiny-random",
        "source": "builtin:tiny-random-llama",
        "engine": {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True,
                   "kv_cache_memory_bytes": 134217728},
        "resources": {"device": "cpu", "node_pool": POOL},
        "autoscaling": {"min_replicas": 2, "max_replicas": 2},
    }],
}


@dataclass
class NodePools:
    cluster: Cluster
    pool: list[ray._private.node.Node]
    other: ray._private.node.Node

    @property
    def pool_ids(self) -> set[str]:
        return {node.node_id for node in self.pool}


@pytest.fixture(scope="module")
def pools() -> Iterator[NodePools]:
    """A head, three one-core nodes of pool cpu-a (two replicas and a spare) and a roomier node of pool cpu-b."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    pool = [cluster.add_node(num_cpus=1, resources={NODE_POOL_RESOURCE.format(POOL): POOL_AMOUNT})
            for _ in range(3)]
    other = cluster.add_node(num_cpus=2, resources={NODE_POOL_RESOURCE.format(OTHER_POOL): POOL_AMOUNT})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)  # the serve log has the replicas' output
    yield NodePools(cluster, pool, other)
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def server(pools: NodePools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder: Path = tmp_path_factory.mktemp("multi-node")
    (folder / "pools.yaml").write_text(yaml.safe_dump(CONFIG))
    running = start_server(folder / "pools.yaml", folder / "serve.log",
                           extra_args=("--address", pools.cluster.address))
    yield running
    assert stop_server(running) == 0, running.log_tail()


def replica_nodes() -> list[str]:
    """Node ids of the model's live replicas, one entry per replica."""
    actors = list_actors(filters=[("class_name", "=", REPLICA_CLASS), ("state", "=", "ALIVE")])
    return [actor.node_id for actor in actors]


def router_nodes() -> set[str]:
    actors = list_actors(filters=[("class_name", "=", "ServeReplica:llmcluster:router"), ("state", "=", "ALIVE")])
    return {actor.node_id for actor in actors}


def running_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications["llmcluster"].deployments["model-tiny-random"]
    return deployment.replica_states.get("RUNNING", 0)


def tell_a_story(client: openai.OpenAI) -> None:
    client.completions.create(model="tiny-random", prompt="Once upon a time", max_tokens=8)


def test_replicas_land_only_on_their_pool(pools: NodePools, server: Server) -> None:
    nodes = replica_nodes()
    assert len(nodes) == 2
    assert set(nodes) <= pools.pool_ids
    assert pools.other.node_id not in nodes


def test_losing_a_node_keeps_requests_answered_and_restores_the_replicas(pools: NodePools, server: Server) -> None:
    before = replica_nodes()
    # Take down a node with a model replica but not the router, so the loss is the model's alone.
    victim_id = next(node for node in before if node not in router_nodes())
    victim = next(node for node in pools.pool if node.node_id == victim_id)
    with Traffic(server.base_url, tell_a_story, workers=3, timeout_s=120) as traffic:
        time.sleep(5)
        assert traffic.answered_since(0) > 0 and traffic.failed_since(0) == []
        lost_at = time.monotonic()
        pools.cluster.remove_node(victim, allow_graceful=False)
        while not (running_replicas() == 2 and len(after := replica_nodes()) == 2 and victim_id not in after):
            assert time.monotonic() - lost_at < RECOVERY_TIMEOUT_S, f"replicas not restored: {replica_nodes()}"
            time.sleep(1)
        recovered_at = time.monotonic()
        time.sleep(10)
        answered_during_loss = traffic.answered_since(lost_at) - traffic.answered_since(recovered_at)
        failed_during_loss = len(traffic.failed_since(lost_at)) - len(traffic.failed_since(recovered_at))
        print(f"\nnode loss: replicas back to 2 in {recovered_at - lost_at:.0f}s; during the loss "
              f"{answered_during_loss} requests answered and {failed_during_loss} failed; "
              f"{traffic.answered_since(recovered_at)} answered after")
        assert answered_during_loss > 0, "the surviving replica stopped answering"
        assert traffic.failed_since(recovered_at) == []
        assert traffic.answered_since(recovered_at) > 0
    assert set(after) <= pools.pool_ids - {victim_id}
