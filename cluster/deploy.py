"""Deploying a cluster config to Ray Serve, and reading back what runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from serve_app.builder import MODEL_DEPLOYMENT_PREFIX, build_application, model_deployment_name
from serve_app.config import ClusterConfig

logger = logging.getLogger(__name__)


def deploy(config: ClusterConfig) -> None:
    """Deploy `config` to the Ray cluster this process is connected to; returns once it serves."""
    from ray import serve

    serve.start(proxy_location=config.router.proxy_location,
                http_options={"host": config.router.host, "port": config.router.port,
                              "request_timeout_s": config.router.request_timeout_s})
    serve.run(build_application(config), name=config.cluster.name, route_prefix="/", blocking=False)


def remove(app_name: str) -> bool:
    """Delete the application; False when there was none."""
    from ray import serve

    if app_name not in serve.status().applications:
        return False
    serve.delete(app_name)
    return True


def base_url(config: ClusterConfig) -> str:
    host = "127.0.0.1" if config.router.host in ("0.0.0.0", "::") else config.router.host
    return f"http://{host}:{config.router.port}/v1"


@dataclass
class DeploymentStatus:
    name: str
    status: str
    replicas: dict[str, int] = field(default_factory=dict)
    message: str = ""
    engine: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AppStatus:
    name: str
    status: str
    message: str
    deployments: list[DeploymentStatus]


def application_status(engine_stats: bool = False) -> list[AppStatus]:
    """Every Serve application with its deployments' replica states, and engine load when asked.

    Engine load is a call through the model's deployment handle. Serve's autoscaler counts it, and keeps the
    last report of a handle for 10 s after its process is gone, so polling it would hold a model up."""
    from ray import serve

    apps = []
    for app_name, app in serve.status().applications.items():
        deployments = []
        for name, dep in app.deployments.items():
            replicas = {str(state.value if hasattr(state, "value") else state): count
                        for state, count in dep.replica_states.items()}
            status = DeploymentStatus(name, str(dep.status.value if hasattr(dep.status, "value") else dep.status),
                                      replicas, dep.message)
            if engine_stats and name.startswith(MODEL_DEPLOYMENT_PREFIX) and replicas.get("RUNNING"):
                status.engine = _engine_stats(app_name, name)
            deployments.append(status)
        apps.append(AppStatus(app_name, str(app.status.value if hasattr(app.status, "value") else app.status),
                              app.message, deployments))
    return apps


def _engine_stats(app_name: str, deployment: str) -> list[dict[str, Any]]:
    from ray import serve

    try:
        handle = serve.get_deployment_handle(deployment, app_name=app_name)
        return [handle.stats.remote().result(timeout_s=10)]
    except Exception as exc:  # status is best effort: a busy or restarting replica must not break it
        logger.debug("no stats from %s: %s", deployment, exc)
        return []


__all__ = ["deploy", "remove", "base_url", "application_status", "model_deployment_name"]
