"""The router's metrics: what one request records, refusals, queue depths, and GET /metrics on the router app."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serve_app.config import RequestLimitsConfig, RouterConfig
from serve_app.metrics import QueueDepth, RouterMetrics
from serve_app.router import ModelCatalog, ModelRoute, create_api
from serve_app.tenancy.keys import KeyStore, Quota, Tenant, digest_of
from tests.fakes import FakeModelHandle, echo_script


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(metrics: RouterMetrics) -> dict[tuple[str, frozenset], float]:
    return samples(asyncio.run(metrics.exposition()).decode())


def labels(**kv: str) -> frozenset:
    return frozenset({"replica": "r1", **kv}.items())


def test_a_streamed_request_records_first_token_gaps_tokens_and_status() -> None:
    clock = Clock()
    metrics = RouterMetrics(replica="r1", clock=clock)
    observation = metrics.request("smollm2", "team-a")
    clock.now += 0.3
    observation.token()  # first chunk: time to first token
    clock.now += 0.02
    observation.token()  # later chunks: inter-token latency
    clock.now += 0.04
    observation.token()
    observation.finished(200, prompt_tokens=12, completion_tokens=7)
    got = scrape(metrics)
    model = labels(model="smollm2")
    assert got[("llmcluster_requests_total", labels(model="smollm2", key="team-a", status="200"))] == 1
    assert abs(got[("llmcluster_time_to_first_token_seconds_sum", model)] - 0.3) < 1e-9
    assert got[("llmcluster_time_to_first_token_seconds_count", model)] == 1
    assert got[("llmcluster_inter_token_latency_seconds_count", model)] == 2
    assert abs(got[("llmcluster_inter_token_latency_seconds_sum", model)] - 0.06) < 1e-9
    assert abs(got[("llmcluster_request_duration_seconds_sum", model)] - 0.36) < 1e-9
    assert got[("llmcluster_prompt_tokens_total", labels(model="smollm2", key="team-a"))] == 12
    assert got[("llmcluster_completion_tokens_total", labels(model="smollm2", key="team-a"))] == 7


def test_a_request_ends_once_and_a_refusal_is_counted_but_not_timed() -> None:
    metrics = RouterMetrics(replica="r1", clock=Clock())
    observation = metrics.request("m", None)
    observation.refused(429)
    observation.finished(503, 5, 5)  # a second ending, from another exit path, is ignored
    observation.refused(400)
    got = scrape(metrics)
    assert got[("llmcluster_requests_total", labels(model="m", key="-", status="429"))] == 1
    assert ("llmcluster_requests_total", labels(model="m", key="-", status="503")) not in got
    assert got[("llmcluster_request_duration_seconds_count", labels(model="m"))] == 0
    assert got[("llmcluster_prompt_tokens_total", labels(model="m", key="-"))] == 0


def test_retries_failovers_and_queue_depths() -> None:
    metrics = RouterMetrics(lambda: [QueueDepth("m", queued=3, in_flight=5)], replica="r1")
    observation = metrics.request("m", "team-a")
    observation.retried()
    observation.retried()
    observation.failed_over()
    got = scrape(metrics)
    assert got[("llmcluster_retries_total", labels(model="m"))] == 2
    assert got[("llmcluster_failovers_total", labels(model="m"))] == 1
    assert got[("llmcluster_requests_queued", labels(model="m"))] == 3
    assert got[("llmcluster_requests_in_flight", labels(model="m"))] == 5


def test_each_router_has_its_own_registry() -> None:
    first, second = RouterMetrics(replica="r1"), RouterMetrics(replica="r1")
    first.request("m", None).finished(200)
    assert ("llmcluster_requests_total", labels(model="m", key="-", status="200")) not in scrape(second)


def tenant_api(**settings: object) -> tuple[TestClient, RouterMetrics]:
    route = ModelRoute(name="m", aliases=(), handle=FakeModelHandle(echo_script(["a"])), cold_start_timeout_s=5,
                       max_model_len=None, created=0, limits=RequestLimitsConfig(max_tokens=16))
    catalog = ModelCatalog([route])
    metrics = RouterMetrics(replica="r1")
    keys = KeyStore({digest_of("sk-secret-123"): Tenant("team-a", None, Quota())})
    return TestClient(create_api(catalog, keys, settings=RouterConfig(**settings), metrics=metrics)), metrics


def test_metrics_are_served_without_a_key_and_name_the_tenant_never_the_key() -> None:
    api, _ = tenant_api()
    refused = api.post("/v1/chat/completions", headers={"Authorization": "Bearer sk-secret-123"},
                       json={"model": "m", "messages": [], "max_tokens": 17})
    assert refused.status_code == 400
    response = api.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert 'llmcluster_requests_total{key="team-a",model="m",replica="r1",status="400"} 1.0' in response.text
    assert "sk-secret-123" not in response.text


def test_metrics_need_a_key_once_taken_off_the_public_paths() -> None:
    api, _ = tenant_api(auth={"public_paths": ["/health"]})
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers={"Authorization": "Bearer sk-secret-123"}).status_code == 200
