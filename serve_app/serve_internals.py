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
