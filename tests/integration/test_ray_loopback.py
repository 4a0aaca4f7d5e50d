"""The local Ray cluster of `llmcluster serve` and `llmcluster batch` listens on loopback only."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time

import psutil

from cluster import ray_session
from tests.conftest import REPO_ROOT


def exposed_listeners() -> list[str]:
    """Listening TCP sockets of this process and its descendants (Ray's) on anything but loopback."""
    found = []
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="tcp")
            name = process.name()
            title = " ".join(process.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if "ServeReplica" in title:
            continue  # the gRPC server on [::] Ray hard-codes (docs/security.md); also other tests' stacks'

        for conn in connections:
            if conn.status != psutil.CONN_LISTEN:
                continue
            address = ipaddress.ip_address(conn.laddr.ip.split("%")[0])
            mapped = getattr(address, "ipv4_mapped", None)
            if not (mapped or address).is_loopback:
                found.append(f"{name} {conn.laddr.ip}:{conn.laddr.port}")
    return found


def test_local_ray_listens_on_loopback_only() -> None:
    # Serve replicas are left out: each opens an inter-deployment gRPC server on [::] that Ray hard-codes
    # (docs/security.md); Ray's token auth guards it.
    gcs_address = ray_session.start_local_ray()
    try:
        assert gcs_address.startswith("127.0.0.1:")
        assert exposed_listeners() == []
    finally:
        ray_session.leave()


def test_another_process_joins_the_loopback_cluster_at_once() -> None:
    # What `llmcluster status` and `shutdown` do: a new driver that must find the cluster on loopback too.
    gcs_address = ray_session.start_local_ray()
    join = ("from cluster.ray_session import join_ray; import ray; "
            f"join_ray({gcs_address!r}, {os.environ.get('RAY_AUTH_MODE', 'token')!r}); "
            "print(int(ray.cluster_resources()['CPU']))")
    try:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", join], capture_output=True, text=True, timeout=120,
                                cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
        assert time.monotonic() - started < 30, "a joining driver should not wait for a timeout"
    finally:
        ray_session.leave()
