"""The Grafana dashboard as a ConfigMap, for the Grafana sidecar that provisions labelled dashboards."""

from __future__ import annotations

import json
from pathlib import Path

from kubernetes import client as k8s

from cluster.k8s_pods import common_labels
from serve_app.config import ClusterConfig

DASHBOARD_FILE = Path(__file__).with_name("grafana_dashboard.json")
# What kube-prometheus-stack's Grafana sidecar looks for by default (sidecar.dashboards.label / labelValue).
DASHBOARD_LABEL = {"grafana_dashboard": "1"}
# The file the sidecar writes: one name for every cluster, since the dashboard (and its uid) is the same.
DASHBOARD_KEY = "llmcluster.json"


def dashboard_config_map(config: ClusterConfig) -> k8s.V1ConfigMap:
    text = DASHBOARD_FILE.read_text()
    json.loads(text)  # a broken file fails the render, not Grafana's sidecar later
    metadata = k8s.V1ObjectMeta(name=f"{config.cluster.name}-grafana-dashboard",
                                namespace=config.kubernetes.namespace,
                                labels={**common_labels(config), **DASHBOARD_LABEL})
    return k8s.V1ConfigMap(api_version="v1", kind="ConfigMap", metadata=metadata, data={DASHBOARD_KEY: text})
