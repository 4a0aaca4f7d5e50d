"""Visibility on the real stack: /ready, request ids in headers and logs, and a fast `llmcluster status`."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.e2e.conftest import Server, timed_cli_status

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ROUTER_REPLICA = "ServeReplica:llmcluster:router"
MODEL_REPLICA = "ServeReplica:llmcluster:model-smollm2"
LOG_WAIT_S = 20  # Ray forwards replica output to the driver's log in batches


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


def test_status_comes_from_the_router_in_seconds(server: Server) -> None:
    timings = []
    for _ in range(5):
        status, seconds = timed_cli_status(server=server)
        timings.append(seconds)
    assert status["source"] == "router" and status["ready"]
    (model,) = status["models"]
    assert model["name"] == "smollm2" and model["running"] == 1 and model["in_flight"] is not None
    assert status["nodes"] and all(node["alive"] for node in status["nodes"])
    print(f"\nllmcluster status via the router, idle stack: {', '.join(f'{t:.2f}s' for t in timings)}")
    assert max(timings) < 10


def _router(lines: list[str]) -> bool:
    return any(ROUTER_REPLICA in line for line in lines)


def _engine(lines: list[str], request_id: str) -> bool:
    return any(MODEL_REPLICA in line and f"chatcmpl-{request_id}" in line for line in lines)


def _log_lines_with(server: Server, text: str, complete) -> list[str]:  # noqa: ANN001 - a predicate
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        lines = [line for line in server.log.read_text(errors="replace").splitlines() if text in line]
        if complete(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(1)
