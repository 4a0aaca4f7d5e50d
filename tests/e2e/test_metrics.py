"""GET /metrics on the router's port after real traffic: the router's metrics and every engine's `vllm:` ones."""

from __future__ import annotations

import time

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.e2e.conftest import Server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ENGINE_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                  "vllm:time_to_first_token_seconds_bucket")
# Engine replicas send their metrics to the hub every 5 s (serve_app/metrics/hub.py): wait a few rounds.
ENGINE_METRICS_WAIT_S = 30


def scrape(server: Server) -> list[Sample]:
    response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum over every sample of `name` with `labels` (over router or engine replicas)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def test_metrics_after_traffic_hold_router_and_engine_metrics(server: Server) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=16)
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=16,
                                            stream=True)
    assert len([chunk for chunk in stream]) > 2
    deadline = time.monotonic() + ENGINE_METRICS_WAIT_S
    samples = scrape(server)
    while not all(value(samples, name, model="smollm2") for name in ("vllm:time_to_first_token_seconds_count",
                                                                     "llmcluster_replicas")):
        assert time.monotonic() < deadline, f"no engine metrics or replica counts after {ENGINE_METRICS_WAIT_S}s"
        time.sleep(2)
        samples = scrape(server)

    assert value(samples, "llmcluster_requests_total", model="smollm2", key="-", status="200") >= 2
    assert value(samples, "llmcluster_request_duration_seconds_count", model="smollm2") >= 2
    assert value(samples, "llmcluster_time_to_first_token_seconds_count", model="smollm2") >= 1
    assert value(samples, "llmcluster_inter_token_latency_seconds_count", model="smollm2") >= 1
    assert value(samples, "llmcluster_completion_tokens_total", model="smollm2", key="-") >= 2
    assert value(samples, "llmcluster_prompt_tokens_total", model="smollm2", key="-") >= 2
    assert value(samples, "llmcluster_replicas", model="smollm2", state="RUNNING") == 1
    for name in ("llmcluster_requests_in_flight", "llmcluster_requests_queued", "llmcluster_retries_total",
                 "llmcluster_failovers_total"):
        assert [s for s in samples if s.name == name and s.labels.get("model") == "smollm2"], name

    for name in ENGINE_METRICS:
        found = [s for s in samples if s.name == name and s.labels.get("model") == "smollm2"]
        assert found, f"{name} missing from /metrics"
        assert all(s.labels.get("replica") and s.labels.get("model_name") == "smollm2" for s in found), found
    assert value(samples, "vllm:time_to_first_token_seconds_count", model="smollm2") >= 2
    assert value(samples, "vllm:generation_tokens_total", model="smollm2") >= 2
