"""Autoscaling on the real stack: load adds a replica, idleness scales the model to zero, a request wakes it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.e2e.conftest import Server, cli_status, start_server, stop_server
from tests.e2e.load import Traffic

MODEL = "smollm2"
DEPLOYMENT = "model-smollm2"
# Serve only asks for a replica once the load has been high for upscale_delay_s; the new engine then loads
# (about 30 s alone on 2 cores, longer beside a busy one).
SCALE_UP_TIMEOUT_S = 300
SCALE_DOWN_TIMEOUT_S = 180
LOAD_WORKERS = 6
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def scaling_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """configs/local.yaml with autoscaling from 0 to 2 replicas and delays short enough for a test."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "local.yaml").read_text())
    config["router"]["cpus"] = 0  # two engine replicas of one core each take both cores of a 2-core machine
    config["models"][0]["autoscaling"] = {
        "min_replicas": 0, "max_replicas": 2, "initial_replicas": 1, "target_ongoing_requests": 2,
        "upscale_delay_s": 2, "downscale_delay_s": 10, "look_back_period_s": 3, "cold_start_timeout_s": 300}
    folder: Path = tmp_path_factory.mktemp("autoscaling")
    (folder / "autoscaling.yaml").write_text(yaml.safe_dump(config))
    server = start_server(folder / "autoscaling.yaml", folder / "serve.log")
    yield server
    assert stop_server(server) == 0, server.log_tail()


def running_replicas() -> int:
    for app in cli_status():
        for deployment in app["deployments"]:
            if deployment["name"] == DEPLOYMENT:
                return deployment["replicas"].get("RUNNING", 0)
    raise AssertionError(f"no deployment {DEPLOYMENT} in `llmcluster status`")


def wait_for_replicas(count: int, timeout_s: float) -> float:
    """Seconds until the model has `count` running replicas."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if running_replicas() == count:
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"{DEPLOYMENT} did not reach {count} running replicas in {timeout_s}s")


def ask_capital(client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=48)


def test_load_scales_up_idleness_scales_to_zero_and_a_request_wakes_the_model(scaling_server: Server) -> None:
    assert running_replicas() == 1
    with Traffic(scaling_server.base_url, ask_capital, LOAD_WORKERS) as load:
        scale_up_s = wait_for_replicas(2, SCALE_UP_TIMEOUT_S)
        scaled_up_at = time.monotonic()
        time.sleep(10)  # both replicas now take their share of the load
    print(f"\nscale-up: burst of {LOAD_WORKERS} concurrent clients to 2 running replicas in {scale_up_s:.0f}s; "
          f"{load.answered_since()} answers, {len(load.failed_since())} failures")
    assert load.failed_since() == []
    assert load.answered_since(scaled_up_at) > 0

    scale_down_s = wait_for_replicas(0, SCALE_DOWN_TIMEOUT_S)
    print(f"idle: scaled to zero in {scale_down_s:.0f}s")

    client = openai.OpenAI(base_url=scaling_server.base_url, api_key="unused", max_retries=0, timeout=300)
    started = time.monotonic()
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    cold_start_s = time.monotonic() - started
    print(f"cold start: a request to the model at zero answered in {cold_start_s:.0f}s")
    assert "Paris" in reply.choices[0].message.content
    assert running_replicas() == 1
