"""Submitting a batch job to Kubernetes: the config's rendered RayJob, set to this job's model and files."""

from __future__ import annotations

import time
from typing import Any, Protocol

from cluster.batch.job import model_of
from cluster.k8s_render import render
from cluster.kuberay import API_VERSION
from serve_app.config import ClusterConfig

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "rayjobs"


class CustomObjects(Protocol):
    """The part of the kubernetes client's CustomObjectsApi a submission uses."""

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: dict[str, Any]) -> dict[str, Any]: ...


def batch_rayjob(config: ClusterConfig, model: str, input: str, output: str, name: str | None = None) -> dict[str, Any]:
    """The RayJob `llmcluster render k8s` writes to rayjob.yaml, running `model` on `input` and `output` (paths
    in the job's head pod), under a name of its own and not suspended, so it starts once created."""
    chosen = model_of(config, model)
    # The rendered job runs the first model of the config on the files of its batch section: this job's.
    batch = config.kubernetes.batch.model_copy(update={"input": input, "output": output})
    job_config = config.model_copy(update={
        "models": (chosen, *(m for m in config.models if m is not chosen)),
        "kubernetes": config.kubernetes.model_copy(update={"batch": batch}),
    })
    job = render(job_config)["rayjob.yaml"]
    # The applied manifests hold a suspended <cluster>-batch; a submitted job must not collide with it.
    job["metadata"]["name"] = name or f"{config.cluster.name}-batch-{time.strftime('%m%d%H%M%S')}"
    job["spec"]["suspend"] = False
    return job


def submit_rayjob(api: CustomObjects, job: dict[str, Any]) -> str:
    """Creates the RayJob; its name."""
    created = api.create_namespaced_custom_object(GROUP, VERSION, job["metadata"]["namespace"], PLURAL, job)
    return created["metadata"]["name"]


def kubernetes_api() -> CustomObjects:
    """CustomObjectsApi of the cluster this runs in, else of the current kubeconfig context."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def follow_hint(job: dict[str, Any]) -> list[str]:
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    return [f"submitted RayJob {namespace}/{name}",
            f"status:  kubectl -n {namespace} get rayjob {name} -w",
            f"logs:    kubectl -n {namespace} logs -f job/{name}"]
