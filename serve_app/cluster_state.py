"""The cluster as a router replica sees it: Serve's applications, deployments, replicas and Ray's nodes.

A snapshot is plain data parsed from the Serve controller's details; `StateWatch` keeps a recent one, refreshed
in the background, so that /ready and /admin/status answer at once however busy the controller is."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

logger = logging.getLogger(__name__)

RUNNING = "RUNNING"
# Ray's state of a placement group whose bundles all hold their resources.
PLACED = "CREATED"
# Resources every Ray node has; any other name in a bundle is a marker asking for a kind of node.
_PLAIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


@dataclass(frozen=True)
class NodeShare:
    """The part of one replica on one node: the GPUs its placement group holds there."""

    node_id: str
    gpus: float


@dataclass(frozen=True)
class ReplicaView:
    id: str
    state: str  # Serve's ReplicaState: STARTING, RUNNING, STOPPING, ...
    node_id: str | None = None
    node_ip: str | None = None
    gpus: float = 0.0  # GPUs the replica holds or waits for: its placement group's, else its actor's own
    nodes: tuple[NodeShare, ...] = ()  # where it runs: its placement group's nodes, else its actor's node
    waiting_for: str = ""  # what its placement group still waits for (no nodes can take it yet); "" once placed


@dataclass(frozen=True)
class DeploymentView:
    name: str
    status: str  # Serve's DeploymentStatus: UPDATING, HEALTHY, UNHEALTHY, UPSCALING, ...
    message: str = ""
    replicas: tuple[ReplicaView, ...] = ()
    min_replicas: int | None = None  # from its deployment config; None when Serve does not say

    @property
    def running(self) -> int:
        return sum(replica.state == RUNNING for replica in self.replicas)

    def state_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for replica in self.replicas:
            counts[replica.state] = counts.get(replica.state, 0) + 1
        return counts


@dataclass(frozen=True)
class AppView:
    name: str
    status: str
    message: str
    deployments: dict[str, DeploymentView]


@dataclass(frozen=True)
class NodeView:
    id: str
    address: str
    alive: bool
    resources: dict[str, float]


@dataclass(frozen=True)
class ClusterSnapshot:
    apps: dict[str, AppView]
    nodes: tuple[NodeView, ...]
    taken_at: float  # Unix time

    def deployment(self, app_name: str, name: str) -> DeploymentView | None:
        app = self.apps.get(app_name)
        return app.deployments.get(name) if app else None


def parse_snapshot(details: dict[str, Any], nodes: list[dict[str, Any]], taken_at: float,
                   placement_groups: dict[str, dict[str, Any]] | None = None) -> ClusterSnapshot:
    """A snapshot from Serve's instance details (the dashboard's /api/serve/applications/ document),
    ray.nodes() and Ray's placement group table; fields Serve leaves out read as empty."""
    groups = _groups_by_name(placement_groups or {})
    apps = {name: AppView(name, _text(app.get("status")), _text(app.get("message")),
                          {dep_name: _deployment(dep_name, dep, groups)
                           for dep_name, dep in (app.get("deployments") or {}).items()})
            for name, app in (details.get("applications") or {}).items()}
    views = tuple(NodeView(str(n.get("NodeID", "")), str(n.get("NodeManagerAddress", "")), bool(n.get("Alive")),
                           {k: float(v) for k, v in (n.get("Resources") or {}).items()}) for n in nodes)
    return ClusterSnapshot(apps, views, taken_at)


def _deployment(name: str, dep: dict[str, Any], groups: dict[str, dict[str, Any]]) -> DeploymentView:
    config = dep.get("deployment_config") or {}
    actor_gpus = float((config.get("ray_actor_options") or {}).get("num_gpus") or 0)
    replicas = tuple(_replica(r, actor_gpus, groups.get(_text(r.get("actor_name"))))
                     for r in dep.get("replicas") or ())
    return DeploymentView(name, _text(dep.get("status")), _text(dep.get("message")), replicas,
                          _min_replicas(config))


