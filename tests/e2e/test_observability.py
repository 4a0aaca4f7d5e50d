"""Visibility on the real stack: /ready, request ids in headers, logs and traces, and a fast `llmcluster status`."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.e2e.conftest import Server, timed_cli_status
from tests.otlp_collector import OtlpCollector, ReceivedSpan

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ROUTER_REPLICA = "ServeReplica:llmcluster:router"
MODEL_REPLICA = "ServeReplica:llmcluster:model-smollm2"
LOG_WAIT_S = 20  # Ray forwards replica output to the driver's log in batches
TRACE_WAIT_S = 30  # exporters send in batches, each process on its own
# One request's path, a span each: Serve's proxy, the router replica, the model replica, and the engine request.
PATH_SPANS = ("proxy_http_request router POST /v1/chat/completions", "replica_handle_request router __call__",
              "replica_handle_request model-smollm2 generate", "vllm.request")


def test_ready_is_200_when_the_model_runs(server: Server) -> None:
    response = httpx.get(f"http://127.0.0.1:{server.port}/ready", timeout=30)
    assert response.status_code == 200 and response.json() == {"status": "ready"}


def test_request_id_comes_back_and_is_in_router_and_engine_log_lines(http: httpx.Client, server: Server) -> None:
    request_id = f"e2e-trace-{uuid.uuid4().hex}"
    response = http.post("/chat/completions", headers={"X-Request-Id": request_id},
                         json={"model": "smollm2", "messages": QUESTION, "max_tokens": 8})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    lines = _log_lines_with(server, request_id, lambda found: _router(found) and _engine(found, request_id))
    assert _router(lines), f"no router log line with {request_id}"
    # vLLM's own line: the engine request id is `chatcmpl-<request id>` plus vLLM's suffix.
    assert _engine(lines, request_id), f"no engine log line with {request_id}:\n" + "\n".join(lines)


def test_a_request_is_traced_from_the_proxy_to_the_engine(http: httpx.Client, collector: OtlpCollector) -> None:
    request_id = f"e2e-span-{uuid.uuid4().hex}"
    response = http.post("/chat/completions", headers={"X-Request-Id": request_id},
                         json={"model": "smollm2", "messages": QUESTION, "max_tokens": 8})
    assert response.status_code == 200
    spans = _trace_of(collector, request_id)
    proxy, router, model, engine = (spans[name] for name in PATH_SPANS)
    assert proxy.parent_span_id == "" and len({span.trace_id for span in spans.values()}) == 1
    assert _descends(engine, model, spans) and _descends(model, router, spans) and _descends(router, proxy, spans)
    assert all(span.attributes["request_id"] == request_id for span in (proxy, router, model))
    # The engine request id is the one vLLM answered with (the body's id), and the one in its log lines.
    assert engine.attributes == {"llmcluster.request_id": request_id, "vllm.request_id": response.json()["id"]}
    internal = [span.name for span in collector.spans() if span.attributes.get("deployment") in
                ("metrics-hub", "quota-ledger")]
    assert not internal, f"the cluster's own calls were exported: {internal[:3]}"


def test_a_streamed_request_joins_the_clients_trace(http: httpx.Client, collector: OtlpCollector) -> None:
    request_id = f"e2e-span-{uuid.uuid4().hex}"
    trace_id, client_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 32, "ignore_eos": True, "stream": True}
    headers = {"X-Request-Id": request_id, "traceparent": f"00-{trace_id}-{client_span}-01"}  # W3C, sampled
    with http.stream("POST", "/chat/completions", json=body, headers=headers) as reply:
        assert reply.status_code == 200 and [line for line in reply.iter_lines() if line][-1] == "data: [DONE]"
    spans = _trace_of(collector, request_id)
    proxy, _, model, engine = (spans[name] for name in PATH_SPANS)
    assert {span.trace_id for span in spans.values()} == {trace_id} and proxy.parent_span_id == client_span
    # The engine span lasts as long as the stream, not just until vLLM took the request.
    assert engine.duration_s > 0.5 * model.duration_s, (engine.duration_s, model.duration_s)


def test_status_comes_from_the_router_in_seconds(server: Server) -> None:
    timings = []
    for _ in range(5):
        status, seconds = timed_cli_status(server=server)
        timings.append(seconds)
    assert status["source"] == "router" and status["ready"]
    (model,) = [model for model in status["models"] if model["name"] == "smollm2"]
    assert model["running"] == 1 and model["in_flight"] is not None
    assert status["nodes"] and all(node["alive"] for node in status["nodes"])
    print(f"\nllmcluster status via the router, idle stack: {', '.join(f'{t:.2f}s' for t in timings)}")
    assert max(timings) < 10


def _router(lines: list[str]) -> bool:
    return any(ROUTER_REPLICA in line for line in lines)


def _engine(lines: list[str], request_id: str) -> bool:
    return any(MODEL_REPLICA in line and f"chatcmpl-{request_id}" in line for line in lines)


def _trace_of(collector: OtlpCollector, request_id: str) -> dict[str, ReceivedSpan]:
    """The spans of one request by name, once all of its path has arrived."""
    def of_request(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
        return {span.name: span for span in spans if request_id in (span.attributes.get("request_id"),
                                                                    span.attributes.get("llmcluster.request_id"))}

    spans = of_request(collector.wait_for(lambda spans: set(PATH_SPANS) <= set(of_request(spans)), TRACE_WAIT_S))
    assert set(PATH_SPANS) <= set(spans), f"spans of {request_id} after {TRACE_WAIT_S}s: {sorted(spans)}"
    return spans


def _descends(span: ReceivedSpan, ancestor: ReceivedSpan, spans: dict[str, ReceivedSpan]) -> bool:
    """Whether `ancestor` is on `span`'s way up to its trace's root (Serve puts a span between replicas)."""
    by_id = {each.span_id: each for each in spans.values()}
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        if span is ancestor:
            return True
    return False


def _log_lines_with(server: Server, text: str, complete) -> list[str]:  # noqa: ANN001 - a predicate
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        lines = [line for line in server.log.read_text(errors="replace").splitlines() if text in line]
        if complete(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(1)
