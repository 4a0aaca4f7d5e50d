"""GPU placement on a simulated cluster: Ray nodes shaped like the rendered KubeRay pools of configs/deepseek-v3.yaml
and configs/production.yaml (8 GPUs each, no real ones) run those configs' Serve applications with an engine that
reports where its placement group's bundles landed."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cluster.console import console
from cluster.status_command import print_status, replica_text
from serve_app.config import ClusterConfig, parse_config
from serve_app.names import MODEL_DEPLOYMENT_PREFIX
from serve_app.serve_internals import serve_details
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import free_port
from tests.gpu_cluster import HeldLoad, NodeShape, SimulatedCluster, rendered_cluster, wait_for
from tests.placement_fakes import PlacementProbeEngine

DEEPSEEK = "deepseek-v3"  # the config, its application and its model
PRODUCTION = "production"
POOL, ACCELERATOR = "h100", "H100"
TIMEOUT_S = 60
# How long a replica that cannot be placed is watched: long enough for Serve to restart a failing one several times.
PENDING_WATCH_S = 8
# Only the delay before scaling up is shortened; the bounds, the target and the rest stay those of the file.
FAST_SCALING = {"upscale_delay_s": 1}


def simulated_config(name: str, port: int, models: tuple[str, ...] = (), **scaling: float) -> ClusterConfig:
    """configs/<name>.yaml as deployed here: its models' engine, parallelism, resources and autoscaling bounds
    unchanged; the router on `port` with no API key (auth is not what is tested); only `models`, if given."""
    data = yaml.safe_load((REPO_ROOT / "configs" / f"{name}.yaml").read_text())
    data["router"] = {**data["router"], "host": "127.0.0.1", "port": port, "api_keys_env": None}
    data["models"] = [m for m in data["models"] if not models or m["name"] in models]
    for model in data["models"]:
        model["autoscaling"] = {**model["autoscaling"], **scaling}
    return parse_config(data, origin=f"configs/{name}.yaml")


def relabelled(shape: NodeShape, old: str, new: str) -> NodeShape:
    return NodeShape(shape.cpus, shape.gpus, {key.replace(old, new): v for key, v in shape.resources.items()})


@pytest.fixture(scope="module")
def gpus() -> Iterator[SimulatedCluster]:
    """The rendered head, and two 8-GPU decoys a replica must never use: H100s of another pool, and A100s
    wrongly put in pool h100. Each pool's own nodes come with the application that uses them."""
    rendered = rendered_cluster(DEEPSEEK)
    cluster = SimulatedCluster(rendered.head, free_port())
    pool = rendered.groups[POOL]
    cluster.add("decoys", relabelled(pool, f"node_pool:{POOL}", f"node_pool:{POOL}-spot"))
    cluster.add("decoys", relabelled(pool, f"accelerator_type:{ACCELERATOR}", "accelerator_type:A100"))
    yield cluster
    cluster.shutdown()


def model_status(url: str, model: str) -> dict[str, Any] | None:
    """The model's entry in the router's /admin/status; None while the router does not answer."""
    try:
        document = httpx.get(f"{url}/admin/status", timeout=5).json()
        entry = next(m for m in document["models"] if m["name"] == model)
    except (httpx.HTTPError, ValueError, KeyError, StopIteration):
        return None
    return {**entry, "document": document}


def engine_report(url: str, model: str) -> dict[str, Any]:
    """What the engine of a running replica of `model` found about its placement (tests/placement_fakes.py)."""
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                       json={"model": model, "messages": [{"role": "user", "content": "where are you?"}]})
    assert reply.status_code == 200, reply.text
    return json.loads(reply.json()["choices"][0]["message"]["content"])


