"""Monitoring on Kubernetes: the PodMonitor scrapes the router's /metrics on the serving head, and the Grafana
dashboard ships as a ConfigMap the Grafana sidecar picks up."""

from __future__ import annotations

import json
from typing import Any

from cluster import kuberay
from cluster.k8s_dashboard import DASHBOARD_FILE, DASHBOARD_KEY, DASHBOARD_LABEL
from cluster.k8s_render import render, render_files
from serve_app.config import ClusterConfig, load_config
from tests.conftest import REPO_ROOT


def example(name: str) -> ClusterConfig:
    return load_config(REPO_ROOT / "configs" / f"{name}.yaml")


def router_endpoint(rendered: dict[str, Any]) -> dict[str, Any]:
    (endpoint,) = [e for e in rendered["podmonitor.yaml"]["spec"]["podMetricsEndpoints"]
                   if e["port"] == kuberay.SERVE_PORT_NAME]
    return endpoint


def test_the_router_metrics_are_scraped_on_the_serving_head_only() -> None:
    rendered = render(example("production"))
    endpoint = router_endpoint(rendered)
    assert endpoint["path"] == "/metrics"
    (keep,) = endpoint["relabelings"]
    assert keep["action"] == "keep" and keep["sourceLabels"] == [
        "__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    head = rendered["rayservice.yaml"]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]
    batch_head = rendered["rayjob.yaml"]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]
    assert head["labels"]["app.kubernetes.io/component"] == keep["regex"]
    assert batch_head["labels"]["app.kubernetes.io/component"] != keep["regex"]


def test_the_dashboard_config_map_holds_the_dashboard_with_the_sidecar_label() -> None:
    config = example("local")
    files = render_files(config, source="local.yaml")
    assert "grafana-dashboard.yaml" in files and "grafana-dashboard.yaml" in files["kustomization.yaml"]
    config_map = render(config)["grafana-dashboard.yaml"]
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["namespace"] == config.kubernetes.namespace
    assert config_map["metadata"]["labels"].items() >= DASHBOARD_LABEL.items()
    assert json.loads(config_map["data"][DASHBOARD_KEY]) == json.loads(DASHBOARD_FILE.read_text())


def test_no_monitoring_no_dashboard_and_no_podmonitor() -> None:
    config = example("local")
    off = config.model_copy(update={"kubernetes": config.kubernetes.model_copy(update={"monitoring": False})})
    assert not {"grafana-dashboard.yaml", "podmonitor.yaml"} & set(render(off))
