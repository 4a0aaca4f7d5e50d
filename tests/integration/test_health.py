"""Health on a real Ray Serve with a fake engine: /ready is 503 while the model loads and 200 after; a replica
whose engine hangs fails its health check and Serve replaces it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from cluster import ray_session
from serve_app.builder import build_application
from serve_app.cluster_state import serve_snapshot
from serve_app.config import parse_config
from tests.e2e.conftest import free_port
from tests.engine_fakes import HANG_WORD, SlowStartingEngine

APP = "health-test"
DEPLOYMENT = "model-fake"
READY_TIMEOUT_S = 120
REPLACE_TIMEOUT_S = 120


def config(port: int):  # noqa: ANN201 - a ClusterConfig
    return parse_config({
        "cluster": {"name": APP},
        # One attempt: a retried hang request would hang the replacement too.
        "router": {"port": port, "cpus": 0, "max_attempts": 1},
        "models": [{
            "name": "fake", "source": "fake-org/fake-model",
            "resources": {"cpus_per_worker": 0.1},
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "health": {"check_period_s": 1, "check_timeout_s": 5, "stall_timeout_s": 3},
            "drain_timeout_s": 1,
        }],
    })


@dataclass
class Deployed:
    url: str
    ready_answers: list[int] = field(default_factory=list)  # /ready statuses from deploy until the first 200
    ready_after_s: float = 0.0


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    from ray import serve

    port = free_port()
    ray_session.start_local_ray()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        started = time.monotonic()
        # serve.run returns once the model runs: probe /ready meanwhile, as a load balancer would.
        deploying = threading.Thread(target=serve.run, daemon=True, args=(
            build_application(config(port), engine_cls=SlowStartingEngine),), kwargs={"name": APP,
                                                                                        "route_prefix": "/"})
        deploying.start()
        result = Deployed(f"http://127.0.0.1:{port}")
        result.ready_answers = poll_ready(result.url, READY_TIMEOUT_S)
        result.ready_after_s = time.monotonic() - started
        deploying.join(READY_TIMEOUT_S)
        yield result
    finally:
        serve.shutdown()
        ray_session.leave()


def poll_ready(url: str, timeout_s: float) -> list[int]:
    """Statuses of the router's /ready until it says 200 (answers of a proxy with no router yet left out)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/ready", timeout=5)
            if response.status_code == 200 or "not_ready" in response.text:
                seen.append(response.status_code)
                if response.status_code == 200:
                    return seen
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"/ready never said 200 in {timeout_s}s; saw {seen}")


def test_ready_is_503_while_the_model_loads_and_200_after(deployed: Deployed) -> None:
    print(f"\n/ready: {deployed.ready_answers.count(503)} x 503 while loading, 200 after {deployed.ready_after_s:.0f}s")
    assert deployed.ready_answers[0] == 503 and deployed.ready_answers[-1] == 200
    body = httpx.get(f"{deployed.url}/admin/status", timeout=5).json()
    assert body["ready"] and body["models"][0]["running"] == 1


def running_replicas() -> list[str]:
    dep = serve_snapshot().deployment(APP, DEPLOYMENT)
    return [r.id for r in dep.replicas if r.state == "RUNNING"] if dep else []


def test_a_replica_whose_engine_hangs_is_replaced(deployed: Deployed) -> None:
    (hung,) = running_replicas()
    chat = {"model": "fake", "messages": [{"role": "user", "content": HANG_WORD}]}
    # The hung request stays open, as a client waiting on a stuck engine does; the replica's death ends it.
    waiting = threading.Thread(target=lambda: _post(deployed.url, chat, timeout_s=REPLACE_TIMEOUT_S), daemon=True)
    started = time.monotonic()
    waiting.start()
    deadline = started + REPLACE_TIMEOUT_S
    while time.monotonic() < deadline:
        current = running_replicas()
        if current and hung not in current:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"replica {hung} was not replaced in {REPLACE_TIMEOUT_S}s")
    print(f"\nhung engine: replica replaced after {time.monotonic() - started:.0f}s")
    ok = _post(deployed.url, {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}, timeout_s=30)
    assert ok is not None and ok.status_code == 200


def _post(url: str, body: dict, timeout_s: float) -> httpx.Response | None:
    try:
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout_s)
    except httpx.HTTPError:
        return None