def routers_load(url: str, model: str) -> int:
    """Requests of `model` the router replicas hold, taken by a replica or queued for one, from /metrics."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0
    return int(sum(sample.value for family in text_string_to_metric_families(text)
                   if family.name in ("llmcluster_requests_in_flight", "llmcluster_requests_queued")
                   for sample in family.samples if sample.labels.get("model") == model))


def deployment_details(app: str, model: str) -> dict[str, Any]:
    return serve_details()["applications"][app]["deployments"][MODEL_DEPLOYMENT_PREFIX + model]


@dataclass
class Phase:
    """What was seen of DeepSeek-V3 at one step: its status entry twice, PENDING_WATCH_S apart, and Serve's
    details of its deployment at the end."""

    first: dict[str, Any]
    later: dict[str, Any]
    details: dict[str, Any]


@dataclass
class DeepSeek:
    config: ClusterConfig
    waiting: Phase  # while its pool had one of its two nodes
    placed: dict[str, Any]  # its status once the second node joined
    report: dict[str, Any]  # what its engine found
    pool_nodes: list[str]
    loaded: Phase  # under load asking for twice its max_replicas
    held: int  # requests the routers held meanwhile


@pytest.fixture(scope="module")
def deepseek(gpus: SimulatedCluster) -> DeepSeek:
    """DeepSeek-V3 deployed while its pool has one of its two nodes, given the second, then loaded."""
    gpus.remove_apps()
    gpus.remove(PRODUCTION)
    rendered = rendered_cluster(DEEPSEEK)
    first = gpus.add(DEEPSEEK, rendered.groups[POOL])
    config = simulated_config(DEEPSEEK, gpus.port, (DEEPSEEK,), **FAST_SCALING)
    gpus.deploy(config, PlacementProbeEngine)
    waiting = watch(gpus.url, "a DeepSeek replica waiting for nodes", 1)
    second = gpus.add(DEEPSEEK, rendered.groups[POOL])  # the two nodes one replica needs, no more
    placed = wait_for("the DeepSeek replica to run", lambda: _running(gpus.url, DEEPSEEK, 1), TIMEOUT_S)
    report = engine_report(gpus.url, DEEPSEEK)
    scaling = config.model(DEEPSEEK).autoscaling
    limit = scaling.max_replicas * scaling.target_ongoing_requests  # more load than max replicas are meant for
    with HeldLoad(gpus.url, DEEPSEEK, count=2 * int(limit), hold_s=120):
        # The routers hand every request to Serve at once: what they hold is what Serve's autoscaler counts.
        held = wait_for(f"the routers to hold over {limit:g} requests", lambda: _held_over(gpus.url, limit),
                        TIMEOUT_S)
        loaded = watch(gpus.url, "a second DeepSeek replica waiting for nodes", 2)
    return DeepSeek(config, waiting, placed, report, first + second, loaded, held)


def watch(url: str, what: str, replicas: int) -> Phase:
    """Wait for DeepSeek-V3 to have `replicas` replicas, the last waiting for nodes; watch it PENDING_WATCH_S."""
    first = wait_for(what, lambda: _waiting(url, replicas), TIMEOUT_S)
    time.sleep(PENDING_WATCH_S)
    return Phase(first, model_status(url, DEEPSEEK) or {}, deployment_details(DEEPSEEK, DEEPSEEK))


def _waiting(url: str, replicas: int) -> dict[str, Any] | None:
    status = model_status(url, DEEPSEEK)
    ok = status and len(status["replicas"]) == replicas and any(r["waiting_for"] for r in status["replicas"])
    return status if ok else None


def _running(url: str, model: str, count: int) -> dict[str, Any] | None:
    status = model_status(url, model)
    return status if status and status["running"] >= count else None


def _held_over(url: str, limit: float) -> int | None:
    held = routers_load(url, DEEPSEEK)
    return held if held > limit else None


def test_a_replica_that_cannot_fit_waits_with_a_clear_status_and_is_not_restarted(deepseek: DeepSeek) -> None:
    # 24 GPUs are free, but only the 8 of the one h100 node are in the pool with the right accelerator.
    first, later = deepseek.waiting.first, deepseek.waiting.later
    (replica,) = first["replicas"]
    assert replica["state"] == "STARTING" and replica["nodes"] == [] and replica["gpus"] == 16
    assert replica["waiting_for"] == ("16 bundles (65 CPU, 16 GPU) on nodes with accelerator_type:H100, "
                                      "node_pool:h100")
    assert first["document"]["ready"] is False and first["document"]["not_ready"] == [DEEPSEEK]
    assert [r["id"] for r in later["replicas"]] == [replica["id"]] and later["replicas"][0]["nodes"] == []
    assert not deepseek.waiting.details.get("recent_dead_replicas")


def test_one_deepseek_replica_gets_sixteen_gpus_on_exactly_two_h100_nodes(deepseek: DeepSeek,
                                                                          gpus: SimulatedCluster) -> None:
    report = deepseek.report
    assert (report["tensor"], report["pipeline"], report["executor"]) == (8, 2, "ray")
    assert report["strategy"] == "PACK" and report["model_path"] == "deepseek-ai/DeepSeek-V3"
    bundles = report["bundles"]
    assert len(bundles) == 16 and all(b["worker_node"] == b["reserved_on"] for b in bundles)
    per_node = Counter(b["worker_node"] for b in bundles)
    assert set(per_node) == set(deepseek.pool_nodes) and sorted(per_node.values()) == [8, 8]
    for node in per_node:  # each worker of a node has a GPU of its own, as vLLM needs
        assert sorted(g for b in bundles if b["worker_node"] == node for g in b["gpu_ids"]) == list("01234567")
    assert report["replica_node"] == bundles[0]["worker_node"]  # the replica shares the first worker's bundle
    assert not per_node.keys() & gpus.node_ids("decoys")


def test_status_shows_each_replicas_nodes_and_gpus(deepseek: DeepSeek) -> None:
    (replica,) = deepseek.placed["replicas"]
    assert replica["gpus"] == 16 and replica["waiting_for"] is None
    assert sorted((n["id"], n["gpus"]) for n in replica["nodes"]) == sorted((n, 8) for n in deepseek.pool_nodes)
    addresses = [n["address"] for n in replica["nodes"]]
    assert replica_text(replica) == f"running on {addresses[0]} (8 GPUs) + {addresses[1]} (8 GPUs)"
    width, console.width = console.width, 200
    try:
        with console.capture() as table:
            print_status(deepseek.placed["document"])
    finally:
        console.width = width
    assert replica_text(replica) in table.get()


def test_load_scales_deepseek_to_its_max_replicas_and_the_one_that_does_not_fit_waits(deepseek: DeepSeek) -> None:
    scaling = deepseek.config.model(DEEPSEEK).autoscaling
    loaded = deepseek.loaded
    print(f"\nautoscaling: the routers held {deepseek.held} requests, {scaling.target_ongoing_requests:g} per "
          f"replica wanted; Serve's target: {loaded.details['target_num_replicas']} (max {scaling.max_replicas})")
    assert deepseek.held > scaling.max_replicas * scaling.target_ongoing_requests  # more than the max is meant for
    assert loaded.details["target_num_replicas"] == scaling.max_replicas
    assert [r["id"] for r in loaded.later["replicas"]] == [r["id"] for r in loaded.first["replicas"]]
    running, waiting = sorted(loaded.later["replicas"], key=lambda r: r["state"] != "RUNNING")
    assert running["state"] == "RUNNING" and sorted(n["id"] for n in running["nodes"]) == sorted(deepseek.pool_nodes)
    assert waiting["state"] == "STARTING" and waiting["nodes"] == [] and waiting["waiting_for"]
    assert not loaded.details.get("recent_dead_replicas")


@dataclass
class Production:
    config: ClusterConfig
    models: dict[str, dict[str, Any]]  # model name -> its status entry
    reports: dict[str, dict[str, Any]]
    pool_nodes: set[str]


@pytest.fixture(scope="module")
def production(gpus: SimulatedCluster) -> Production:
    """configs/production.yaml on its rendered pool (the same head as DeepSeek's, other worker nodes)."""
    rendered = rendered_cluster(PRODUCTION)
    assert rendered.head == rendered_cluster(DEEPSEEK).head
    gpus.remove_apps()
    gpus.remove(DEEPSEEK)
    nodes = gpus.add(PRODUCTION, rendered.groups[POOL], rendered.initial_nodes[POOL])
    config = simulated_config(PRODUCTION, gpus.port)
    gpus.deploy(config, PlacementProbeEngine)
    statuses = {m.name: wait_for(f"{m.name} to run", lambda name=m.name: _running(gpus.url, name, 1), TIMEOUT_S)
                for m in config.models}
    reports = {m.name: engine_report(gpus.url, m.name) for m in config.models}
    return Production(config, statuses, reports, set(nodes))


def test_each_production_replica_fits_one_node_of_its_pool(production: Production, gpus: SimulatedCluster) -> None:
    nodes_of = {}
    for model in production.config.models:
        report = production.reports[model.name]
        bundles = report["bundles"]
        assert report["tensor"] == model.parallelism.tensor and len(bundles) == model.parallelism.world_size
        (node,) = {b["worker_node"] for b in bundles}  # TP 4 and TP 8 each fit one 8-GPU node
        assert node in production.pool_nodes and node not in gpus.node_ids("decoys")
        assert sorted(len(b["gpu_ids"]) for b in bundles) == [1] * len(bundles)
        (replica,) = production.models[model.name]["replicas"]
        assert [(n["id"], n["gpus"]) for n in replica["nodes"]] == [(node, model.parallelism.world_size)]
        nodes_of[model.name] = node
    # TP 8 takes a whole node, so the TP 4 replica cannot share it.
    assert len(set(nodes_of.values())) == 2


def test_production_models_start_at_their_floor_with_the_bounds_of_the_file(production: Production) -> None:
    for model in production.config.models:
        scaling = model.autoscaling
        assert production.models[model.name]["running"] == scaling.min_replicas
        details = deployment_details(PRODUCTION, model.name)
        served = details["deployment_config"]["autoscaling_config"]
        assert (served["min_replicas"], served["max_replicas"]) == (scaling.min_replicas, scaling.max_replicas)
        assert details["target_num_replicas"] == scaling.min_replicas
