"""The status document of `GET /admin/status` and `llmcluster status --json`: models, replicas, nodes, load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serve_app.cluster_state import RUNNING, AppView, ClusterSnapshot, DeploymentView, ReplicaView
from serve_app.names import MODEL_DEPLOYMENT_PREFIX
from serve_app.readiness import Readiness, ServedModel


@dataclass(frozen=True)
class ModelLoad:
    """One router replica's requests for a model: those a replica is serving, and those waiting for one."""

    in_flight: int
    queued: int


def status_document(snapshot: ClusterSnapshot, app_name: str, models: list[ServedModel], ready: Readiness,
                    source: str, now: float, load: Mapping[str, ModelLoad] | None = None) -> dict[str, Any]:
    """The whole status as JSON-ready data; `models` are those of application `app_name`. `load` maps model
    names to the answering router replica's counts; without it (status read from Ray, not from a router)
    in_flight and queued are null."""
    addresses = {node.id: node.address for node in snapshot.nodes}
    return {
        "source": source,
        "application": app_name,
        "age_s": round(max(0.0, now - snapshot.taken_at), 1),
        "ready": ready.ready,
        "not_ready": list(ready.not_ready),
        "reason": ready.reason,
        "applications": [_application(app) for app in snapshot.apps.values()],
        "models": [_model(snapshot.deployment(app_name, model.deployment), model, load, addresses)
                   for model in models],
        "nodes": [{"id": node.id, "address": node.address, "alive": node.alive, "resources": node.resources}
                  for node in snapshot.nodes if node.alive],
        "dead_nodes": sum(not node.alive for node in snapshot.nodes),
    }


def models_in(snapshot: ClusterSnapshot) -> tuple[str, list[ServedModel]]:
    """For a reader without the config (the CLI): the llmcluster application and its model deployments,
    named after them. ("", []) when no application has model deployments."""
    for app in snapshot.apps.values():
        models = [ServedModel(name.removeprefix(MODEL_DEPLOYMENT_PREFIX), name, dep.min_replicas or 0)
                  for name, dep in app.deployments.items() if name.startswith(MODEL_DEPLOYMENT_PREFIX)]
        if models:
            return app.name, models
    return "", []


def _application(app: AppView) -> dict[str, Any]:
    # The shape `llmcluster status --json` has always had for applications; `engine` is filled by --load.
    return {"name": app.name, "status": app.status, "message": app.message,
            "deployments": [{"name": dep.name, "status": dep.status, "replicas": dep.state_counts(),
                             "message": dep.message, "engine": []} for dep in app.deployments.values()]}


def _model(deployment: DeploymentView | None, model: ServedModel, load: Mapping[str, ModelLoad] | None,
           addresses: Mapping[str, str]) -> dict[str, Any]:
    replicas = deployment.replicas if deployment else ()
    counts = load.get(model.name) if load is not None else None
    return {
        "name": model.name,
        "deployment": model.deployment,
        "min_replicas": model.min_replicas,
        "running": sum(r.state == RUNNING for r in replicas),
        "replicas": [_replica(r, addresses) for r in replicas],
        "in_flight": counts.in_flight if counts else None,
        "queued": counts.queued if counts else None,
    }


def _replica(replica: ReplicaView, addresses: Mapping[str, str]) -> dict[str, Any]:
    # node_id/node_ip: where the replica's actor runs; nodes: every node holding part of it (a replica spanning
    # nodes has its engine workers on all of them), with the GPUs it holds there.
    return {"id": replica.id, "state": replica.state, "node_id": replica.node_id, "node_ip": replica.node_ip,
            "gpus": _number(replica.gpus), "waiting_for": replica.waiting_for or None,
            "nodes": [{"id": share.node_id, "address": addresses.get(share.node_id), "gpus": _number(share.gpus)}
                      for share in replica.nodes]}


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value
