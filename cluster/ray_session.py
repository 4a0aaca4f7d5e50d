"""Starting or joining a Ray cluster, and remembering the local one so other commands can find it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from serve_app.model_source import default_cache_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalCluster:
    """What `llmcluster serve` records about the Ray cluster it started."""

    address: str
    app_name: str
    url: str
    pid: int
    auth_mode: str | None = None  # Ray turns token auth on for new local clusters; joiners must match


def _record_path() -> Path:
    return default_cache_dir() / "run" / "local-cluster.json"


def record_local_cluster(cluster: LocalCluster) -> None:
    path = _record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(cluster)))


def forget_local_cluster() -> None:
    _record_path().unlink(missing_ok=True)


def recorded_local_cluster() -> LocalCluster | None:
    """The local cluster started by `llmcluster serve`, if its process is still alive."""
    try:
        cluster = LocalCluster(**json.loads(_record_path().read_text()))
    except (OSError, ValueError, TypeError):
        return None
    try:
        os.kill(cluster.pid, 0)
    except ProcessLookupError:
        return None
    return cluster


def start_local_ray() -> str:
    """Start a Ray cluster inside this process; it lives as long as the process does."""
    import ray

    # The address is pinned to loopback so a laptop's changing network does not break the cluster.
    context = ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                       configure_logging=False, log_to_driver=True)
    return context.address_info["gcs_address"]


def join_ray(address: str, auth_mode: str | None = None) -> None:
    if auth_mode and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = auth_mode  # read once, when ray is first imported
    import ray

    ray.init(address=address, configure_logging=False, log_to_driver=False)


def connect(explicit: str | None) -> bool:
    """Join the cluster given by --address, else RAY_ADDRESS, else the one `llmcluster serve` started.

    False when there is none to join."""
    address = explicit or os.environ.get("RAY_ADDRESS")
    if address:
        join_ray(address)
        return True
    recorded = recorded_local_cluster()
    if recorded is None:
        return False
    join_ray(recorded.address, recorded.auth_mode)
    return True


def leave() -> None:
    """Disconnect; a cluster this process started goes down with it, Serve's actors included."""
    import ray

    ray.shutdown()
