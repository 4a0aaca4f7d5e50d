"""Renders one cluster config into the Kubernetes objects that run it under KubeRay, and writes them as YAML."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from cluster import kuberay
from cluster.k8s_dashboard import dashboard_config_map
from cluster.k8s_network import network_policy
from cluster.k8s_pods import (CONFIG_DIR, CONFIG_FILE, cache_claim_name, common_labels, config_map_name,
                              head_template, worker_template)
from cluster.node_pools import PoolPlan, head_ray_cpus, plan_pools, uses_gpu
from serve_app.config import ClusterConfig
from serve_app.kubernetes_config import default_image
from serve_app.log_setup import serve_logging_config
from serve_app.placement import ACCELERATOR_RESOURCE, NODE_POOL_RESOURCE
from serve_app.tracing import serve_tracing_config

SERVE_IMPORT_PATH = "serve_app.builder:build_app"
# What a worker pod advertises as node_pool:<pool>; replicas ask 0.001 per bundle, so it never runs out.
POOL_RESOURCE_AMOUNT = 1000
KUSTOMIZATION = "kustomization.yaml"
HEADER = "# Rendered from {source} by `llmcluster render k8s`: edit the config and render again, not this file.\n"


def pod_config(config: ClusterConfig) -> ClusterConfig:
    """The config as the pods see it: the router listens on every interface of its pod."""
    return config.model_copy(update={"router": config.router.model_copy(update={"host": "0.0.0.0"})})


def serve_config_v2(config: ClusterConfig) -> dict[str, Any]:
    """The Serve deploy config of the RayService: the application `llmcluster serve` deploys, config inline.

    The kubernetes section stays out of the application's args: changing a pod setting must not redeploy
    every model replica.
    """
    serving = pod_config(config).model_dump(mode="json", exclude={"kubernetes"})
    serve_config = {
        "proxy_location": config.router.proxy_location,
        "http_options": {"host": "0.0.0.0", "port": kuberay.SERVE_PORT,
                         "request_timeout_s": config.router.request_timeout_s},
        "applications": [{
            "name": config.cluster.name,
            "import_path": SERVE_IMPORT_PATH,
            "route_prefix": "/",
            "args": {"config": serving},
        }],
    }
    # Cluster-wide Serve settings, as `llmcluster serve` passes them to serve.start.
    for key, value in (("logging_config", serve_logging_config(config.logging)),
                       ("tracing_config", serve_tracing_config(config.router.tracing))):
        if value is not None:
            serve_config[key] = value
    return serve_config


def image_of(config: ClusterConfig) -> str:
    return config.kubernetes.image or default_image(uses_gpu(config))


def render(config: ClusterConfig) -> dict[str, dict[str, Any]]:
    """File name -> object, in the order kustomization.yaml lists them."""
    settings = config.kubernetes
    objects: dict[str, Any] = {"configmap.yaml": _config_map(config)}
    if settings.model_cache.volume == "pvc":
        objects["pvc.yaml"] = _cache_claim(config)
    objects["rayservice.yaml"] = _ray_service(config)
    objects["service.yaml"] = _openai_service(config)
    objects["networkpolicy.yaml"] = network_policy(config, _metadata(config, config.cluster.name),
                                                   batch_job=batch_job_name(config))
    if settings.monitoring:
        objects["podmonitor.yaml"] = _pod_monitor(config)
        objects["grafana-dashboard.yaml"] = dashboard_config_map(config)
    objects["rayjob.yaml"] = _batch_job(config)
    with k8s.ApiClient() as api:
        return {name: api.sanitize_for_serialization(obj) for name, obj in objects.items()}


def render_files(config: ClusterConfig, source: str) -> dict[str, str]:
    """File name -> YAML text of every manifest plus kustomization.yaml; identical input, identical bytes."""
    header = HEADER.format(source=source)
    files = {name: header + to_yaml(obj) for name, obj in render(config).items()}
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": list(files)}
    files[KUSTOMIZATION] = header + to_yaml(kustomization)
    return files


def write_files(files: dict[str, str], out_dir: Path) -> None:
    """Write `files` into `out_dir`, removing manifests an earlier render wrote and this one no longer does."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.yaml"):
        if stale.name not in files and stale.read_text().startswith("# Rendered from "):
            stale.unlink()
    for name, text in files.items():
        (out_dir / name).write_text(text)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the embedded serveConfigV2) as readable literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def to_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_BlockDumper, sort_keys=True, default_flow_style=False, width=120)


def _metadata(config: ClusterConfig, name: str) -> k8s.V1ObjectMeta:
    return k8s.V1ObjectMeta(name=name, namespace=config.kubernetes.namespace, labels=common_labels(config))


def _config_map(config: ClusterConfig) -> k8s.V1ConfigMap:
    text = yaml.safe_dump(pod_config(config).model_dump(mode="json"), sort_keys=False)
    return k8s.V1ConfigMap(api_version="v1", kind="ConfigMap", metadata=_metadata(config, config_map_name(config)),
                           data={CONFIG_FILE: text})


