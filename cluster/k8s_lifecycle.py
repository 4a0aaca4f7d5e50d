"""How Ray pods enter and leave service: the workers' readiness probe on /ready, and the drain of a stopping
worker that lets its model replicas move and finish their requests instead of dying with the pod."""

from __future__ import annotations

import math

from kubernetes import client as k8s

from cluster import kuberay
from serve_app.config import ClusterConfig, ConfigError, longest_drain_s

READY_PATH = "/ready"
# The probe reaches a router replica through the pod's own Serve proxy, and the router answers from a snapshot
# it keeps fresh while read: cheap enough every few seconds. /ready speaks for the whole cluster, so one slow
# answer must not take every worker out of the Service at once: three misses in a row do.
PROBE_PERIOD_S = 5
PROBE_TIMEOUT_S = 3
PROBE_FAILURE_THRESHOLD = 3
# How long Serve may take to start a replacement of a draining node's replica elsewhere before it stops the
# old one anyway: Serve stops it at the drain deadline minus the model's drain timeout at the latest.
REPLACEMENT_WINDOW_S = 60
# Around the wait: starting the drain command, `ray drain-node`, and `ray stop` after it.
STOP_MARGIN_S = 30


def drain_deadline_s(config: ClusterConfig) -> int:
    """How long a stopping worker waits for its replicas to leave: the longest drain plus time for a
    replacement to start elsewhere first."""
    return math.ceil(longest_drain_s(config)) + REPLACEMENT_WINDOW_S


def termination_grace_s(config: ClusterConfig) -> int:
    """terminationGracePeriodSeconds of a pod that hosts model replicas: the drain and what surrounds it."""
    return drain_deadline_s(config) + STOP_MARGIN_S


def readiness_probe(config: ClusterConfig) -> k8s.V1Probe:
    """/ready on the pod's own Serve port: ready once the pod's proxy runs and every model with min_replicas > 0
    has a running replica. It replaces KubeRay's worker probe, which only asks the proxy whether it is up.

    ConfigError when /ready needs an API key: the kubelet sends none, and no worker would ever be ready."""
    if READY_PATH not in config.router.auth.public_paths:
        raise ConfigError(f"router.auth.public_paths must include {READY_PATH}: the worker pods' readiness "
                          f"probe calls it without an API key")
    return k8s.V1Probe(
        http_get=k8s.V1HTTPGetAction(path=READY_PATH, port=kuberay.SERVE_PORT_NAME),
        period_seconds=PROBE_PERIOD_S, timeout_seconds=PROBE_TIMEOUT_S,
        failure_threshold=PROBE_FAILURE_THRESHOLD, success_threshold=1)


def drain_command(config: ClusterConfig) -> str:
    """The worker's preStop: drain its Ray node (Serve moves the replicas away, each finishing its requests
    within its drain timeout), then stop Ray, also when the drain fails."""
    dashboard = f"http://${{{kuberay.HEAD_ADDRESS_ENV}}}:{kuberay.DASHBOARD_PORT}"
    return f"llmcluster drain-node --dashboard {dashboard} --deadline-s {drain_deadline_s(config)}; ray stop"


def drain_on_stop(config: ClusterConfig) -> k8s.V1Lifecycle:
    return _pre_stop(drain_command(config))


def ray_stop_on_stop() -> k8s.V1Lifecycle:
    """The head's and the batch job's preStop: nothing to move elsewhere, Ray stops at once."""
    return _pre_stop("ray stop")


def _pre_stop(command: str) -> k8s.V1Lifecycle:
    # The handler takes `exec` by its wire name: the client silently drops it when given as `var_exec`.
    return k8s.V1Lifecycle(pre_stop=k8s.V1LifecycleHandler(
        **{"exec": k8s.V1ExecAction(command=["/bin/sh", "-c", command])}))
