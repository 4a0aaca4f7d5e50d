"""Cluster snapshots as Serve's controller reports them, and a state watch that returns a fixed one."""

from __future__ import annotations

from typing import Any

from serve_app.cluster_state import ClusterSnapshot, parse_snapshot

APP = "llmcluster"
NOW = 1_000_000.0


def replica(replica_id: str, state: str = "RUNNING", node: str | None = "node-1") -> dict[str, Any]:
    return {"replica_id": replica_id, "state": state, "node_id": node, "node_ip": "10.0.0.1" if node else None,
            "pid": 7, "start_time_s": NOW - 60, "actor_name": f"SERVE_REPLICA::{APP}#dep#{replica_id}"}


def deployment(*replicas: dict[str, Any], min_replicas: int | None = 1, status: str = "HEALTHY") -> dict[str, Any]:
    config: dict[str, Any] = {"num_replicas": min_replicas} if min_replicas is not None else {}
    return {"status": status, "message": "", "replicas": list(replicas), "deployment_config": config}


def placement_group(replica_id: str, bundles: list[dict[str, float]], nodes: list[str],
                    state: str = "CREATED") -> dict[str, Any]:
    """A row of ray.util.placement_group_table() for the replica's group; `nodes` holds each placed bundle's."""
    return {"placement_group_id": f"pg-{replica_id}-{state}", "name": f"SERVE_REPLICA::{APP}#dep#{replica_id}",
            "bundles": dict(enumerate(bundles)), "bundles_to_node_id": dict(enumerate(nodes)),
            "strategy": "PACK", "state": state}


def details(deployments: dict[str, dict[str, Any]], app: str = APP) -> dict[str, Any]:
    """The shape of the controller's get_serve_instance_details, trimmed to what llmcluster reads."""
    return {"applications": {app: {"status": "RUNNING", "message": "", "deployments": deployments}},
            "proxies": {}}


NODES = [{"NodeID": "node-1", "NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"CPU": 2.0}},
         {"NodeID": "node-0", "NodeManagerAddress": "10.0.0.9", "Alive": False, "Resources": {}}]


def snapshot(deployments: dict[str, dict[str, Any]], taken_at: float = NOW) -> ClusterSnapshot:
    return parse_snapshot(details(deployments), NODES, taken_at)


class FixedWatch:
    """StateWatch's surface, answering with a snapshot the test sets (None: nothing known yet)."""

    def __init__(self, latest: ClusterSnapshot | None, error: str | None = None) -> None:
        self.snapshot = latest
        self.error = error

    async def latest(self) -> ClusterSnapshot | None:
        return self.snapshot
