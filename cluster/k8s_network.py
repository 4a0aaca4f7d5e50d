"""The NetworkPolicy of a cluster's pods: Ray's own ports stay inside the cluster, the OpenAI port is open."""

from __future__ import annotations

from kubernetes import client as k8s

from cluster import kuberay
from cluster.k8s_pods import common_labels
from serve_app.config import ClusterConfig


def network_policy(config: ClusterConfig, metadata: k8s.V1ObjectMeta, batch_job: str) -> k8s.V1NetworkPolicy:
    """Ingress to every Ray pod of the cluster (the RayService's and the batch RayJob's); egress is left open.

    Ray's ports (GCS, raylets, object transfer, workers: most chosen at random) take traffic from the cluster's
    own pods only, the dashboard also from KubeRay, the Serve port from anywhere."""
    own_pods = k8s.V1NetworkPolicyPeer(pod_selector=k8s.V1LabelSelector(match_labels=common_labels(config)))
    rules = [
        k8s.V1NetworkPolicyIngressRule(_from=[own_pods]),
        # The OpenAI API: from the Service, an Ingress controller or a load balancer, wherever they run.
        k8s.V1NetworkPolicyIngressRule(ports=[_tcp(kuberay.SERVE_PORT)]),
        k8s.V1NetworkPolicyIngressRule(ports=[_tcp(kuberay.DASHBOARD_PORT)], _from=[
            k8s.V1NetworkPolicyPeer(namespace_selector=k8s.V1LabelSelector(),
                                    pod_selector=k8s.V1LabelSelector(match_labels=kuberay.OPERATOR_POD_LABELS)),
            k8s.V1NetworkPolicyPeer(pod_selector=k8s.V1LabelSelector(
                match_labels={kuberay.JOB_NAME_LABEL: batch_job})),
        ]),
    ]
    if config.kubernetes.monitoring:
        # The port the PodMonitor scrapes, from pods of any namespace: Prometheus runs in a namespace of its own
        # whose name differs between installs (monitoring, prometheus, kube-prometheus-stack, ...), and the
        # metrics hold model and tenant names, never keys. Clients outside the Kubernetes cluster stay out.
        rules.append(k8s.V1NetworkPolicyIngressRule(
            ports=[_tcp(kuberay.METRICS_PORT)],
            _from=[k8s.V1NetworkPolicyPeer(namespace_selector=k8s.V1LabelSelector())]))
    return k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1", kind="NetworkPolicy", metadata=metadata,
        spec=k8s.V1NetworkPolicySpec(pod_selector=k8s.V1LabelSelector(match_labels=common_labels(config)),
                                     policy_types=["Ingress"], ingress=rules))


def _tcp(port: int) -> k8s.V1NetworkPolicyPort:
    return k8s.V1NetworkPolicyPort(port=port, protocol="TCP")
