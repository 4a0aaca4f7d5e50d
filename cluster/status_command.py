"""`llmcluster status`: asks the router's /admin/status, and joins Ray as a driver only when it cannot.

Joining Ray takes seconds when idle and minutes on a loaded 2-core machine while a replica starts; the router
answers from the state it already keeps, so the same question takes well under a second."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cluster import ray_session
from cluster.console import console, fail, warn

logger = logging.getLogger(__name__)

STATUS_PATH = "/admin/status"
API_KEY_ENV = "LLMCLUSTER_API_KEY"
URL_ENV = "LLMCLUSTER_URL"
HTTP_TIMEOUT_S = 5.0
# A snapshot older than this says Serve's controller stopped answering: not ready.
STATE_MAX_AGE_S = 10.0


def status(
    address: Annotated[Optional[str], typer.Option(
        "--address", help="Ray cluster to join for the status (skips the router unless --url is given).")] = None,
    url: Annotated[Optional[str], typer.Option(
        "--url", envvar=URL_ENV, help="Router to ask (e.g. http://127.0.0.1:8000); default: the one "
                                      "`llmcluster serve` started on this machine.")] = None,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar=API_KEY_ENV, show_default=False,
        help="Admin API key for the router, when the cluster has keys (`admin: true` in the keys file).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    load: Annotated[bool, typer.Option(
        "--load", help="Join Ray and ask one running replica of each model for its in-flight requests. Serve's "
                       "autoscaler counts that call as load for about 10 s: do not poll with it.")] = False,
) -> None:
    """Show the served models, their replicas and state, the nodes, and the requests in flight and queued."""
    document = None
    router = _router_url(url, address)
    if router and not load:
        document = fetch_from_router(router, api_key, explicit=url is not None)
    if document is None:
        if not ray_session.connect(address):
            fail("no running cluster found; start one with `llmcluster serve` or pass --address or --url", status=1)
        document = status_from_ray(engine_stats=load)
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        print_status(document)


def _router_url(url: str | None, address: str | None) -> str | None:
    if url:
        return url
    if address or os.environ.get("RAY_ADDRESS"):
        return None  # a cluster named by its Ray address: its router's address is not known here
    recorded = ray_session.recorded_local_cluster()
    return recorded.url if recorded else None


def fetch_from_router(url: str, api_key: str | None, explicit: bool = False,
                      timeout_s: float = HTTP_TIMEOUT_S) -> dict[str, Any] | None:
    """The router's status document; None (after saying why when it matters) if the router cannot give it."""
    root = url.rstrip("/").removesuffix("/v1")
    request = urllib.request.Request(root + STATUS_PATH, headers={"Accept": "application/json"})
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            hint = "" if api_key else f"; set {API_KEY_ENV} or --api-key to an admin key"
            warn([f"the router refused the status ({exc.code}{hint}): asking Ray instead"])
        else:
            logger.info("router status answered %s: asking Ray instead", exc.code)
    except (OSError, ValueError) as exc:  # refused, timed out, not JSON
        if explicit:
            warn([f"no status from {root}: {exc}; asking Ray instead"])
        logger.debug("no status from %s: %s", root, exc)
    return None


def status_from_ray(engine_stats: bool = False) -> dict[str, Any]:
    """The same document, read by this process joined to Ray as a driver; `engine_stats` adds engine load."""
    from serve_app.cluster_state import serve_snapshot
    from serve_app.readiness import readiness
    from serve_app.status_report import models_in, status_document

    snapshot = serve_snapshot()
    app_name, models = models_in(snapshot)
    now = time.time()
    ready = readiness(snapshot, app_name, models, now, STATE_MAX_AGE_S)
    document = status_document(snapshot, app_name, models, ready, "ray", now)
    if engine_stats:
        for app in document["applications"]:
            for dep in app["deployments"]:
                if any(m.deployment == dep["name"] for m in models) and dep["replicas"].get("RUNNING"):
                    dep["engine"] = _engine_stats(app["name"], dep["name"])
    return document


def _engine_stats(app_name: str, deployment: str) -> list[dict[str, Any]]:
    # A call through the model's deployment handle: Serve's autoscaler counts it, and keeps the last report of
    # a handle for 10 s after its process is gone, so polling it would hold a model up.
    from ray import serve

    try:
        handle = serve.get_deployment_handle(deployment, app_name=app_name)
        return [handle.stats.remote().result(timeout_s=10)]
    except Exception as exc:  # status is best effort: a busy or restarting replica must not break it
        logger.debug("no stats from %s: %s", deployment, exc)
        return []


def print_status(document: dict[str, Any]) -> None:
    if not document["applications"]:
        console.print("no application is deployed")
        return
    state = "[green]ready[/green]" if document["ready"] else f"[red]not ready[/red]: {document['reason']}"
    console.print(f"{state} (from the {document['source']}, {document['age_s']}s old)", highlight=False)
    models = Table(title="models")
    for column in ("model", "running / min", "replicas", "in flight", "queued"):
        models.add_column(column)
    for model in document["models"]:
        replicas = ", ".join(replica_text(r) for r in model["replicas"]) or "none"
        models.add_row(model["name"], f"{model['running']} / {model['min_replicas']}", replicas,
                       _count(model["in_flight"]), _count(model["queued"]))
    console.print(models)
    for app in document["applications"]:
        table = Table(title=f"{app['name']}: {app['status']}")
        for column in ("deployment", "status", "replicas", "engine in-flight", "message"):
            table.add_column(column)
        for dep in app["deployments"]:
            replicas = ", ".join(f"{s.lower()} {n}" for s, n in dep["replicas"].items()) or "none"
            inflight = str(sum(e["unfinished_requests"] for e in dep["engine"])) if dep["engine"] else "-"
            table.add_row(dep["name"], dep["status"], replicas, inflight, dep["message"])
        console.print(table)
    nodes = ", ".join(node["address"] for node in document["nodes"])
    console.print(f"nodes: {len(document['nodes'])} alive ({nodes}); {document['dead_nodes']} gone", highlight=False)


def replica_text(replica: dict[str, Any]) -> str:
    """One replica in the models table: its state and where it runs, with its GPUs on each node."""
    state = replica["state"].lower()
    if replica.get("waiting_for"):  # absent in the documents of routers older than this CLI
        return f"{state}, waiting for {replica['waiting_for']}"
    nodes = replica.get("nodes") or []
    if not replica.get("gpus") or not nodes:
        return f"{state} on {replica['node_ip'] or '?'}"
    return f"{state} on " + " + ".join(f"{node['address'] or '?'} ({node['gpus']:g} GPUs)" for node in nodes)


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)
