"""A foreground `llmcluster serve`: deploy, serve until a signal, then drain and take Ray down, each step bounded."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from cluster import ray_session
from cluster.console import console
from cluster.deploy import deploy, remove
from serve_app.config import ClusterConfig

logger = logging.getLogger(__name__)

# How often the foreground checks its application (is it still deployed?) and, when stopping, the local GCS.
WATCH_INTERVAL_S = 2.0
GCS_CHECK_S = 1.0
# On top of the longest drain: Serve's bookkeeping, the engines' own shutdown and Ray's.
STOP_MARGIN_S = 30.0


def stop_on_signals() -> threading.Event:
    """SIGINT and SIGTERM set the event, and a second one exits at once, without waiting for the drain.

    Install after ray.init, whose own SIGTERM handler exits at once."""
    stop = threading.Event()

    def handle(signum: int, _: Any) -> None:
        if stop.is_set():
            exit_now(f"a second {signal.Signals(signum).name}")
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)
    return stop


class Background:
    """One call on a daemon thread, so a Ray call that hangs (its cluster gone) cannot hold the process."""

    def __init__(self, target: Callable[[], Any], name: str) -> None:
        self.error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(target,), name=name, daemon=True).start()

    def _run(self, target: Callable[[], Any]) -> None:
        try:
            target()
        except BaseException as exc:  # handed to the waiting thread
            self.error = exc
        finally:
            self._done.set()

    def wait(self, give_up: Callable[[], bool], timeout_s: float, poll_s: float = GCS_CHECK_S) -> bool:
        """True once the call has returned; False when `give_up()` turns true or `timeout_s` passes first."""
        deadline = time.monotonic() + timeout_s
        while not self._done.wait(min(poll_s, max(0.0, deadline - time.monotonic()))):
            if give_up() or time.monotonic() >= deadline:
                return False
        return True


def deploy_until_stopped(config: ClusterConfig, stop: threading.Event) -> bool:
    """Deploy and wait until it serves (True), or until a stop signal (False): a model may take minutes to load."""
    deploying = Background(lambda: deploy(config), name="deploy")
    if not deploying.wait(stop.is_set, timeout_s=float("inf")):
        return False
    if deploying.error is not None:
        raise deploying.error
    return True


def serve_until_stopped(stop: threading.Event, app_name: str) -> None:
    """Return on a stop signal, or once the application is removed (`llmcluster shutdown`)."""
    threading.Thread(target=_watch_application, args=(stop, app_name), name="watch-application",
                     daemon=True).start()
    while not stop.wait(WATCH_INTERVAL_S):  # a timed wait: signal handlers run on this (the main) thread
        pass


def _watch_application(stop: threading.Event, app_name: str) -> None:
    from ray import serve

    while not stop.wait(WATCH_INTERVAL_S):
        if app_name not in serve.status().applications:
            console.print(f"application {app_name} was removed")
            stop.set()


def stop_serving(app_name: str, drain_s: float, local_gcs: str | None) -> None:
    """Delete the application, letting its replicas drain up to `drain_s`, then leave Ray: a cluster this process
    started goes down with it. Bounded: `drain_s` plus two margins at most, then the process exits regardless.

    A signal to the whole process group (what a service manager sends) reaches the local GCS and raylet at the
    same moment as this process: nothing is left to drain, Ray calls would hang, and the process exits at once.
    Ray starts its GCS and raylet fate-shared with this process, its workers end with their raylet, and vLLM's
    engine processes with their replica (vllm_adapter.fate_share_engine_process)."""
    def cluster_gone() -> bool:
        return local_gcs is not None and not gcs_reachable(local_gcs)

    console.print(f"draining: in-flight requests have up to {drain_s:.0f}s (Ctrl-C again to stop at once)")
    removing = Background(lambda: remove(app_name, drain_s + STOP_MARGIN_S), name="remove")
    removed = removing.wait(cluster_gone, timeout_s=drain_s + STOP_MARGIN_S)
    if cluster_gone():
        exit_now("the Ray cluster is gone")
    if not removed or removing.error is not None:
        logger.warning("application %s not removed cleanly: %s", app_name, removing.error or "timed out")
    leaving = Background(ray_session.leave, name="leave")
    if not leaving.wait(lambda: False, timeout_s=STOP_MARGIN_S):
        exit_now("Ray did not stop in time")
    ray_session.forget_local_cluster()


def gcs_reachable(address: str) -> bool:
    """Whether something listens at the GCS address (host:port): a GCS that was killed refuses at once."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return True  # not an address this can check: assume it is up
    try:
        with socket.create_connection((host, int(port)), timeout=GCS_CHECK_S):
            return True
    except OSError:
        return False


def exit_now(reason: str) -> None:
    """Exit 0 without Ray's exit hooks, which would wait on a cluster that is gone; Ray's head processes die with
    this process (Ray starts them with a parent-death signal)."""
    logger.warning("not waiting for Ray: %s", reason)
    ray_session.forget_local_cluster()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
