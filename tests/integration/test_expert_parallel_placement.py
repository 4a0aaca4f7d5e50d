"""Wide expert parallelism on a simulated GPU cluster: configs/deepseek-v3-ep.yaml's 16 data-parallel ranks run as
one gang of Serve replicas on the two 8-GPU nodes of its rendered pool, each rank's engine told its rank, the
address the ranks meet at, and a bundle of its own (tests/placement_fakes.py reports what each engine got)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from serve_app.config import ClusterConfig, parse_config
from serve_app.names import MODEL_DEPLOYMENT_PREFIX
from serve_app.serve_internals import serve_details
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import free_port
from tests.gpu_cluster import SimulatedCluster, rendered_cluster, wait_for
from tests.placement_fakes import PlacementProbeEngine

APP = MODEL = "deepseek-v3"
CONFIG, POOL = "deepseek-v3-ep", "h100"
RANKS = 16
TIMEOUT_S = 120


@dataclass
class WideEp:
    config: ClusterConfig
    reports: dict[int, dict[str, Any]]  # data-parallel rank -> what its engine found
    pool_nodes: list[str]
    details: dict[str, Any]  # Serve's view of the model's deployment


def ep_config(port: int) -> ClusterConfig:
    data = yaml.safe_load((REPO_ROOT / "configs" / f"{CONFIG}.yaml").read_text())
    data["router"] = {**data["router"], "host": "127.0.0.1", "port": port, "api_keys_env": None}
    data["cluster"] = {"name": APP}
    return parse_config(data, origin=f"configs/{CONFIG}.yaml")


def deployment() -> dict[str, Any]:
    return serve_details()["applications"][APP]["deployments"][MODEL_DEPLOYMENT_PREFIX + MODEL]


def all_ranks_running() -> dict[str, Any] | None:
    try:
        details = deployment()
    except KeyError:  # the application is still being deployed
        return None
    running = [r for r in details.get("replicas") or () if r["state"] == "RUNNING"]
    return details if len(running) == RANKS else None


def rank_reports(url: str) -> dict[int, dict[str, Any]] | None:
    """Asks until every rank has answered once: Serve routes each request to one of the 16 replicas."""
    reports: dict[int, dict[str, Any]] = {}
    with httpx.Client(timeout=30) as client:
        for _ in range(20 * RANKS):
            try:
                reply = client.post(f"{url}/v1/chat/completions",
                                    json={"model": MODEL, "messages": [{"role": "user", "content": "where?"}]})
            except httpx.HTTPError:
                return None
            if reply.status_code != 200:
                return None
            report = json.loads(reply.json()["choices"][0]["message"]["content"])
            reports[report["data_parallel"]["rank"]] = report
            if len(reports) == RANKS:
                return reports
    return None


@pytest.fixture(scope="module")
def wide_ep() -> Iterator[WideEp]:
    rendered = rendered_cluster(CONFIG)
    cluster = SimulatedCluster(rendered.head, free_port())
    try:
        nodes = cluster.add(POOL, rendered.groups[POOL], 2)  # the two nodes one replica needs
        config = ep_config(cluster.port)
        cluster.deploy(config, PlacementProbeEngine)
        details = wait_for("the 16 ranks to run", all_ranks_running, TIMEOUT_S, every_s=2)
        reports = wait_for("all 16 ranks to answer", lambda: rank_reports(cluster.url), TIMEOUT_S, every_s=2)
        yield WideEp(config, reports, nodes, details)
    finally:
        cluster.shutdown()


def test_one_replica_is_a_gang_of_sixteen_serve_replicas(wide_ep: WideEp) -> None:
    details = wide_ep.details
    gang = details["deployment_config"]["gang_scheduling_config"]
    assert (gang["gang_size"], gang["gang_placement_strategy"]) == (RANKS, "PACK")
    assert len([r for r in details["replicas"] if r["state"] == "RUNNING"]) == RANKS
    assert details["target_num_replicas"] == RANKS  # min_replicas 1 of the config: one gang


def test_each_rank_knows_its_rank_and_where_the_group_meets(wide_ep: WideEp) -> None:
    reports = wide_ep.reports
    assert sorted(reports) == list(range(RANKS))
    ranks = [report["data_parallel"] for report in reports.values()]
    assert {r["size"] for r in ranks} == {RANKS}
    assert len({(r["address"], r["rpc_port"], r["meeting_key"]) for r in ranks}) == 1  # rank 0's, for all
    assert all(r["expert_parallel"] and (r["tensor"], r["executor"]) == (1, "ray") for r in reports.values())


def test_sixteen_ranks_take_one_gpu_each_on_exactly_two_nodes(wide_ep: WideEp) -> None:
    reports = wide_ep.reports
    bundles = [b for report in reports.values() for b in report["bundles"]]
    assert all(len(report["bundles"]) == 1 for report in reports.values())
    assert sorted(b["index"] for b in bundles) == list(range(RANKS))  # disjoint: every bundle once
    assert all(b["worker_node"] == b["reserved_on"] for b in bundles)
    per_node = Counter(b["worker_node"] for b in bundles)
    assert set(per_node) == set(wide_ep.pool_nodes) and sorted(per_node.values()) == [8, 8]
    for node in per_node:  # each rank's worker has a GPU of its own
        assert sorted(g for b in bundles if b["worker_node"] == node for g in b["gpu_ids"]) == list("01234567")
    # Global rank 0 hosts vLLM's rendezvous: its worker runs on the node whose address rank 0 published.
    assert reports[0]["bundles"][0]["worker_node"] == reports[0]["replica_node"]