def _cache_claim(config: ClusterConfig) -> k8s.V1PersistentVolumeClaim:
    cache = config.kubernetes.model_cache
    return k8s.V1PersistentVolumeClaim(
        api_version="v1", kind="PersistentVolumeClaim", metadata=_metadata(config, cache_claim_name(config)),
        spec=k8s.V1PersistentVolumeClaimSpec(
            access_modes=[cache.access_mode], storage_class_name=cache.storage_class,
            resources=k8s.V1VolumeResourceRequirements(requests={"storage": cache.size})))


def _ray_service(config: ClusterConfig) -> dict[str, Any]:
    settings = config.kubernetes
    head = kuberay.head_group(head_template(config, image_of(config), "ray-head", serving=True),
                              head_ray_cpus(config))
    workers = [_worker_group(config, plan, "ray-worker", min_nodes=plan.min_nodes, serving=True)
               for plan in plan_pools(config)]
    spec = kuberay.cluster_spec(head, workers, idle_timeout_s=settings.idle_timeout_s,
                                image_pull_policy=settings.image_pull_policy)
    serve_yaml = to_yaml(serve_config_v2(config))
    return kuberay.ray_service(_metadata(config, config.cluster.name), serve_yaml, spec, settings.upgrade_strategy)


def _worker_group(config: ClusterConfig, plan: PoolPlan, component: str, *, min_nodes: int,
                  serving: bool) -> dict[str, Any]:
    pool = plan.pool
    resources = {NODE_POOL_RESOURCE.format(pool.name): POOL_RESOURCE_AMOUNT}
    if pool.accelerator:
        # Ray detects the GPU type only once a pod runs; the autoscaler must know it before it starts one.
        resources[ACCELERATOR_RESOURCE.format(pool.accelerator)] = 1
    template = worker_template(config, image_of(config), component, pool, serving=serving)
    return kuberay.worker_group(pool.name, template, min_replicas=min_nodes, max_replicas=plan.max_nodes,
                                replicas=max(plan.initial_nodes, min_nodes), resources=resources)


def _openai_service(config: ClusterConfig) -> k8s.V1Service:
    selector = {"app.kubernetes.io/instance": config.cluster.name, "app.kubernetes.io/component": "ray-head",
                kuberay.SERVE_READY_LABEL: "true"}
    return k8s.V1Service(
        api_version="v1", kind="Service", metadata=_metadata(config, f"{config.cluster.name}-openai"),
        spec=k8s.V1ServiceSpec(
            type=config.kubernetes.service_type, selector=selector,
            ports=[k8s.V1ServicePort(name="http", port=config.router.port, target_port=kuberay.SERVE_PORT_NAME,
                                     protocol="TCP")]))


def _pod_monitor(config: ClusterConfig) -> dict[str, Any]:
    """Prometheus Operator scraping of Ray's metrics port on every pod of the cluster and its batch jobs, and
    of the router's /metrics (router, vLLM and replica metrics of the whole cluster) on the RayService's head."""
    selector = {"app.kubernetes.io/name": "llmcluster", "app.kubernetes.io/instance": config.cluster.name}
    # Serve's proxy on the head passes /metrics to a router replica, which answers for the whole cluster; the
    # batch job's head has the same port with nothing behind it, and a worker's proxy would repeat the data.
    head_only = {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"], "regex": "ray-head",
                 "action": "keep"}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata(config, config.cluster.name),
        "spec": {
            "selector": {"matchLabels": selector},
            "podMetricsEndpoints": [
                {"port": kuberay.METRICS_PORT_NAME, "path": "/metrics", "interval": "15s"},
                {"port": kuberay.SERVE_PORT_NAME, "path": "/metrics", "interval": "15s", "relabelings": [head_only]},
            ],
        },
    }


def batch_job_name(config: ClusterConfig) -> str:
    return f"{config.cluster.name}-batch"


def batch_entrypoint(config: ClusterConfig) -> str:
    batch = config.kubernetes.batch
    return shlex.join(["llmcluster", "batch", f"{CONFIG_DIR}/{CONFIG_FILE}", "--model", config.models[0].name,
                       "--input", batch.input, "--output", batch.output])


def _batch_job(config: ClusterConfig) -> dict[str, Any]:
    """A RayJob running `llmcluster batch` for the first model on a cluster of its own, gone when it ends.

    Its head keeps its CPUs (the job's driver and Ray Data's reading and writing run there), never GPUs.
    """
    settings = config.kubernetes
    head = kuberay.head_group(head_template(config, image_of(config), "batch-head", serving=False), ray_cpus=None)
    plans = plan_pools(config, model_names=(config.models[0].name,))
    # Scale from zero: between jobs nothing runs, and the job's engines ask the autoscaler for their nodes.
    workers = [_worker_group(config, plan, "batch-worker", min_nodes=0, serving=False) for plan in plans]
    spec = kuberay.cluster_spec(head, workers, idle_timeout_s=settings.idle_timeout_s,
                                image_pull_policy=settings.image_pull_policy)
    return kuberay.ray_job(_metadata(config, batch_job_name(config)), batch_entrypoint(config), spec,
                           ttl_seconds_after_finished=settings.batch.ttl_seconds_after_finished)
