"""Everything that knows KubeRay's field names (ray.io/v1): a KubeRay upgrade touches this module only."""

from __future__ import annotations

import json
from typing import Any

API_VERSION = "ray.io/v1"
# The Ray release inside the cluster image (Dockerfile's base image); KubeRay checks pods against it.
RAY_VERSION = "2.60.0"
# KubeRay treats the first container of a Ray pod as the Ray container.
HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
# Port names KubeRay looks for on the head container; `serve` is where Ray Serve's HTTP proxy listens.
SERVE_PORT_NAME = "serve"
METRICS_PORT_NAME = "metrics"
SERVE_PORT = 8000
METRICS_PORT = 8080
DASHBOARD_PORT = 8265
HEAD_PORTS = {"gcs-server": 6379, "dashboard": DASHBOARD_PORT, "client": 10001, SERVE_PORT_NAME: SERVE_PORT,
              METRICS_PORT_NAME: METRICS_PORT}
WORKER_PORTS = {METRICS_PORT_NAME: METRICS_PORT}
# A RayService's workers also run a Serve proxy (proxy_location EveryNode); KubeRay looks its port up by name.
SERVING_WORKER_PORTS = {**WORKER_PORTS, SERVE_PORT_NAME: SERVE_PORT}
# The head Service's address, set by KubeRay in every worker container (the head's dashboard listens there).
HEAD_ADDRESS_ENV = "FQ_RAY_IP"
# Who calls the head's dashboard port from outside the Ray cluster: the operator, to deploy a RayService's
# Serve config and follow its state (labels its pod has under both the Helm chart and the kustomize install),
# and a RayJob's submitter pod (K8sJobMode), in a Job that KubeRay names after the RayJob.
OPERATOR_POD_LABELS = {"app.kubernetes.io/component": "kuberay-operator"}
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# KubeRay sets this label to "true" on pods whose Serve proxy is healthy in the cluster that serves, so a
# Service selecting it never sends traffic to a cluster still starting during an upgrade.
SERVE_READY_LABEL = "ray.io/serve"
# spec.upgradeStrategy.type values of a RayService (the CRD leaves the field a free string; these are the
# ones KubeRay v1.7 acts on). NewClusterWithIncrementalUpgrade needs the Gateway API, so it is not offered.
UPGRADE_STRATEGIES = ("NewCluster", "None")
# Autoscaler sidecar size: KubeRay's defaults, written out so a rendered manifest states them.
AUTOSCALER_RESOURCES = {"cpu": "500m", "memory": "512Mi"}


def ray_start_resources(resources: dict[str, int]) -> str:
    """The `resources` rayStartParam: a JSON object, quoted and escaped as KubeRay and Ray's autoscaler parse it."""
    as_json = json.dumps(resources, sort_keys=True)
    return '"' + as_json.replace('"', '\\"') + '"'


def head_group(template: dict[str, Any], ray_cpus: int | None) -> dict[str, Any]:
    """The head group: it advertises no GPU, so no model replica ever lands on it."""
    params = {"dashboard-host": "0.0.0.0", "num-gpus": "0"}
    if ray_cpus is not None:
        params["num-cpus"] = str(ray_cpus)
    return {"rayStartParams": params, "template": template}


def worker_group(name: str, template: dict[str, Any], *, min_replicas: int, max_replicas: int,
                 replicas: int, resources: dict[str, int]) -> dict[str, Any]:
    """One worker group: a node pool whose pods advertise the custom Ray resources in `resources`."""
    params = {"resources": ray_start_resources(resources)} if resources else {}
    return {"groupName": name, "replicas": replicas, "minReplicas": min_replicas, "maxReplicas": max_replicas,
            "rayStartParams": params, "template": template}


def cluster_spec(head: dict[str, Any], workers: list[dict[str, Any]], *, idle_timeout_s: int,
                 image_pull_policy: str) -> dict[str, Any]:
    """A RayCluster spec with the in-tree autoscaler, so worker pods follow the replicas Serve asks for."""
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": idle_timeout_s,
            "imagePullPolicy": image_pull_policy,
            "resources": {"limits": dict(AUTOSCALER_RESOURCES), "requests": dict(AUTOSCALER_RESOURCES)},
        },
        "headGroupSpec": head,
        "workerGroupSpecs": workers,
    }


def ray_service(metadata: dict[str, Any], serve_config_v2: str, spec: dict[str, Any],
                upgrade_strategy: str) -> dict[str, Any]:
    if upgrade_strategy not in UPGRADE_STRATEGIES:
        raise ValueError(f"upgrade strategy {upgrade_strategy!r} is not one of {', '.join(UPGRADE_STRATEGIES)}")
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": metadata,
        "spec": {
            "upgradeStrategy": {"type": upgrade_strategy},
            "serveConfigV2": serve_config_v2,
            "rayClusterConfig": spec,
        },
    }


def ray_job(metadata: dict[str, Any], entrypoint: str, spec: dict[str, Any], *,
            ttl_seconds_after_finished: int) -> dict[str, Any]:
    """A RayJob created suspended: applying the manifests starts nothing until the job is unsuspended."""
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": metadata,
        "spec": {
            "entrypoint": entrypoint,
            "suspend": True,
            "submissionMode": "K8sJobMode",
            "backoffLimit": 0,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": ttl_seconds_after_finished,
            "rayClusterSpec": spec,
        },
    }
