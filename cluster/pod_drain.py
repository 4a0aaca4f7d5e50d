"""Drains the Ray node of a stopping pod: Serve moves its replicas to other nodes before the pod goes."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# Ray accepts a preemption drain even on a busy node; an idle-termination drain is refused there.
DRAIN_REASON = "DRAIN_NODE_REASON_PREEMPTION"
# Serve's REST API on the head's dashboard: every application, deployment and replica, with its node.
SERVE_DETAILS_PATH = "/api/serve/applications/"
POLL_S = 2.0
# Every call to the head is bounded: when the whole RayService goes, its head may be gone first, and a
# stopping pod must not spend its grace period on it (a Ray driver would retry for many minutes).
CALL_TIMEOUT_S = 10.0
DRAIN_CALL_TIMEOUT_S = 30.0

ReadDetails = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class NodeMatch:
    """Which node is this one: by Ray node id when known, else by address (in a pod, one node per address)."""

    node_id: str | None = None
    ip: str | None = None

    def matches(self, replica: dict[str, Any]) -> bool:
        if self.node_id:
            return replica.get("node_id") == self.node_id
        return bool(self.ip) and replica.get("node_ip") == self.ip


@dataclass(frozen=True)
class DrainResult:
    """How the wait ended: `left` names the replicas still on the node when it gave up (empty when drained)."""

    left: tuple[str, ...]
    waited_s: float

    @property
    def drained(self) -> bool:
        return not self.left


def _replicas(details: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(deployment name, replica) for every replica in Serve's details document."""
    for app in (details.get("applications") or {}).values():
        for deployment in (app.get("deployments") or {}).values():
            for replica in deployment.get("replicas") or []:
                yield str(deployment.get("name")), replica


def replicas_on_node(details: dict[str, Any], node: NodeMatch) -> tuple[str, ...]:
    """The Serve replicas on `node`, in any state (a stopping one still finishes its requests), as
    `deployment/replica (STATE)`."""
    return tuple(f"{name}/{replica.get('replica_id')} ({replica.get('state')})"
                 for name, replica in _replicas(details) if node.matches(replica))


def node_ids_of(details: dict[str, Any], node: NodeMatch) -> set[str]:
    """The Ray node ids of the replicas on `node`: how a pod learns its node's id from its address."""
    return {replica["node_id"] for _, replica in _replicas(details) if node.matches(replica) and replica.get("node_id")}


def wait_until_drained(read_details: ReadDetails, node: NodeMatch, timeout_s: float, *,
                       clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                       poll_s: float = POLL_S) -> DrainResult:
    """Poll until no Serve replica runs on `node`, or until `timeout_s` has passed.

    A failed read counts as "still there": the head may be briefly unreachable, and only the deadline may
    end the wait without seeing the replicas gone."""
    started = clock()
    left: tuple[str, ...] = ("(Serve's replicas not read)",)
    while True:
        try:
            left = replicas_on_node(read_details(), node)
        except Exception as exc:  # noqa: BLE001 - any failure to read is retried until the deadline
            logger.warning("reading Serve's replicas failed (retrying): %s", exc)
        waited = clock() - started
        if not left or waited + poll_s > timeout_s:
            return DrainResult(left, waited)
        logger.info("%d replica(s) still on this node after %.0fs: %s", len(left), waited, ", ".join(left))
        sleep(poll_s)


def drain_command(deadline_s: int, message: str, node_id: str, address: str | None) -> list[str]:
    """`ray drain-node`: Serve's controller sees the node draining, starts replacements of its replicas
    elsewhere and stops each gracefully (within its drain timeout), all before the deadline."""
    command = [sys.executable, "-m", "ray.scripts.scripts", "drain-node", "--node-id", node_id,
               "--reason", DRAIN_REASON, "--reason-message", message, "--deadline-remaining-seconds", str(deadline_s)]
    return command + (["--address", address] if address else [])


def _auth_headers() -> dict[str, str]:
    """Ray's token header when the cluster uses token auth; Ray keeps the helper private, so none if it moved."""
    try:
        from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
    except ImportError:
        return {}
    return get_auth_headers_if_auth_enabled({})


def serve_details_reader(dashboard_url: str) -> ReadDetails:
    url = dashboard_url.rstrip("/") + SERVE_DETAILS_PATH

    def read() -> dict[str, Any]:
        with urllib.request.urlopen(urllib.request.Request(url, headers=_auth_headers()),
                                    timeout=CALL_TIMEOUT_S) as response:
            return json.load(response)
    return read


def drain_node(dashboard_url: str, deadline_s: int, *, node_id: str | None = None,
               address: str | None = None) -> DrainResult:
    """Drain this machine's Ray node (or `node_id`) and wait, at most `deadline_s` in all, until no Serve
    replica is left on it; nothing to do when none runs there.

    Raises RuntimeError when this address holds several Ray nodes (pass `node_id`), and CalledProcessError or
    TimeoutExpired when Ray does not take the drain."""
    from ray.util import get_node_ip_address

    started = time.monotonic()
    read = serve_details_reader(dashboard_url)
    if node_id is None:
        # Ray's own `drain-node` cannot find the current node without a driver, which would wait minutes on a
        # head that is gone; Serve's replicas on this address name it.
        ids = node_ids_of(read(), NodeMatch(ip=get_node_ip_address()))
        if not ids:
            return DrainResult((), time.monotonic() - started)
        if len(ids) > 1:
            raise RuntimeError(f"Serve replicas run on {len(ids)} Ray nodes at this address: pass the node id")
        (node_id,) = ids
    subprocess.run(drain_command(deadline_s, f"pod {socket.gethostname()} is stopping", node_id, address),
                   check=True, timeout=DRAIN_CALL_TIMEOUT_S)
    logger.info("draining Ray node %s: waiting for its Serve replicas to move (at most %ds)", node_id, deadline_s)
    remaining_s = deadline_s - (time.monotonic() - started)
    return wait_until_drained(read, NodeMatch(node_id=node_id), remaining_s)
