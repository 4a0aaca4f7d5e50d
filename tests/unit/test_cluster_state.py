"""The cluster state: parsed from Serve's details, kept fresh in the background, never fetched per read."""

from __future__ import annotations

import asyncio
from enum import Enum

from serve_app.cluster_state import ClusterSnapshot, StateWatch, parse_snapshot
from serve_app.log_setup import bind_request_id, current_request_id, unbind_request_id
from serve_app.readiness import Readiness, ServedModel
from serve_app.status_report import ModelLoad, models_in, status_document
from tests.quota_fakes import in_loop
from tests.state_fakes import APP, NODES, NOW, deployment, details, placement_group, replica, snapshot


def test_parse_reads_replicas_states_nodes_and_replica_floors() -> None:
    state = snapshot({"model-chat": deployment(replica("a", "RUNNING"), replica("b", "STARTING"), min_replicas=2),
                      "router": deployment(replica("r"), min_replicas=None)})
    chat = state.deployment(APP, "model-chat")
    assert chat.running == 1 and chat.state_counts() == {"RUNNING": 1, "STARTING": 1}
    assert chat.min_replicas == 2 and state.deployment(APP, "router").min_replicas is None
    assert [(n.id, n.alive) for n in state.nodes] == [("node-1", True), ("node-0", False)]


def test_parse_takes_min_replicas_from_an_autoscaling_config() -> None:
    dep = {"status": "HEALTHY", "replicas": [], "deployment_config": {"autoscaling_config": {"min_replicas": 0}}}
    assert parse_snapshot(details({"model-x": dep}), [], NOW).deployment(APP, "model-x").min_replicas == 0


class ReplicaState(str, Enum):
    """How Serve's controller hands states over: str enums, whose str() is `ReplicaState.RUNNING`."""

    RUNNING = "RUNNING"


def test_parse_reads_serves_enum_states_as_their_values() -> None:
    state = snapshot({"model-chat": {**deployment(replica("a", ReplicaState.RUNNING)), "status": ReplicaState.RUNNING}})
    chat = state.deployment(APP, "model-chat")
    assert chat.running == 1 and chat.state_counts() == {"RUNNING": 1} and chat.status == "RUNNING"


# One GPU worker per bundle, the replica's actor sharing the first, as serve_app/placement.py asks.
GPU_BUNDLE = {"GPU": 1.0, "CPU": 4.0, "accelerator_type:H100": 0.001, "node_pool:h100": 0.001}
SIXTEEN_BUNDLES = [{**GPU_BUNDLE, "CPU": 5.0}] + [dict(GPU_BUNDLE) for _ in range(15)]
GPU_NODES = [{"NodeID": f"gpu-{i}", "NodeManagerAddress": f"10.0.1.{i}", "Alive": True, "Resources": {"GPU": 8.0}}
             for i in (1, 2)]


def test_a_replica_spanning_two_nodes_has_each_nodes_gpus() -> None:
    dep = deployment(replica("big", node="gpu-1"))
    groups = {"pg": placement_group("big", SIXTEEN_BUNDLES, ["gpu-1"] * 8 + ["gpu-2"] * 8)}
    (big,) = parse_snapshot(details({"model-big": dep}), GPU_NODES, NOW, groups).deployment(APP, "model-big").replicas
    assert big.gpus == 16 and big.waiting_for == ""
    assert [(share.node_id, share.gpus) for share in big.nodes] == [("gpu-1", 8), ("gpu-2", 8)]


def test_a_replica_whose_placement_group_waits_says_what_it_waits_for() -> None:
    dep = deployment(replica("big", "STARTING", node=None))
    groups = {"old": placement_group("big", SIXTEEN_BUNDLES, ["gpu-1"] * 16, state="REMOVED"),
              "pg": placement_group("big", SIXTEEN_BUNDLES, [], state="PENDING")}
    (big,) = parse_snapshot(details({"model-big": dep}), GPU_NODES, NOW, groups).deployment(APP, "model-big").replicas
    assert big.nodes == () and big.gpus == 16
    assert big.waiting_for == "16 bundles (65 CPU, 16 GPU) on nodes with accelerator_type:H100, node_pool:h100"


def test_a_replica_without_a_placement_group_is_its_actors_node() -> None:
    gpu_actor = {**deployment(replica("one", node="gpu-1")),
                 "deployment_config": {"ray_actor_options": {"num_gpus": 1}}}
    state = parse_snapshot(details({"model-one": gpu_actor, "model-cpu": deployment(replica("c", node="node-1")),
                                    "model-new": deployment(replica("n", "STARTING", node=None))}), NODES, NOW, {})
    assert state.deployment(APP, "model-one").replicas[0].nodes[0].gpus == 1
    assert [(s.node_id, s.gpus) for s in state.deployment(APP, "model-cpu").replicas[0].nodes] == [("node-1", 0)]
    assert state.deployment(APP, "model-new").replicas[0].nodes == ()


