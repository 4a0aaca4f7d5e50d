"""What the relay records per request: status, tokens, first token and gaps, retries and failovers."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serve_app.metrics import RouterMetrics, catalog_queues
from serve_app.router import ModelCatalog, ModelRoute, create_api
from tests.fakes import FakeModelHandle, echo_script
from tests.unit.test_relay_failover import QUESTION, answers, dies_on_first_calls, stream_that_breaks_after


def api_for(handle: FakeModelHandle) -> tuple[TestClient, RouterMetrics]:
    route = ModelRoute(name="m", aliases=(), handle=handle, cold_start_timeout_s=5, max_model_len=None, created=1)
    metrics = RouterMetrics(catalog_queues([route]), replica="r1")
    return TestClient(create_api(ModelCatalog([route]), metrics=metrics)), metrics


def scraped(api: TestClient) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("replica", "le")))): s.value
            for family in text_string_to_metric_families(api.get("/metrics").text) for s in family.samples
            if "le" not in s.labels}


def test_a_stream_records_its_status_tokens_first_token_and_gaps() -> None:
    api, _ = api_for(FakeModelHandle(echo_script(["a", "b", "c"])))
    with api.stream("POST", "/v1/chat/completions", json={"model": "m", "messages": QUESTION, "stream": True}) as r:
        assert r.status_code == 200 and len(list(r.iter_lines())) > 3
    got = scraped(api)
    assert got[("llmcluster_requests_total", (("key", "-"), ("model", "m"), ("status", "200")))] == 1
    assert got[("llmcluster_time_to_first_token_seconds_count", (("model", "m"),))] == 1
    assert got[("llmcluster_inter_token_latency_seconds_count", (("model", "m"),))] == 3  # 3 words, then [DONE]
    assert got[("llmcluster_completion_tokens_total", (("key", "-"), ("model", "m")))] == 3
    assert got[("llmcluster_prompt_tokens_total", (("key", "-"), ("model", "m")))] == 10
    assert got[("llmcluster_requests_in_flight", (("model", "m"),))] == 0


def test_a_json_reply_records_its_usage_and_a_retry() -> None:
    api, _ = api_for(FakeModelHandle(dies_on_first_calls(1, answers)))
    assert api.post("/v1/chat/completions", json={"model": "m", "messages": QUESTION}).status_code == 200
    got = scraped(api)
    assert got[("llmcluster_requests_total", (("key", "-"), ("model", "m"), ("status", "200")))] == 1
    assert got[("llmcluster_retries_total", (("model", "m"),))] == 1
    assert got[("llmcluster_request_duration_seconds_count", (("model", "m"),))] == 1


def test_no_replica_answering_is_a_503_and_a_failover_is_counted() -> None:
    api, _ = api_for(FakeModelHandle(dies_on_first_calls(5, answers)))
    assert api.post("/v1/chat/completions", json={"model": "m", "messages": QUESTION}).status_code == 503
    assert scraped(api)[("llmcluster_requests_total", (("key", "-"), ("model", "m"), ("status", "503")))] == 1
    api, _ = api_for(FakeModelHandle(stream_that_breaks_after(["one", " two"])))
    with api.stream("POST", "/v1/chat/completions", json={"model": "m", "messages": QUESTION, "stream": True}) as r:
        list(r.iter_lines())
    got = scraped(api)
    assert got[("llmcluster_failovers_total", (("model", "m"),))] == 1
    assert got[("llmcluster_requests_total", (("key", "-"), ("model", "m"), ("status", "200")))] == 1
