"""What llmcluster reads from Ray Serve's private API: a Ray upgrade that moves it touches this module only."""

from __future__ import annotations

import sys
from typing import Any


def serve_request_id() -> str | None:
    """The id of the request the calling code serves inside a Serve replica (its X-Request-Id), else None.

    Serve keeps it in a context variable for its own access log. Outside Serve the module is not even
    loaded, and nothing is imported to find that out: this runs for every log record."""
    context = sys.modules.get("ray.serve.context")
    if context is None:
        return None
    try:
        return context._get_serve_request_context().request_id or None
    except Exception:  # a log line must never fail over this
        return None


def serve_details() -> dict[str, Any]:
    """The Serve controller's view of every application, deployment and replica, as plain JSON-ready data.

    The same document Ray's dashboard serves at /api/serve/applications/; blocking, one controller call. Empty
    when Serve is not running."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return client.get_serve_details() if client is not None else {}


def ray_nodes() -> list[dict[str, Any]]:
    """Every node the cluster has known, alive or dead (Ray's public ray.nodes()); blocking, one GCS call."""
    import ray

    return ray.nodes()


def placement_groups() -> dict[str, dict[str, Any]]:
    """Ray's placement group table (public ray.util API): each group's name, state, bundles and their nodes."""
    from ray.util import placement_group_table

    return placement_group_table()


def gang_context() -> Any:
    """The gang this Serve replica belongs to (its rank, size, gang id and placement group), else None."""
    from ray import serve

    return serve.get_replica_context().gang_context


def placement_group_bundle_nodes(name: str) -> dict[int, str]:
    """The node holding each bundle of the placement group called `name`."""
    from ray.util import get_placement_group, placement_group_table

    return dict(placement_group_table(get_placement_group(name))["bundles_to_node_id"])


def put_shared(key: str, value: str) -> None:
    """Store `value` under `key` in Ray's cluster-wide key-value store (GCS), for other replicas to read."""
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key.encode(), value.encode(), overwrite=True)


def get_shared(key: str) -> str | None:
    from ray.experimental.internal_kv import _internal_kv_get

    value = _internal_kv_get(key.encode())
    return value.decode() if value is not None else None


def delete_shared(key: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(key.encode())
