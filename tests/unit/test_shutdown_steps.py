"""Stopping: each model's drain timeout reaches Serve, and the foreground `serve` never waits unbounded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.foreground import Background, gcs_reachable
from serve_app.builder import DRAIN_POLL_S, drain_options, longest_drain_s
from serve_app.config import ConfigError, parse_config
from serve_app.model_source import CACHE_ENV
from tests.conftest import REPO_ROOT


def cluster(*drains: float | None) -> Any:
    models = []
    for index, drain in enumerate(drains):
        model: dict[str, Any] = {"name": f"m{index}", "source": "org/model"}
        if drain is not None:
            model["drain_timeout_s"] = drain
        models.append(model)
    return parse_config({"models": models})


def test_a_model_drains_for_two_minutes_unless_told() -> None:
    (model,) = cluster(None).models
    assert model.drain_timeout_s == 120


def test_a_negative_drain_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"models\.0\.drain_timeout_s"):
        cluster(-1)


def test_the_drain_timeout_is_serves_graceful_shutdown() -> None:
    assert drain_options(600) == {"graceful_shutdown_timeout_s": 600, "graceful_shutdown_wait_loop_s": DRAIN_POLL_S}


def test_the_router_outlasts_the_longest_drain() -> None:
    # It relays every model's streams: stopped sooner, it would cut them.
    assert longest_drain_s(cluster(30, 900, None)) == 900


def test_background_returns_when_the_call_does() -> None:
    call = Background(lambda: time.sleep(0.1), name="test")
    assert call.wait(lambda: False, timeout_s=10, poll_s=0.05)
    assert call.error is None


def test_background_hands_over_the_error() -> None:
    def fail() -> None:
        raise TimeoutError("still stopping")

    call = Background(fail, name="test")
    assert call.wait(lambda: False, timeout_s=10, poll_s=0.05)
    assert isinstance(call.error, TimeoutError)


def test_background_gives_up_on_a_call_that_hangs() -> None:
    hang = threading.Event()
    started = time.monotonic()
    assert not Background(hang.wait, name="test").wait(lambda: False, timeout_s=0.3, poll_s=0.05)
    assert time.monotonic() - started < 2
    gone = threading.Event()
    threading.Timer(0.1, gone.set).start()
    assert not Background(hang.wait, name="test").wait(gone.is_set, timeout_s=60, poll_s=0.05)
    hang.set()


def test_a_gcs_is_reachable_while_it_listens() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = "127.0.0.1:%d" % server.getsockname()[1]
        assert gcs_reachable(address)
    assert not gcs_reachable(address)  # closed: refused at once


def test_an_address_it_cannot_check_counts_as_up() -> None:
    assert gcs_reachable("auto")


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    script = """
import os, signal, sys, time
from cluster.foreground import stop_on_signals
stop = stop_on_signals()
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.2)
print("stopping" if stop.is_set() else "missed", flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(5)
sys.exit(3)  # not reached: the second signal exits 0 at once
"""
    env = {**os.environ, CACHE_ENV: str(tmp_path)}  # where a stopping `serve` forgets its cluster
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "stopping"), done.stderr


def test_a_stopping_serve_forgets_only_its_own_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster import ray_session

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    ray_session.record_local_cluster(ray_session.LocalCluster("127.0.0.1:1", "a", "http://x/v1", os.getpid() + 1))
    ray_session.forget_local_cluster()  # another serve's record: kept
    assert (tmp_path / "run" / "local-cluster.json").exists()
    ray_session.record_local_cluster(ray_session.LocalCluster("127.0.0.1:1", "a", "http://x/v1", os.getpid()))
    ray_session.forget_local_cluster()
    assert ray_session.recorded_local_cluster() is None
