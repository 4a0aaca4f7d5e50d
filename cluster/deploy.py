"""Deploying a cluster config to Ray Serve, and reading back what runs."""

from __future__ import annotations

import logging
import time

from serve_app.builder import build_application, model_deployment_name
from serve_app.config import ClusterConfig
from serve_app.log_setup import serve_logging_config
from serve_app.tracing import serve_tracing_config

logger = logging.getLogger(__name__)

# Longest wait for an application to go: Serve itself stops each replica within its drain_timeout_s.
REMOVE_TIMEOUT_S = 900.0
REMOVE_POLL_S = 1.0


def deploy(config: ClusterConfig) -> None:
    """Deploy `config` to the Ray cluster this process is connected to; returns once it serves."""
    from ray import serve

    serve.start(proxy_location=config.router.proxy_location,
                http_options={"host": config.router.host, "port": config.router.port,
                              "request_timeout_s": config.router.request_timeout_s},
                logging_config=serve_logging_config(config.logging),
                tracing_config=serve_tracing_config(config.router.tracing))
    serve.run(build_application(config), name=config.cluster.name, route_prefix="/", blocking=False)


def remove(app_name: str, timeout_s: float = REMOVE_TIMEOUT_S) -> bool:
    """Delete the application, waiting while its replicas drain; False when there was none.

    TimeoutError if it is still there after `timeout_s`."""
    from ray import serve

    if app_name not in serve.status().applications:
        return False
    # serve.delete's own wait gives up after 60 s, sooner than a replica's drain may end.
    serve.delete(app_name, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while app_name in serve.status().applications:
        if time.monotonic() > deadline:
            raise TimeoutError(f"application {app_name} still stopping after {timeout_s:.0f}s")
        time.sleep(REMOVE_POLL_S)
    return True


def base_url(config: ClusterConfig) -> str:
    host = "127.0.0.1" if config.router.host in ("0.0.0.0", "::") else config.router.host
    return f"http://{host}:{config.router.port}/v1"


__all__ = ["deploy", "remove", "base_url", "model_deployment_name"]