def test_status_document_lists_each_replicas_nodes_with_their_addresses_and_gpus() -> None:
    placed = deployment(replica("big", node="gpu-1"), replica("more", "STARTING", node=None))
    groups = {"a": placement_group("big", SIXTEEN_BUNDLES, ["gpu-1"] * 8 + ["gpu-2"] * 8),
              "b": placement_group("more", SIXTEEN_BUNDLES, [], state="PENDING")}
    state = parse_snapshot(details({"model-big": placed}), GPU_NODES, NOW, groups)
    doc = status_document(state, APP, [ServedModel("big", "model-big", 1)], Readiness(True), "ray", NOW)
    running, waiting = doc["models"][0]["replicas"]
    assert running["gpus"] == 16 and running["waiting_for"] is None
    assert running["nodes"] == [{"id": "gpu-1", "address": "10.0.1.1", "gpus": 8},
                                {"id": "gpu-2", "address": "10.0.1.2", "gpus": 8}]
    assert waiting["nodes"] == [] and waiting["waiting_for"].startswith("16 bundles (65 CPU, 16 GPU)")


def test_parse_tolerates_what_serve_leaves_out() -> None:
    state = parse_snapshot({}, [], NOW)
    assert state.apps == {} and state.nodes == ()


def test_status_document_has_models_replicas_nodes_and_the_routers_load() -> None:
    state = snapshot({"model-chat": deployment(replica("a")), "router": deployment(replica("r"))})
    models = [ServedModel("chat", "model-chat", 1)]
    doc = status_document(state, APP, models, Readiness(True), "router", NOW + 1.5, {"chat": ModelLoad(3, 2)})
    assert doc["source"] == "router" and doc["ready"] and doc["age_s"] == 1.5
    (model,) = doc["models"]
    assert model["running"] == 1 and model["in_flight"] == 3 and model["queued"] == 2
    assert model["replicas"] == [{"id": "a", "state": "RUNNING", "node_id": "node-1", "node_ip": "10.0.0.1",
                                  "gpus": 0, "waiting_for": None,
                                  "nodes": [{"id": "node-1", "address": "10.0.0.1", "gpus": 0}]}]
    (app,) = doc["applications"]
    assert {d["name"]: d["replicas"] for d in app["deployments"]} == {"model-chat": {"RUNNING": 1},
                                                                      "router": {"RUNNING": 1}}
    assert [n["id"] for n in doc["nodes"]] == ["node-1"] and doc["dead_nodes"] == 1


def test_without_a_router_the_load_is_unknown_and_models_come_from_deployment_names() -> None:
    state = snapshot({"model-chat": deployment(replica("a"), min_replicas=2), "router": deployment()})
    app_name, models = models_in(state)
    assert app_name == APP and models == [ServedModel("chat", "model-chat", 2)]
    doc = status_document(state, app_name, models, Readiness(True), "ray", NOW)
    assert doc["models"][0]["in_flight"] is None and doc["models"][0]["queued"] is None


class CountingFetch:
    def __init__(self, failing: bool = False) -> None:
        self.calls = 0
        self.failing = failing

    def __call__(self) -> ClusterSnapshot:
        self.calls += 1
        if self.failing:
            raise ConnectionError("controller gone")
        return parse_snapshot(details({}), NODES, NOW + self.calls)


@in_loop
async def test_reads_are_served_from_the_background_refresh() -> None:
    fetch = CountingFetch()
    watch = StateWatch(fetch, every_s=0.05)
    first = await watch.latest()
    assert first is not None and fetch.calls == 1
    for _ in range(20):
        await watch.latest()  # reads never fetch themselves
    assert fetch.calls <= 2
    await asyncio.sleep(0.2)
    assert fetch.calls >= 3 and (await watch.latest()).taken_at > first.taken_at


@in_loop
async def test_a_failing_controller_leaves_no_snapshot_and_says_why() -> None:
    watch = StateWatch(CountingFetch(failing=True), every_s=0.05)
    assert await watch.latest() is None
    assert watch.error == "ConnectionError: controller gone"


@in_loop
async def test_refreshing_stops_when_nobody_reads() -> None:
    fetch = CountingFetch()
    watch = StateWatch(fetch, every_s=0.01, idle_stop_s=0.05)
    await watch.latest()
    await asyncio.sleep(0.2)
    stopped_at = fetch.calls
    await asyncio.sleep(0.1)
    assert fetch.calls == stopped_at
    await watch.latest()  # a read starts it again, with a fresh snapshot
    assert fetch.calls == stopped_at + 1


@in_loop
async def test_the_refresh_does_not_log_as_the_request_that_started_it() -> None:
    seen: list[str | None] = []

    def fetch() -> ClusterSnapshot:
        seen.append(current_request_id())
        return parse_snapshot({}, [], NOW)

    token = bind_request_id("req-that-asked-first")
    try:
        await StateWatch(fetch).latest()
    finally:
        unbind_request_id(token)
    assert seen == [None]
