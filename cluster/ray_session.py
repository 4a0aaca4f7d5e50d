"""Starting or joining a Ray cluster, and remembering the local one so other commands can find it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from serve_app.model_source import default_cache_dir

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Ray's switch for multi-machine clusters, off by default on macOS and Windows; see _pin_node_ip_to_loopback.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


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
    """Drop the record, if this process wrote it: another `llmcluster serve` may have recorded its own since."""
    try:
        if json.loads(_record_path().read_text()).get("pid") == os.getpid():
            _record_path().unlink(missing_ok=True)
    except (OSError, ValueError, AttributeError):
        pass


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
    """Start a Ray cluster inside this process, reachable from this machine only; it lives as long as the process.

    Ray's token auth (RAY_AUTH_MODE, on by default for new clusters) stays as the environment sets it."""
    _pin_node_ip_to_loopback()
    import ray

    # Loopback also keeps a laptop's changing network from breaking the cluster.
    context = ray.init(address="local", include_dashboard=False, _node_ip_address=LOOPBACK,
                       configure_logging=False, log_to_driver=True)
    return context.address_info["gcs_address"]


def _pin_node_ip_to_loopback() -> None:
    """Make 127.0.0.1 the node's address, so Ray's servers listen on loopback, not on every interface.

    On Linux ray.init turns _node_ip_address="127.0.0.1" into the machine's outward address (services.
    resolve_ip_for_localhost), and its gRPC servers (GCS, raylet, object manager, workers) then listen on all
    interfaces. It keeps loopback only where single-machine clusters are the rule (macOS, Windows), a choice
    read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when ray is first imported, maybe before this call.
    """
    os.environ[SINGLE_MACHINE_ENV] = "0"  # Ray's own processes import ray afresh
    # vLLM's Ray executor requires its own idea of the node address (else the outward one) to match Ray's.
    from serve_app.vllm_adapter import pin_engine_host

    pin_engine_host(LOOPBACK)
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def join_ray(address: str, auth_mode: str | None = None) -> None:
    if auth_mode and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = auth_mode  # read once, when ray is first imported
    if address.partition(":")[0] in (LOOPBACK, "localhost"):
        # A cluster on loopback is one `llmcluster serve` started: unpinned, ray.init would look for it on
        # the machine's outward address, where nothing listens, and wait minutes before giving up.
        _pin_node_ip_to_loopback()
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