def _groups_by_name(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    # Serve names a replica's placement group after the replica's actor; a removed group is history.
    return {group["name"]: group for group in table.values()
            if group.get("name") and group.get("state") != "REMOVED"}


def _replica(replica: dict[str, Any], actor_gpus: float, group: dict[str, Any] | None) -> ReplicaView:
    node_id = replica.get("node_id")
    if group is None:  # no placement group: the replica's actor is all there is of it
        gpus, nodes, waiting = actor_gpus, ((NodeShare(node_id, actor_gpus),) if node_id else ()), ""
    else:  # Serve's details leave the bundles out; the group has them
        gpus = sum(float(bundle.get("GPU", 0)) for bundle in _bundles(group).values())
        nodes = _group_nodes(group)
        waiting = "" if group.get("state") == PLACED else _waiting_for(group)
    return ReplicaView(_text(replica.get("replica_id")), _text(replica.get("state")), node_id,
                       replica.get("node_ip"), gpus, nodes, waiting)


def _bundles(group: dict[str, Any]) -> dict[int, dict[str, float]]:
    return {int(index): bundle for index, bundle in (group.get("bundles") or {}).items()}


def _group_nodes(group: dict[str, Any]) -> tuple[NodeShare, ...]:
    """The nodes holding a placement group's bundles, with the GPUs of its bundles on each."""
    bundles = _bundles(group)
    per_node: dict[str, float] = {}
    for index, node in (group.get("bundles_to_node_id") or {}).items():
        if node:  # a bundle not placed yet has no node
            per_node[node] = per_node.get(node, 0.0) + float(bundles.get(int(index), {}).get("GPU", 0))
    return tuple(NodeShare(node, gpus) for node, gpus in per_node.items())


def _waiting_for(group: dict[str, Any]) -> str:
    """What a placement group that is not placed asks of the cluster, in an operator's words."""
    bundles = list(_bundles(group).values())
    total: dict[str, float] = {}
    for bundle in bundles:
        for resource, amount in bundle.items():
            total[resource] = total.get(resource, 0.0) + float(amount)
    plain = ", ".join(f"{total[r]:g} {r}" for r in _PLAIN_RESOURCES if total.get(r))
    markers = sorted(r for r in total if r not in _PLAIN_RESOURCES)
    where = f" on nodes with {', '.join(markers)}" if markers else ""
    return f"{len(bundles)} bundles ({plain}){where}"


def _text(value: Any) -> str:
    # Serve hands its states over as its str enums (ReplicaState.RUNNING), whose str() is not their value.
    if isinstance(value, Enum):
        return str(value.value)
    return "" if value is None else str(value)


def _min_replicas(config: dict[str, Any]) -> int | None:
    autoscaling = config.get("autoscaling_config")
    if isinstance(autoscaling, dict) and isinstance(autoscaling.get("min_replicas"), int):
        return autoscaling["min_replicas"]
    fixed = config.get("num_replicas")
    return fixed if isinstance(fixed, int) else None


class StateWatch:
    """The latest snapshot, refreshed every `every_s` by a background task while anyone reads it.

    The task starts on the first read, which waits for its first snapshot, and ends after `idle_stop_s`
    without reads: a router replica nobody probes asks the controller nothing."""

    def __init__(self, fetch: Callable[[], ClusterSnapshot], every_s: float = 2.0, first_wait_s: float = 5.0,
                 idle_stop_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch, self._every_s, self._first_wait_s = fetch, every_s, first_wait_s
        self._idle_stop_s, self._clock = idle_stop_s, clock
        self._latest: ClusterSnapshot | None = None
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()
        self._last_read = clock()
        self.error: str | None = None  # why the last refresh failed, if it did

    async def latest(self) -> ClusterSnapshot | None:
        """The most recent snapshot; None when none could be taken yet."""
        self._last_read = self._clock()
        starting = self._task is None or self._task.done()
        if starting:  # the first read, or the first after an idle stop: wait for a fresh snapshot
            self._first.clear()
            # A context of its own: the request that happens to start it must not lend its id to its log lines.
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever(), context=contextvars.Context())
        if starting or self._latest is None:
            try:
                await asyncio.wait_for(self._first.wait(), self._first_wait_s)
            except TimeoutError:
                pass
        return self._latest

    async def _refresh_forever(self) -> None:
        while self._clock() - self._last_read < self._idle_stop_s:
            try:
                # The controller call blocks: a thread keeps the router's event loop free for requests.
                self._latest = await asyncio.to_thread(self._fetch)
                self.error = None
            except RuntimeError as exc:
                if "after shutdown" in str(exc):  # the replica is stopping: its thread pool is gone
                    return
                self._failed(exc)
            except Exception as exc:  # the controller restarting or busy: keep the last snapshot, say why
                self._failed(exc)
            self._first.set()
            await asyncio.sleep(self._every_s)

    def _failed(self, exc: Exception) -> None:
        if self.error is None:
            logger.warning("cannot read the cluster state from Serve: %s", exc)
        self.error = f"{type(exc).__name__}: {exc}"


def serve_snapshot() -> ClusterSnapshot:
    """A snapshot read from the running Serve controller and Ray (blocking)."""
    from serve_app.serve_internals import placement_groups, ray_nodes, serve_details

    return parse_snapshot(serve_details(), ray_nodes(), time.time(), placement_groups())
